"""``alumi-edge pull`` from a release published into the Azure lake, over HTTP(S) with a read-only SAS (Azurite)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from azurite import ACCOUNT_NAME  # noqa: E402
from edge_support import ReleaseStore  # noqa: E402
from tcp_proxy import CuttingProxy  # noqa: E402

from alumi_pipelines.resources.azure import releases_sas_url  # noqa: E402

pytestmark = pytest.mark.azure


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory):
    from alumi_pipelines.lib.export.release import load_or_create_signing_key

    key_path = tmp_path_factory.mktemp("keys") / "release.key"
    return load_or_create_signing_key(key_path)


@pytest.fixture
def published(tmp_path, signing_keys, azure_lake):
    """publish(version, extra_bytes=0) builds a signed release and publishes it into the Azure lake."""
    from alumi_pipelines.lib.export.release import publish_release
    from alumi_pipelines.resources import lake_keys

    store = ReleaseStore(tmp_path / "local-releases", signing_keys[0], tmp_path / "work")
    store.root.mkdir(parents=True)

    def publish(version: str, extra_bytes: int = 0) -> Path:
        store.publish(version, extra_bytes=extra_bytes)
        built = store.work / "built" / version
        publish_release(
            built,
            azure_lake.write_bytes,
            file_key=lake_keys.release_file_key,
            channel_key=lake_keys.channel_key,
            private_key_pem=signing_keys[0],
            read_bytes=lambda key: azure_lake.read_bytes(key) if azure_lake.exists(key) else None,
        )
        return built

    return publish


@pytest.fixture
def edge_pull(monkeypatch):
    """pull() with Azure URLs routed to AzureBlobSource (what open_source does once it is registered there)."""
    import alumi_edge.pull as pull_module
    from alumi_edge.sources import open_source
    from alumi_edge.sources_azure import azure_source_for

    monkeypatch.delenv("ALUMI_EDGE_AZURE_SAS", raising=False)
    monkeypatch.setattr(pull_module, "open_source", lambda uri: azure_source_for(uri) or open_source(uri))
    return pull_module.pull


def test_pull_from_azure_with_a_read_only_sas(tmp_path, published, azure_lake, signing_keys, edge_pull, no_network):
    built = published("1.0.0", extra_bytes=300_000)
    url = releases_sas_url(azure_lake, days=1)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["sp"] == ["r"] and urllib.parse.urlsplit(url).path.endswith("/lake/releases")

    home = tmp_path / "device"
    logs: list[str] = []
    result = edge_pull(url, home, signing_keys[1], log=logs.append)
    assert (result.status, result.version) == ("switched", "1.0.0")
    for name in ("model.onnx", "build_plan.bin", "sample.png"):
        assert (home / "current" / name).read_bytes() == (built / name).read_bytes()
    assert not any("sig=" in line for line in logs)  # the signature never reaches the log
    assert edge_pull(url, home, signing_keys[1]).status == "up-to-date"

    published("1.1.0")
    second = edge_pull(url, home, signing_keys[1])
    assert (second.status, second.version, second.previous) == ("switched", "1.1.0", "1.0.0")
    assert no_network == []


def test_a_lake_root_url_finds_releases_below_it(tmp_path, published, azure_lake, signing_keys, edge_pull):
    published("2.0.0")
    lake_root = releases_sas_url(azure_lake, days=1, prefix="")
    assert "/releases" not in urllib.parse.urlsplit(lake_root).path
    assert edge_pull(lake_root, tmp_path / "device", signing_keys[1]).version == "2.0.0"


def test_expired_tampered_and_write_only_tokens_are_refused_clearly(tmp_path, published, azure_lake, signing_keys):
    from alumi_edge.sources import SourceError
    from alumi_edge.sources_azure import AzureBlobSource

    published("1.0.0")
    expired = releases_sas_url(azure_lake, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    with pytest.raises(SourceError, match=r"channels/stable.json: the SAS token expired at .*ask for a new source URL"):
        AzureBlobSource(expired).read_bytes("channels/stable.json", 1000)

    good = releases_sas_url(azure_lake, days=1)
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(good).query)["sig"][0]
    head, encoded = good.split("sig=")
    tampered = f"{head}sig={'B' if encoded[0] == 'A' else 'A'}{encoded[1:]}"
    with pytest.raises(SourceError) as err:
        AzureBlobSource(tampered, retries=1).read_bytes("channels/stable.json", 1000)
    # Azure answers AuthenticationFailed, Azurite AuthorizationFailure: both are a refusal
    assert "refused" in str(err.value) and "HTTP 403" in str(err.value)
    assert signature[5:25] not in str(err.value) and "sig=" not in str(err.value)

    with pytest.raises(SourceError, match=r"permissions 'w'; reading releases needs 'r'"):
        AzureBlobSource(good.replace("sp=r", "sp=w"))
    with pytest.raises(SourceError, match="no SAS token"):
        AzureBlobSource(good.split("?")[0])
    # the token may come from ALUMI_EDGE_AZURE_SAS instead of the URL
    from alumi_edge.sources_azure import azure_source_for

    split = good.split("?", 1)
    from_env = azure_source_for(split[0], env={"ALUMI_EDGE_AZURE_SAS": split[1]})
    assert json.loads(from_env.read_bytes("channels/stable.json", 1000))["version"] == "1.0.0"


def test_a_download_cut_midway_leaves_current_and_the_next_pull_succeeds(
    tmp_path, azurite, published, azure_lake, signing_keys, edge_pull
):
    from alumi_edge.device_home import DeviceHome
    from alumi_edge.sources import SourceError

    published("1.0.0")
    home = tmp_path / "device"
    url = releases_sas_url(azure_lake, days=1)
    edge_pull(url, home, signing_keys[1])
    published("1.1.0", extra_bytes=2_000_000)
    with CuttingProxy(azurite.port, cut_after=1_000_000, then="forward", direction="down") as proxy:
        via_proxy = url.replace(f"127.0.0.1:{azurite.port}", f"127.0.0.1:{proxy.port}")
        with pytest.raises(SourceError, match="download interrupted"):
            edge_pull(via_proxy, home, signing_keys[1])
        assert proxy.cuts == 1
        device = DeviceHome(home)
        assert device.current_version() == "1.0.0"
        assert not [p.name for p in device.versions_dir.iterdir() if p.name.startswith(".partial-")]
        again = edge_pull(via_proxy, home, signing_keys[1])
    assert (again.status, again.version) == ("switched", "1.1.0")
    assert (home / "current" / "build_plan.bin").stat().st_size == 2_000_000
    assert ACCOUNT_NAME in url
