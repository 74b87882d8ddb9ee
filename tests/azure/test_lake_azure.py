"""The Lake on Azurite: bytes, tables, listing, credentials of every kind, and clear errors."""

from __future__ import annotations

import datetime as dt
import os
import time

import polars as pl
import pytest
from azurite import ACCOUNT_KEY, ACCOUNT_NAME, connection_string

from alumi_pipelines.resources.azure import AzureLake, AzureLakeError, blob_storage_resource
from alumi_pipelines.resources.azure import azure_lake as make_azure_lake

pytestmark = pytest.mark.azure


def test_bytes_json_and_tables_round_trip(azure_lake):
    azure_lake.write_bytes("raw/images/ab/abc.jpg", b"\xff\xd8\xffdata")
    assert azure_lake.read_bytes("raw/images/ab/abc.jpg") == b"\xff\xd8\xffdata"
    azure_lake.write_json("gold/current.json", {"dataset_hash": "h", "n": 3})
    assert azure_lake.read_json("gold/current.json") == {"dataset_hash": "h", "n": 3}
    df = pl.DataFrame({"image_id": ["a", "b"], "width": [10, 20]})
    azure_lake.write_table("raw/manifests/b1.parquet", df)
    assert azure_lake.read_table("raw/manifests/b1.parquet").equals(df)
    files = azure_lake.list_files("raw")
    assert [(f.key, f.size) for f in files] == [
        ("raw/images/ab/abc.jpg", 7),
        ("raw/manifests/b1.parquet", files[1].size),
    ]
    assert files[1].size == len(azure_lake.read_bytes("raw/manifests/b1.parquet"))
    assert abs(files[0].mtime - time.time()) < 120
    assert azure_lake.list_dirs("raw") == ["images", "manifests"]
    assert azure_lake.list_files("nothing/here") == [] and azure_lake.list_dirs("nothing") == []
    assert azure_lake.exists("raw/images") and not azure_lake.exists("raw/images/ab/none.jpg")
    assert azure_lake.uri("raw/images/ab/abc.jpg") == (
        f"abfs://{azure_lake.base_uri.split('/')[2]}@devstoreaccount1.dfs.core.windows.net/lake/raw/images/ab/abc.jpg"
    )
    assert azure_lake.local_path("raw/images/ab/abc.jpg") is None


def test_same_table_twice_gives_identical_bytes_and_missing_key_is_named(azure_lake):
    df = pl.DataFrame({"x": [1.5, 2.5], "s": ["a", "b"]})
    azure_lake.write_table("t/a.parquet", df)
    azure_lake.write_table("t/b.parquet", df)
    assert azure_lake.read_bytes("t/a.parquet") == azure_lake.read_bytes("t/b.parquet")
    with pytest.raises(FileNotFoundError, match="processed/none.parquet"):
        azure_lake.read_bytes("processed/none.parquet")


