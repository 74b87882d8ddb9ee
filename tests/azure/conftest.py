"""Azure fixtures: one Azurite per session on 127.0.0.1 (random port, temp folder), a fresh container per test."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from azurite import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer, AzuriteUnavailable  # noqa: E402


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """A running Azurite blob service; the tests that use it skip (saying why) where Node.js or Azurite is missing."""
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"))
    try:
        server.start()
    except AzuriteUnavailable as exc:
        pytest.skip(f"Azurite unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture
def azure_env(azurite, monkeypatch) -> dict[str, str]:
    """ALUMI_AZURE_* variables for Azurite's account with its key (also set in os.environ for EnvVar resolution)."""
    env = {
        "ALUMI_AZURE_ACCOUNT_NAME": ACCOUNT_NAME,
        "ALUMI_AZURE_ACCOUNT_KEY": ACCOUNT_KEY,
        "ALUMI_AZURE_ACCOUNT_URL": azurite.account_url,
    }
    for name in ("ALUMI_AZURE_CONNECTION_STRING", "ALUMI_AZURE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def container(azurite) -> str:
    name = f"lake-{uuid.uuid4().hex[:12]}"
    azurite.create_container(name)
    return name


@pytest.fixture
def azure_lake(azure_env, container):
    """An AzureLake on a fresh container, credentials read now, short retries."""
    from alumi_pipelines.resources.azure import azure_lake

    return azure_lake(f"abfs://{container}/lake", env=azure_env, deferred=False, max_retries=2, retry_backoff_s=0.1)
