"""A network failure in the middle of an upload to Azurite: no partial object is ever visible, and a retry succeeds.

Each test runs for both upload paths: one PUT through obstore (below DIRECT_PUT_MAX_BYTES) and the SDK's staged
blocks (at and above it)."""

from __future__ import annotations

import os
import time

import pytest
from azurite import ACCOUNT_NAME
from tcp_proxy import CuttingProxy

from alumi_pipelines.resources.azure import DIRECT_PUT_MAX_BYTES, AzureLakeError
from alumi_pipelines.resources.azure import azure_lake as make_azure_lake

pytestmark = pytest.mark.azure

# (payload, cut): the connection breaks a quarter of the way into the body
PATHS = pytest.mark.parametrize(
    ("payload_bytes", "cut_after"),
    [(DIRECT_PUT_MAX_BYTES // 4, DIRECT_PUT_MAX_BYTES // 16), (DIRECT_PUT_MAX_BYTES, DIRECT_PUT_MAX_BYTES // 4)],
    ids=["one-put", "staged-blocks"],
)


def _lake_through(proxy: CuttingProxy, azure_env: dict, container: str):
    env = {**azure_env, "ALUMI_AZURE_ACCOUNT_URL": f"http://127.0.0.1:{proxy.port}/{ACCOUNT_NAME}"}
    return make_azure_lake(f"abfs://{container}/lake", env=env, deferred=False, max_retries=2, retry_backoff_s=0.1)


@PATHS
def test_killed_connection_mid_upload_leaves_old_content_then_retry_succeeds(
    azurite, azure_env, container, azure_lake, payload_bytes, cut_after
):
    azure_lake.write_bytes("models/detector.pt", b"old weights")
    new = os.urandom(payload_bytes)
    with CuttingProxy(azurite.port, cut_after=cut_after, then="die") as proxy:
        lake = _lake_through(proxy, azure_env, container)
        started = time.monotonic()
        with pytest.raises(
            AzureLakeError,
            match=r"writing 'models/detector.pt' failed: Azure Storage at "
            rf"http://127.0.0.1:{proxy.port}/devstoreaccount1 did not answer after 2 retries",
        ):
            lake.write_bytes("models/detector.pt", new)
        assert time.monotonic() - started < 5
        assert proxy.forwarded_at_cut == [cut_after]  # the body was really cut short, once

        # seen directly (not through the dead proxy): the old object, whole; no partial new one, no stray blob
        assert azure_lake.read_bytes("models/detector.pt") == b"old weights"
        assert [(f.key, f.size) for f in azure_lake.list_files("models")] == [("models/detector.pt", 11)]

        proxy.start()  # the network is back on the same address: the same lake retries the write
        lake.write_bytes("models/detector.pt", new)
    assert azure_lake.read_bytes("models/detector.pt") == new
    assert [(f.key, f.size) for f in azure_lake.list_files("models")] == [("models/detector.pt", payload_bytes)]


@PATHS
def test_new_object_cut_mid_upload_is_not_visible(azurite, azure_env, container, azure_lake, payload_bytes, cut_after):
    with CuttingProxy(azurite.port, cut_after=cut_after, then="die") as proxy:
        lake = _lake_through(proxy, azure_env, container)
        with pytest.raises(AzureLakeError):
            lake.write_bytes("raw/images/ab/abcd.jpg", os.urandom(payload_bytes))
    assert not azure_lake.exists("raw/images/ab/abcd.jpg")
    assert azure_lake.list_files("raw") == []


@PATHS
def test_a_blip_is_retried_by_the_client_and_the_object_is_whole(
    azurite, azure_env, container, azure_lake, payload_bytes, cut_after
):
    data = os.urandom(payload_bytes)
    with CuttingProxy(azurite.port, cut_after=cut_after, then="forward") as proxy:
        lake = _lake_through(proxy, azure_env, container)
        lake.write_bytes("processed/features/day-1.parquet", data)
        assert proxy.cuts == 1 and proxy.connections >= 2  # cut once, then a new connection carried the retry
    assert azure_lake.read_bytes("processed/features/day-1.parquet") == data