def test_put_get_and_delete_dir(azure_lake, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    for i in range(40):  # more files than transfers in flight
        (src / "images" / f"{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / "images" / f"{i % 3}" / f"{i}.bin").write_bytes(os.urandom(1000 + i))
    keys = azure_lake.put_dir(src, "gold/datasets/h")
    assert keys[:2] == ["gold/datasets/h/a.txt", "gold/datasets/h/images/0/0.bin"] and len(keys) == 42
    assert [f.key for f in azure_lake.list_files("gold/datasets/h")] == keys
    out = azure_lake.get_dir("gold/datasets/h", tmp_path / "out")
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        assert (out / path.relative_to(src)).read_bytes() == path.read_bytes()
    azure_lake.delete("gold/datasets/h")
    assert azure_lake.list_files("gold") == [] and not azure_lake.exists("gold/datasets/h/a.txt")


def test_listings_see_other_writers_at_once(azure_env, container):
    """Two lakes on one container (two processes): no listing or existence answer comes from a stale cache."""
    first = make_azure_lake(f"abfs://{container}/lake", env=azure_env, deferred=False)
    second = make_azure_lake(f"abfs://{container}/lake", env=azure_env, deferred=False)
    first.write_bytes("landing/b1/a.png", b"1")
    assert [f.key for f in second.list_files("landing")] == ["landing/b1/a.png"]
    assert second.list_dirs("landing") == ["b1"]
    first.write_bytes("landing/b2/c.png", b"3")
    first.delete("landing/b1/a.png")
    assert [f.key for f in second.list_files("landing")] == ["landing/b2/c.png"]
    assert second.list_dirs("landing") == ["b2"]
    assert not second.exists("landing/b1/a.png") and second.exists("landing/b2/c.png")


def test_connection_string_and_sas_credentials(azurite, azure_env, container):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    via_string = make_azure_lake(
        f"abfs://{container}/lake", env={"ALUMI_AZURE_CONNECTION_STRING": azurite.connection_string}, deferred=False
    )
    via_string.write_bytes("t/a.bin", b"from a connection string")

    sas = generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    sas_env = {
        "ALUMI_AZURE_ACCOUNT_NAME": ACCOUNT_NAME,
        "ALUMI_AZURE_ACCOUNT_URL": azurite.account_url,
        "ALUMI_AZURE_SAS_TOKEN": sas,
    }
    via_sas = make_azure_lake(f"abfs://{container}/lake", env=sas_env, deferred=False)
    assert via_sas.credential.credential_type == "sas"
    assert via_sas.read_bytes("t/a.bin") == b"from a connection string"
    via_sas.write_bytes("t/b.bin", b"through a SAS")
    assert [f.key for f in via_string.list_files("t")] == ["t/a.bin", "t/b.bin"]

    read_only = generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    reader = make_azure_lake(
        f"abfs://{container}/lake", env={**sas_env, "ALUMI_AZURE_SAS_TOKEN": read_only}, deferred=False
    )
    assert reader.read_bytes("t/b.bin") == b"through a SAS"
    refused = r"writing 't/c.bin' failed: Azure refused the credentials .*ALUMI_AZURE_SAS_TOKEN"
    with pytest.raises(AzureLakeError, match=refused) as err:
        reader.write_bytes("t/c.bin", b"x")
    assert read_only.split("sig=")[1][:20] not in str(err.value)
    assert not via_string.exists("t/c.bin")


def test_missing_container_is_one_clear_error_for_every_operation(azure_env):
    lake = make_azure_lake(
        "abfs://no-such-container/lake", env=azure_env, deferred=False, max_retries=1, retry_backoff_s=0.1
    )
    for operation in (
        lambda: lake.list_files("raw"),
        lambda: lake.exists("raw/a"),
        lambda: lake.read_bytes("raw/a"),
        lambda: lake.write_bytes("raw/a", b"1"),
    ):
        started = time.monotonic()
        with pytest.raises(AzureLakeError) as err:
            operation()
        assert time.monotonic() - started < 5
        assert str(err.value) == (
            "lake abfs://no-such-container/lake: container 'no-such-container' does not exist in storage account "
            "'devstoreaccount1'; create it (az storage container create --name no-such-container) or fix ALUMI_LAKE_URI"
        )


def test_wrong_key_fails_fast_naming_the_setting_not_the_secret(azure_env, container):
    wrong = ACCOUNT_KEY[:-12] + "AAAAAAAAAAA="
    lake = make_azure_lake(
        f"abfs://{container}/lake", env={**azure_env, "ALUMI_AZURE_ACCOUNT_KEY": wrong}, deferred=False
    )
    started = time.monotonic()
    with pytest.raises(
        AzureLakeError,
        match=r"Azure refused the credentials \(AuthorizationFailure\); check the account "
        r"key \(ALUMI_AZURE_ACCOUNT_KEY\) of account 'devstoreaccount1'",
    ) as err:
        lake.read_bytes("raw/a.bin")
    assert time.monotonic() - started < 3  # a 403 is not retried
    assert wrong not in str(err.value) and ACCOUNT_KEY not in str(err.value)


def test_unreachable_endpoint_gives_up_after_the_bounded_retries(azure_env, container):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    env = {**azure_env, "ALUMI_AZURE_ACCOUNT_URL": f"http://127.0.0.1:{dead_port}/{ACCOUNT_NAME}"}
    lake = make_azure_lake(f"abfs://{container}/lake", env=env, deferred=False, max_retries=2, retry_backoff_s=0.2)
    started = time.monotonic()
    with pytest.raises(
        AzureLakeError,
        match=rf"writing 'raw/a' failed: Azure Storage at http://127.0.0.1:{dead_port}/"
        r"devstoreaccount1 did not answer after 2 retries",
    ):
        lake.write_bytes("raw/a", b"1")
    assert 0.4 < time.monotonic() - started < 5  # two delays of about 0.2 s and 0.4 s


def test_dagster_azure_blob_resource_sees_the_lake(azure_lake, azurite, container):
    azure_lake.write_bytes("reports/r.json", b"{}")
    azure_lake.write_bytes("reports/page.html", b"<html></html>")
    resource = blob_storage_resource(azure_lake)
    assert resource.account_url == azurite.account_url
    with resource.get_client() as client:
        blobs = {b.name: b.content_settings.content_type for b in client.get_container_client(container).list_blobs()}
    assert blobs == {"lake/reports/page.html": "text/html", "lake/reports/r.json": "application/json"}

    from_string = AzureLake(base_uri=azure_lake.base_uri, connection_string=connection_string(azurite.account_url))
    converted = blob_storage_resource(from_string)
    assert (converted.account_url, converted.credential.credential_type) == (azurite.account_url, "key")
