"""Shared fixtures: an isolated ALUMI_HOME, a lake in a temp folder, a guard against the network, and headless
Chromium for the browser tests (Debian's package, driven by Playwright; no browser download)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CR7 = REPO.parent / "shared" / "data" / "cr7_det_sample"


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Every test session gets its own ALUMI_HOME, DAGSTER_HOME and ultralytics config folder."""
    home = tmp_path_factory.mktemp("alumi_home")
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    old = {k: os.environ.get(k) for k in ("ALUMI_HOME", "DAGSTER_HOME", "YOLO_CONFIG_DIR", "MPLBACKEND")}
    os.environ["ALUMI_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["MPLBACKEND"] = "Agg"
    from alumi_pipelines.lib.training.offline import prepare_offline

    prepare_offline(home / "ultralytics")
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def lake(tmp_path):
    from alumi_pipelines.resources.lake import Lake

    return Lake(base_uri=str(tmp_path / "lake"))


@pytest.fixture
def cr7_dir() -> Path:
    if not CR7.is_dir():
        pytest.skip(f"real-data sample not found at {CR7} (it lives in ../shared/data, outside the repository)")
    return CR7


class NetworkAttempt(AssertionError):
    pass


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any outbound connection or DNS lookup to a non-loopback address."""
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            attempts.append(f"connect {address}")
            raise NetworkAttempt(f"outbound connection attempted to {address}")
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            attempts.append(f"connect_ex {address}")
            raise NetworkAttempt(f"outbound connection attempted to {address}")
        return real_connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback((host,)):
            attempts.append(f"getaddrinfo {host}")
            raise NetworkAttempt(f"DNS lookup attempted for {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed (Debian package `chromium`; scripts/install-services installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()
