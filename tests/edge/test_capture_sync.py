"""``alumi-edge sync`` of kept frames (landing batches) and prediction logs (Parquet): exactly once, kill -9 too."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from edge_support import (
    CAPTURE_HOURS,
    CAPTURE_TIMING,
    EDGE_SRC,
    capture_frame,
    capture_is_kept,
    color_image,
    encode,
    filled_capture_store,
)

from alumi_edge.cli import main
from alumi_edge.feedback import FeedbackQueue
from alumi_edge.files import TMP_PREFIX
from alumi_edge.sync import LocalFolderTarget, TargetUnavailable, predictions_schema, sync_capture

DEVICE = "line1/cam 2"
CAMERA = "line1-cam-2"  # the device id made safe for a folder name


@pytest.fixture
def device_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("ALUMI_EDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ALUMI_EDGE_DEVICE_ID", DEVICE)


def _feedback(queue: FeedbackQueue, count: int) -> list[str]:
    record = {"kind": "missed_defect", "image_sha256": "ab" * 32, "class_name": "red", "author": "anna"}
    return [queue.add({**record, "comment": f"n{i}"}).feedback_id for i in range(count)]


def _device(tmp_path: Path, frames: int, feedback: int = 0):
    """(home, capture store, feedback ids) of a device with ``frames`` captured and ``feedback`` records queued."""
    home = tmp_path / "device"
    store = filled_capture_store(home / "capture", frames)
    queue = FeedbackQueue(home / "feedback.sqlite3", DEVICE)
    ids = _feedback(queue, feedback)
    queue.close()
    return home, store, ids


def _sync(home: Path, lake: Path, capsys, *extra: str) -> tuple[int, dict]:
    code = main(["sync", "--home", str(home), "--target", str(lake), "--backoff", "0", *extra])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # one summary line
    return code, json.loads(out[0])


def _kept_rows(store) -> dict[str, dict]:
    with sqlite3.connect(store.root / "capture.sqlite3") as db:
        rows = db.execute("SELECT id, ext, batch, synced_at FROM frames WHERE kept = 1").fetchall()
    return {r[0]: {"ext": r[1], "batch": r[2], "synced_at": r[3]} for r in rows}


def _snapshot(lake: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(lake)): (p.read_bytes(), p.stat().st_mtime_ns) for p in lake.rglob("*") if p.is_file()}


def _landing(lake: Path) -> dict[str, dict]:
    """Per landing batch: marker, {detection id: (image bytes, sidecar)}, and names of every file in it."""
    batches = {}
    for folder in sorted((lake / "landing").iterdir()):
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        marker_path = folder / "_batch.json"
        frames = {}
        for sidecar_path in folder.glob(f"*/{CAMERA}/*.json"):
            sidecar = json.loads(sidecar_path.read_text())
            frames[sidecar["detection_id"]] = ((sidecar_path.parent / sidecar["image"]).read_bytes(), sidecar)
        batches[folder.name] = {
            "marker": json.loads(marker_path.read_text()) if marker_path.is_file() else None,
            "frames": frames,
            "files": files,
        }
    return batches


def _feedback_ids(lake: Path) -> list[str]:
    files = [p for p in sorted((lake / "corrections" / "incoming").glob("*.jsonl")) if not p.name.startswith(".")]
    return [json.loads(line)["feedback_id"] for f in files for line in f.read_text().splitlines()]


def _parquet_rows(lake: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    return {
        str(p.relative_to(lake)): pq.read_table(p).to_pylist()
        for p in sorted((lake / "predictions").rglob("*.parquet"))
    }


def test_sync_uploads_a_complete_landing_batch_and_parquet_logs(tmp_path, device_env, capsys):
    count = 30
    home, store, feedback_ids = _device(tmp_path, count, feedback=3)
    frames_by_id = {}
    for index in range(count):  # the store's files are the request bytes
        frame = capture_frame(index, "unused")
        frames_by_id[frame.id] = (index, frame)
    not_kept = next(fid for fid, (i, _) in frames_by_id.items() if not capture_is_kept(i))
    assert store.flag(not_kept)["kept"]  # an operator flags a frame the rules did not keep
    upload = encode(color_image(40, 24))
    uploaded = store.keep_upload(upload, model_version="1.0.0")  # stored without width/height
    kept = {fid for fid, (i, _) in frames_by_id.items() if capture_is_kept(i)} | {not_kept, uploaded["id"]}
    lake = tmp_path / "lake"
    lake.mkdir()

    code, summary = _sync(home, lake, capsys)
    assert code == 0, summary
    assert summary["records"] == 3 and summary["pending"] == 0 and summary["error"] is None
    assert summary["frames"] == len(kept) and len(summary["batches"]) == 1 and summary["frames_pending"] == 0
    assert summary["frames_skipped"] == []
    assert summary["prediction_logs"] == [f"predictions/{CAMERA}/{hour[:10]}/{hour}.parquet" for hour in CAPTURE_HOURS]
    assert summary["prediction_requests"] == count and summary["prediction_logs_pending"] == 0
    assert sorted(_feedback_ids(lake)) == sorted(feedback_ids)

    ((name, batch),) = _landing(lake).items()
    assert name == summary["batches"][0] and name.startswith(f"edge-{CAMERA}-20240501T10")
    assert batch["marker"] == {
        "format": "alumi",
        "classes": None,
        "source": "alumi-edge",
        "device": DEVICE,
        "frames": len(kept),
    }
    assert set(batch["frames"]) == kept
    assert len(batch["files"]) == 2 * len(kept) + 1 and not [f for f in batch["files"] if TMP_PREFIX in f]
    for frame_id, (image, sidecar) in batch["frames"].items():
        row = store.get(frame_id)
        assert image == (store.frames_dir / f"{frame_id}{row['ext']}").read_bytes()
        assert sidecar["image"] == f"{frame_id}.png" and (lake / "landing" / name / "edge" / CAMERA).is_dir()
        assert (sidecar["line_id"], sidecar["camera_id"], sidecar["device"]) == ("edge", CAMERA, DEVICE)
        assert sidecar["boxes"] == [] and sidecar["labelled"] is False
        assert sidecar["captured_at"] == row["created_at"] and sidecar["model_version"] == "1.0.0"
        assert sidecar["capture_reasons"] == row["reasons"] and sidecar["image_sha256"] == row["sha256"]
        if frame_id == uploaded["id"]:
            assert (sidecar["width"], sidecar["height"], sidecar["predictions"]) == (40, 24, [])
            assert sidecar["capture_reasons"] == ["uploaded"]
        else:
            index, frame = frames_by_id[frame_id]
            assert (sidecar["width"], sidecar["height"]) == (48, 32)
            assert sidecar["predictions"] == frame.prediction["boxes"]
            assert ("flagged" in sidecar["capture_reasons"]) == (frame_id == not_kept)
    # the pipeline's own parser takes the batch: every frame an unlabelled image, nothing rejected
    from alumi_pipelines.lib.vision.formats import parse_batch
    from alumi_pipelines.lib.vision.ingest import read_marker

    folder = lake / "landing" / name
    marker = read_marker("_batch.json", (folder / "_batch.json").read_bytes())
    parsed = parse_batch(marker["format"], batch["files"], lambda rel: (folder / rel).read_bytes(), marker["classes"])
    assert parsed.rejections == [] and len(parsed.images) == len(kept)
    assert all(not image.labelled and image.boxes == [] for image in parsed.images)

    # prediction logs: one row per box (a request without a box: one row with null box columns), logs gone
    tables = _parquet_rows(lake)
    assert list(tables) == summary["prediction_logs"]
    by_request: dict[str, list[dict]] = {}
    for row in (row for hour_rows in tables.values() for row in hour_rows):
        by_request.setdefault(row["request_id"], []).append(row)
    assert sorted(by_request) == sorted(frames_by_id)
    assert any(len(rows) == 2 for rows in by_request.values()) and any(
        r[0]["n_boxes"] == 0 for r in by_request.values()
    )
    for request_id, rows in by_request.items():
        index, frame = frames_by_id[request_id]
        boxes = frame.prediction["boxes"]
        created_at = datetime.fromisoformat(store.get(request_id)["created_at"].replace("Z", "+00:00"))
        assert len(rows) == max(1, len(boxes))
        for row in rows:
            assert row["device"] == DEVICE and row["model_version"] == "1.0.0" and row["time"] == created_at
            assert (row["width"], row["height"], row["image_sha256"]) == (48, 32, frame.prediction["image"]["sha256"])
            assert row["n_boxes"] == len(boxes) and row["timing_ms"] == CAPTURE_TIMING
            assert row["max_confidence"] == (max(b["confidence"] for b in boxes) if boxes else None)
        if boxes:
            assert [r["box_index"] for r in rows] == list(range(len(boxes)))
            assert [(r["class_id"], r["class_name"], r["confidence"]) for r in rows] == [
                (b["class_id"], b["class_name"], b["confidence"]) for b in boxes
            ]
            assert [r["box"] for r in rows] == [{k: b[k] for k in ("x1", "y1", "x2", "y2")} for b in boxes]
        else:
            (row,) = rows
            assert [row[k] for k in ("box_index", "class_id", "class_name", "confidence", "box")] == [None] * 5
    # the pipeline's reader (edge_predictions) takes every row
    import polars as pl

    from alumi_pipelines.lib.drift import prediction_log_rows

    for relpath, rows in tables.items():
        day, dropped = prediction_log_rows(pl.read_parquet(lake / relpath), device=CAMERA, source_file=relpath)
        assert dropped == 0 and day.height == len(rows)
    for path, hour in zip(tables, CAPTURE_HOURS, strict=True):
        hour_ids = {r["request_id"] for r in tables[path]}
        assert all(store.get(i)["created_at"].startswith(hour) for i in hour_ids)
    import pyarrow.parquet as pq

    assert pq.read_schema(lake / summary["prediction_logs"][0]) == predictions_schema()
    assert not list(store.logs_dir.glob("*.jsonl"))
    assert store.counts()["unsynced"] == 0 and all(r["synced_at"] for r in _kept_rows(store).values())

    # a second sync uploads nothing: same files, same bytes, not even rewritten
    before = _snapshot(lake)
    code, again = _sync(home, lake, capsys)
    assert code == 0 and again["files"] == [] and again["frames"] == 0 and again["batches"] == []
    assert again["prediction_logs"] == [] and _snapshot(lake) == before
    store.close()


class RecordingTarget(LocalFolderTarget):
    """A local folder target that records its writes and fails every write after the first ``fail_after``."""

    def __init__(self, root, fail_after: int | None = None):
        super().__init__(root)
        self.writes: list[str] = []
        self.fail_after = fail_after

    def put_atomic(self, relpath, data):
        if self.fail_after is not None and len(self.writes) >= self.fail_after:
            raise TargetUnavailable("the link dropped")
        super().put_atomic(relpath, data)
        self.writes.append(relpath)


def test_the_marker_is_written_last_and_a_batch_interrupted_midway_is_resent_whole(tmp_path):
    store = filled_capture_store(tmp_path / "capture", 40)
    kept = set(_kept_rows(store))
    lake = tmp_path / "lake"
    lake.mkdir()
    cut = RecordingTarget(lake, fail_after=9)  # the link drops inside the first batch
    first = sync_capture(store, cut, DEVICE, batch_size=10, attempts=2, sleep=lambda s: None)
    assert not first.ok and "link dropped" in first.error and first.batches == [] and first.frames == 0
    assert first.pending_frames == len(kept) and first.pending_logs == len(CAPTURE_HOURS) and first.logs == []
    (name,) = [p.name for p in (lake / "landing").iterdir()]
    assert not (lake / "landing" / name / "_batch.json").exists()  # the pipeline never sees this half batch
    half = _snapshot(lake)

    target = RecordingTarget(lake)
    done = sync_capture(store, target, DEVICE, batch_size=10, sleep=lambda s: None)
    assert done.ok and done.batches[0] == name and done.frames == len(kept) and len(done.logs) == 3
    # the interrupted batch is re-sent under its name with the same bytes
    after = _snapshot(lake)
    assert all(after[rel][0] == data for rel, (data, _) in half.items())
    batches = [w.split("/")[1] for w in target.writes if w.startswith("landing/")]
    for batch in dict.fromkeys(batches):
        writes = [w for w in target.writes if w.startswith(f"landing/{batch}/")]
        assert writes[-1] == f"landing/{batch}/_batch.json" and writes.count(writes[-1]) == 1
        assert len(writes) == 2 * 10 + 1 or batch == batches[-1]
    assert target.writes.index(f"landing/{batches[-1]}/_batch.json") < target.writes.index(done.logs[0])
    landed = _landing(lake)
    seen = [frame_id for batch in landed.values() for frame_id in batch["frames"]]
    assert len(seen) == len(set(seen)) == len(kept) and set(seen) == kept
    assert all(batch["marker"]["frames"] == len(batch["frames"]) for batch in landed.values())
    store.close()


def test_an_outage_leaves_everything_queued_and_a_later_sync_completes(tmp_path, device_env, capsys):
    home, store, feedback_ids = _device(tmp_path, 20, feedback=2)
    kept = set(_kept_rows(store))
    lake = tmp_path / "lake"  # the share is not mounted

    code, summary = _sync(home, lake, capsys, "--attempts", "2")
    assert code == 5 and "does not exist" in summary["error"]
    assert summary["pending"] == 2 and summary["frames_pending"] == len(kept) and summary["frames"] == 0
    assert summary["prediction_logs_pending"] == len(CAPTURE_HOURS)
    assert not lake.exists() and len(list(store.logs_dir.glob("*.jsonl"))) == len(CAPTURE_HOURS)
    assert store.counts()["unsynced"] == len(kept)

    lake.mkdir()
    code, summary = _sync(home, lake, capsys)
    assert code == 0 and summary["error"] is None and summary["frames"] == len(kept)
    assert len(summary["prediction_logs"]) == len(CAPTURE_HOURS)
    assert sorted(_feedback_ids(lake)) == sorted(feedback_ids)
    (batch,) = _landing(lake).values()
    assert set(batch["frames"]) == kept and batch["marker"]["frames"] == len(kept)
    assert len({row["request_id"] for rows in _parquet_rows(lake).values() for row in rows}) == 20
    store.close()


def test_switches_and_a_vanished_frame_is_skipped_and_reported(tmp_path, device_env, capsys):
    home, store, _ = _device(tmp_path, 20)
    kept = _kept_rows(store)
    gone = sorted(kept)[0]
    (store.frames_dir / f"{gone}{kept[gone]['ext']}").unlink()
    # files of frames the server is writing right now (no row committed yet): sync must leave them alone
    in_flight = [store.frames_dir / "f00d.png", store.frames_dir / f"{TMP_PREFIX}1234-beef.png"]
    for path in in_flight:
        path.write_bytes(b"\x89PNG\r\n\x1a\n...")
    lake = tmp_path / "lake"
    lake.mkdir()

    code, summary = _sync(home, lake, capsys, "--no-frames")
    assert code == 0 and summary["frames"] == 0 and summary["frames_pending"] == len(kept)
    assert len(summary["prediction_logs"]) == len(CAPTURE_HOURS) and not (lake / "landing").exists()

    code, summary = _sync(home, lake, capsys, "--no-predictions", "--line", "press 4")
    assert code == 0 and summary["frames"] == len(kept) - 1 and summary["frames_pending"] == 0
    assert summary["frames_skipped"] == [
        {"id": gone, "batch": summary["batches"][0], "reason": f"frame file {gone}.png vanished"}
    ]
    (batch,) = _landing(lake).values()
    assert set(batch["frames"]) == set(kept) - {gone} and batch["marker"]["frames"] == len(kept) - 1
    assert all(f.startswith("press-4/") or f == "_batch.json" for f in batch["files"])
    assert _kept_rows(store)[gone]["synced_at"]  # not retried forever
    assert all(path.is_file() for path in in_flight)

    # --no-predictions left nothing behind that a later plain sync would not take
    code, summary = _sync(home, lake, capsys)
    assert code == 0 and summary["frames"] == 0 and summary["prediction_logs"] == []
    store.close()


# A real `alumi-edge sync` process whose local folder target is slow (each write sleeps first and reports
# itself on stderr once done), so the test can kill -9 it at chosen points.
SLOW_SYNC = r"""
import sys, time
from alumi_edge import sync

