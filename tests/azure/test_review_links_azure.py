"""Review tasks on an object-store lake: Label Studio gets time-limited, read-only links to the lake's images."""

from __future__ import annotations

import time

import httpx
import pytest

from alumi_pipelines.assets.review import image_url
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.azure import AzureLakeError
from alumi_pipelines.resources.label_studio import LabelStudio

KEY = lake_keys.processed_image_key("ab" * 32)


def test_a_task_image_is_a_signed_read_only_link_that_expires(azure_lake):
    azure_lake.write_bytes(KEY, b"\xff\xd8 jpeg bytes")
    url = image_url(azure_lake, LabelStudio(url="http://127.0.0.1:1", link_hours=2), KEY)
    assert url.startswith("http://127.0.0.1:") and "sig=" in url and "sp=r" in url
    assert httpx.get(url, timeout=30).content == b"\xff\xd8 jpeg bytes"
    assert (
        httpx.put(url, content=b"overwritten", headers={"x-ms-blob-type": "BlockBlob"}, timeout=30).status_code == 403
    )
    assert azure_lake.read_bytes(KEY) == b"\xff\xd8 jpeg bytes"  # read-only: the lake is unchanged

    expired = azure_lake.share_url(KEY, 0)
    time.sleep(1.5)
    assert httpx.get(expired, timeout=30).status_code == 403


def test_a_lake_reached_with_a_sas_token_cannot_sign_links(azurite, azure_env, container):
    from alumi_pipelines.resources.azure import azure_lake

    keyed = azure_lake(f"abfs://{container}/lake", env=azure_env, deferred=False)
    token = keyed.share_url(KEY, 1).split("?", 1)[1]  # any SAS token will do to reach the lake
    env = {k: v for k, v in azure_env.items() if k != "ALUMI_AZURE_ACCOUNT_KEY"} | {"ALUMI_AZURE_SAS_TOKEN": token}
    lake = azure_lake(f"abfs://{container}/lake", env=env, deferred=False)
    with pytest.raises(AzureLakeError, match="cannot sign a read link .* use an account key"):
        lake.share_url(KEY, 1)
