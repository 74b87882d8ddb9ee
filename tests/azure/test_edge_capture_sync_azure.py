"""``alumi-edge sync`` into an Azure blob container over HTTP with a write SAS (Azurite): batch, marker, Parquet."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from azurite import ACCOUNT_KEY, ACCOUNT_NAME  # noqa: E402
from edge_support import CAPTURE_HOURS, filled_capture_store  # noqa: E402

pytestmark = pytest.mark.azure

DEVICE = "line1/cam 2"
CAMERA = "line1-cam-2"


def _write_sas_url(azurite, container: str, prefix: str = "lake") -> str:
    """The lake root in the container with a SAS that may create and write blobs (no read, no list)."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    now = dt.datetime.now(dt.UTC)
    sas = generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(create=True, write=True),
        start=now - dt.timedelta(minutes=5),
        expiry=now + dt.timedelta(hours=1),
    )
    return f"{azurite.account_url}/{container}/{prefix}?{sas}"


def test_sync_lands_the_batch_and_the_parquet_in_a_blob_container(
    tmp_path, azurite, container, azure_lake, monkeypatch, capsys
):
    import pyarrow.parquet as pq

    from alumi_edge.cli import main
    from alumi_edge.feedback import FeedbackQueue

    for name in ("ALUMI_EDGE_SYNC_TARGET", "ALUMI_EDGE_AZURE_SAS", "ALUMI_EDGE_LINE_ID", "ALUMI_EDGE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALUMI_EDGE_DEVICE_ID", DEVICE)
    home = tmp_path / "device"
    store = filled_capture_store(home / "capture", 24)
    queue = FeedbackQueue(home / "feedback.sqlite3", DEVICE)
    record = {"kind": "false_positive", "image_sha256": "cd" * 32, "class_name": "red", "author": "anna"}
    feedback_id = queue.add(record).feedback_id
    queue.close()
    kept = {frame_id for frame_id in (r["id"] for r in store.recent(100)) if store.get(frame_id)["kept"]}
    url = _write_sas_url(azurite, container)

    def sync() -> dict:
        code = main(["sync", "--home", str(home), "--target", url, "--backoff", "0", "--attempts", "2"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "sig=" not in captured.err and "sig=" not in captured.out
        return json.loads(captured.out)

    summary = sync()
    assert summary["records"] == 1 and summary["frames"] == len(kept) and len(summary["batches"]) == 1
    assert len(summary["prediction_logs"]) == len(CAPTURE_HOURS) and summary["prediction_requests"] == 24

    # read back with the pipeline's Azure lake (abfs://<container>/lake)
    (incoming,) = azure_lake.list_files("corrections/incoming")
    assert json.loads(azure_lake.read_bytes(incoming.key))["feedback_id"] == feedback_id
    batch = summary["batches"][0]
    landing = azure_lake.list_files(f"landing/{batch}")
    keys = [f.key for f in landing]
    marker = json.loads(azure_lake.read_bytes(f"landing/{batch}/_batch.json"))
    assert marker == {"format": "alumi", "classes": None, "source": "alumi-edge", "device": DEVICE, "frames": len(kept)}
    assert len(keys) == 2 * len(kept) + 1
    # the marker is the newest blob of the batch
    assert max(landing, key=lambda f: (f.mtime, f.key.endswith("_batch.json"))).key.endswith("/_batch.json")
    for frame_id in kept:
        row = store.get(frame_id)
        prefix = f"landing/{batch}/edge/{CAMERA}/{frame_id}"
        assert azure_lake.read_bytes(f"{prefix}.png") == (store.frames_dir / f"{frame_id}.png").read_bytes()
        sidecar = json.loads(azure_lake.read_bytes(f"{prefix}.json"))
        assert sidecar["labelled"] is False and sidecar["boxes"] == [] and sidecar["detection_id"] == frame_id
        assert sidecar["predictions"] == row["prediction"]["boxes"] and sidecar["camera_id"] == CAMERA

    requests: set[str] = set()
    for hour, relpath in zip(CAPTURE_HOURS, summary["prediction_logs"], strict=True):
        assert relpath == f"predictions/{CAMERA}/{hour[:10]}/{hour}.parquet"
        table = pq.read_table(io.BytesIO(azure_lake.read_bytes(relpath)))
        assert set(table.column("device").to_pylist()) == {DEVICE}
        requests.update(table.column("request_id").to_pylist())
    assert len(requests) == 24

    # nothing new: a second sync writes no blob
    def blobs() -> dict:
        zones = ("corrections", "landing", "predictions")
        return {f.key: (f.size, f.mtime) for zone in zones for f in azure_lake.list_files(zone)}

    before = blobs()
    again = sync()
    assert again["files"] == [] and again["frames"] == 0 and again["prediction_logs"] == []
    assert blobs() == before
    store.close()