real_put = sync.LocalFolderTarget.put_atomic


def slow_put(self, relpath, data):
    time.sleep(float(sys.argv[1]))
    real_put(self, relpath, data)
    print("PUT " + relpath, file=sys.stderr, flush=True)


sync.LocalFolderTarget.put_atomic = slow_put
from alumi_edge.cli import main

raise SystemExit(main(sys.argv[2:]))
"""


def _run_killing(cmd: list[str], env: dict, kill_when) -> tuple[int, list[str], str]:
    """Run ``cmd``; SIGKILL it as soon as ``kill_when(puts so far)`` holds. (return code, puts, stdout)."""
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    puts: list[str] = []
    try:
        for line in process.stderr:
            if line.startswith("PUT "):
                puts.append(line[4:].strip())
                if kill_when(puts):
                    process.kill()
                    break
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, puts, stdout


def test_kill_9_midway_then_sync_again_delivers_every_frame_and_record_exactly_once(tmp_path, device_env):
    count = 120
    home, store, feedback_ids = _device(tmp_path, count, feedback=30)
    store.close()  # the server stopped; the sync processes open the store themselves
    kept = set(_kept_rows(store))
    lake = tmp_path / "lake"
    lake.mkdir()
    env = {**os.environ, "PYTHONPATH": str(EDGE_SRC), "ALUMI_EDGE_DEVICE_ID": DEVICE}
    cmd = [sys.executable, "-c", SLOW_SYNC, "0.01", "sync", "--home", str(home), "--target", str(lake)]
    cmd += ["--backoff", "0", "--batch-size", "7", "--frame-batch-size", "25"]

    kill_points = [
        lambda puts: len(puts) >= 3,  # inside the feedback files
        lambda puts: sum(p.startswith("landing/") for p in puts) >= 17,  # inside the first landing batch
        lambda puts: puts[-1].endswith("/_batch.json"),  # right after a marker, around mark_batch_synced
        lambda puts: sum(p.endswith("/_batch.json") for p in puts) >= 1 and len(puts) >= 40,  # inside a later batch
        lambda puts: puts[-1].endswith(".parquet"),  # among the prediction logs
    ]
    runs = []
    for kill_when in kill_points:
        code, puts, stdout = _run_killing(cmd, env, kill_when)
        runs.append(puts)
        assert code == -9, (code, stdout, puts[-5:])  # killed midway, not finished
    code, puts, stdout = _run_killing(cmd, env, lambda puts: False)
    assert code == 0, stdout
    summary = json.loads(stdout)
    assert summary["pending"] == 0 and summary["frames_pending"] == 0 and summary["prediction_logs_pending"] == 0

    # feedback: every record once
    ids = _feedback_ids(lake)
    assert sorted(ids) == sorted(feedback_ids) and len(ids) == len(set(ids)) == 30
    # frames: every kept frame in exactly one complete batch, matching the store's batches and bytes
    rows = _kept_rows(store)
    landed = _landing(lake)
    seen = [frame_id for batch in landed.values() for frame_id in batch["frames"]]
    assert len(seen) == len(set(seen)) == len(kept) and set(seen) == kept
    for name, batch in landed.items():
        assert batch["marker"] is not None and batch["marker"]["frames"] == len(batch["frames"])
        assert set(batch["frames"]) == {i for i, r in rows.items() if r["batch"] == name}
        assert len(batch["files"]) == 2 * len(batch["frames"]) + 1  # no stray or temporary file left
        for frame_id, (image, sidecar) in batch["frames"].items():
            assert hashlib.sha256(image).hexdigest() == sidecar["image_sha256"]
            assert image == (home / "capture" / "frames" / f"{frame_id}{rows[frame_id]['ext']}").read_bytes()
    assert all(r["synced_at"] for r in rows.values())
    # prediction logs: each hour once, every request once
    tables = _parquet_rows(lake)
    assert len(tables) == len(CAPTURE_HOURS)
    boxes = [(row["request_id"], row["box_index"]) for hour_rows in tables.values() for row in hour_rows]
    assert len(boxes) == len(set(boxes)) and len({request_id for request_id, _ in boxes}) == count
    assert not list((home / "capture" / "predictions").glob("*.jsonl"))
    # the kills really landed in the middle: some files were written more than once, under the same name
    written = [p for puts in runs for p in puts] + puts
    assert len(written) > len(set(written))
    assert not [p for p in lake.rglob(f"{TMP_PREFIX}*") if "landing" in p.parts]


def test_prediction_parquet_bytes_are_deterministic(tmp_path):
    from alumi_edge.capture import read_prediction_log
    from alumi_edge.sync import prediction_log_parquet

    store = filled_capture_store(tmp_path / "capture", 12)
    path = sorted(store.logs_dir.glob("*.jsonl"))[0]
    records = read_prediction_log(path)
    with open(path, "a") as fh:  # a torn last line (killed writer) is skipped
        fh.write('{"time": "2024-05-01T10:59')
    assert read_prediction_log(path) == records
    data = prediction_log_parquet(records, DEVICE)
    assert data == prediction_log_parquet(read_prediction_log(path), DEVICE)
    import pyarrow.parquet as pq

    empty = pq.read_table(io.BytesIO(prediction_log_parquet([{"request_id": "x", "boxes": []}], DEVICE)))
    assert empty.to_pylist()[0]["n_boxes"] == 0 and empty.to_pylist()[0]["max_confidence"] is None
    store.close()
