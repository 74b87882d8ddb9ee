"""alumi-edge verify re-hashes the installed version; serve and pull run it, /readyz fails on a mismatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from edge_support import EDGE_SRC, edge_settings

from alumi_edge.device_home import DeviceHome
from alumi_edge.pull import pull
from alumi_edge.verify import InstalledVersionError, verify_installed


def _edge_cli(*args: str, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(EDGE_SRC), **env}
    return subprocess.run(
        [sys.executable, "-m", "alumi_edge", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_passes_on_an_intact_install_and_names_the_corrupted_file(edge_home, signing_keys):
    ok = _edge_cli("verify", "--home", str(edge_home), "--pubkey", str(signing_keys[2]))
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["status"] == "ok" and report["version"] == "1.0.0" and report["signature_checked"] is True
    assert report["files"] == len(DeviceHome(edge_home).manifest().files)

    _flip_a_byte(edge_home / "current" / "sample.png")  # an SD card's bad block
    bad = _edge_cli("verify", "--home", str(edge_home), "--pubkey", str(signing_keys[2]))
    assert bad.returncode == 3
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("alumi-edge verify: verify failed: installed version 1.0.0 does not verify: sample.png")
    # without a pinned key the hashes are still checked (and it says the signature was not)
    assert _edge_cli("verify", "--home", str(edge_home), ALUMI_EDGE_PUBKEY="").returncode == 3


def test_a_locally_edited_manifest_fails_verify_with_the_pinned_key(edge_home, signing_keys):
    manifest = edge_home / "current" / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"map50": 0.9', b'"map50": 0.99'))
    with pytest.raises(InstalledVersionError, match="signature does not match"):
        verify_installed(edge_home, signing_keys[1])


def test_pull_re_verifies_the_current_version_instead_of_answering_up_to_date(edge_home, release_store, signing_keys):
    assert pull(str(release_store.root), edge_home, signing_keys[1]).status == "up-to-date"
    _flip_a_byte(edge_home / "current" / "model.onnx")
    with pytest.raises(InstalledVersionError, match=r"model\.onnx: sha256"):
        pull(str(release_store.root), edge_home, signing_keys[1])


def test_serve_verifies_at_start_and_readyz_fails_on_a_mismatch(edge_home, signing_keys):
    from fastapi.testclient import TestClient

    from alumi_edge.main import create_app

    settings = edge_settings(edge_home, pubkey=signing_keys[1].decode())
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == "1.0.0"

    _flip_a_byte(edge_home / "current" / "sample_expected.json")  # not even the served model: every file counts
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert "InstalledVersionError" in detail and "sample_expected.json" in detail
        assert client.get("/healthz").status_code == 200
