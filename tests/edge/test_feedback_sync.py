"""Feedback: validated, queued durably before the answer, synced to corrections/incoming/ exactly once."""

from __future__ import annotations

import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
from edge_support import EDGE_SRC, auth_header

from alumi_edge.feedback import FeedbackQueue
from alumi_edge.sync import HttpPutTarget, LocalFolderTarget, sync_feedback

SHA = "ab" * 32


def _feedback(kind="missed_defect", **extra):
    body = {
        "kind": kind,
        "image_sha256": SHA,
        "box": {"x1": 10, "y1": 12, "x2": 40, "y2": 30},
        "class_name": "red",
        "author": "anna",
        "comment": "left edge",
    }
    body.update(extra)
    return body


def _lines(folder):
    files = sorted((folder / "corrections" / "incoming").glob("*.jsonl"))
    return files, [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_feedback_is_queued_durably_before_the_response(client, edge_home):
    response = client.post("/v1/feedback", json=_feedback(), headers=auth_header())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "queued" and body["duplicate"] is False and body["seq"] == 1
    # an independent connection sees the committed row: it is on disk, not in a buffer
    with sqlite3.connect(edge_home / "feedback.sqlite3") as db:
        rows = db.execute("SELECT feedback_id, record FROM feedback").fetchall()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in rows] == [body["feedback_id"]]
    record = json.loads(rows[0][1])
    assert record["kind"] == "missed_defect" and record["box"] == {"x1": 10.0, "y1": 12.0, "x2": 40.0, "y2": 30.0}
    assert record["model_version"] == "1.0.0" and record["device_id"] == "line1/cam 2"
    assert record["token_subject"] == "operator-7"
    stored = client.get(f"/v1/feedback/{body['feedback_id']}", headers=auth_header()).json()
    assert stored["sync"] == {"batch": None, "sent_at": None} and stored["author"] == "anna"
    assert "alumi_edge_feedback_pending 1.0" in client.get("/metrics").text


def test_idempotency_key_returns_the_same_id(client):
    headers = {**auth_header(), "Idempotency-Key": "tablet-3-0001"}
    first = client.post("/v1/feedback", json=_feedback("false_positive"), headers=headers)
    again = client.post("/v1/feedback", json=_feedback("false_positive"), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["feedback_id"] == first.json()["feedback_id"] and again.json()["duplicate"] is True
    other = client.post("/v1/feedback", json=_feedback("false_positive"), headers=auth_header())
    assert other.json()["feedback_id"] != first.json()["feedback_id"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"kind": "looks_odd"}, "kind"),
        ({"class_name": "purple"}, "class_name"),
        ({"box": {"x1": 40, "y1": 12, "x2": 10, "y2": 30}}, "box"),
        ({"box": {"x1": -1, "y1": 12, "x2": 10, "y2": 30}}, "box.x1"),
        ({"image_sha256": None}, ""),
        ({"image_sha256": "not-a-hash"}, "image_sha256"),
        ({"author": ""}, "author"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_feedback_gets_422_naming_the_field(client, change, field):
    response = client.post("/v1/feedback", json=_feedback(**change), headers=auth_header())
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(p["field"] == field or p["field"].startswith(field + ".") for p in problems), problems
    assert (
        client.post(
            "/v1/feedback", content=b"{not json", headers={**auth_header(), "Content-Type": "application/json"}
        ).status_code
        == 422
    )


def _queue_with(tmp_path, count, device="edge 7"):
    queue = FeedbackQueue(tmp_path / "q.sqlite3", device)
    ids = [queue.add(_feedback(comment=f"n{i}")).feedback_id for i in range(count)]
    return queue, ids


def test_sync_survives_an_outage_then_delivers_each_record_once(tmp_path):
    queue, ids = _queue_with(tmp_path, 5)
    lake = tmp_path / "lake"  # not there yet: the share is not mounted
    delays: list[float] = []
    failed = sync_feedback(queue, LocalFolderTarget(lake), attempts=4, backoff_s=0.5, sleep=delays.append)
    assert not failed.ok and "does not exist" in failed.error
    assert failed.files == [] and failed.pending == 5 and delays == [0.5, 1.0, 2.0]
    assert not lake.exists()

    lake.mkdir()
    done = sync_feedback(queue, LocalFolderTarget(lake), sleep=delays.append)
    assert done.ok and done.records == 5 and done.pending == 0
    assert done.files == ["corrections/incoming/edge-edge-7-1-5.jsonl"]
    files, records = _lines(lake)
    assert [r["feedback_id"] for r in records] == ids
    assert all(r["device_id"] == "edge 7" for r in records)

    # nothing new: a second sync writes nothing
    assert sync_feedback(queue, LocalFolderTarget(lake)).files == []
    queue.add(_feedback(comment="late"))
    queue.add(_feedback(comment="later"))
    third = sync_feedback(queue, LocalFolderTarget(lake), batch_size=500)
    assert third.files == ["corrections/incoming/edge-edge-7-6-7.jsonl"]
    files, records = _lines(lake)
    assert len(files) == 2 and len(records) == 7 and len({r["feedback_id"] for r in records}) == 7
    assert not list((lake / "corrections" / "incoming").glob(".tmp-*"))


def test_crash_after_upload_before_mark_resends_same_file_not_duplicates(tmp_path, monkeypatch):
    queue, ids = _queue_with(tmp_path, 3)
    lake = tmp_path / "lake"
    lake.mkdir()
    real_mark = queue.mark_sent
    monkeypatch.setattr(queue, "mark_sent", lambda batch: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError, match="power cut"):
        sync_feedback(queue, LocalFolderTarget(lake))
    first_bytes = (lake / "corrections/incoming/edge-edge-7-1-3.jsonl").read_bytes()
    # new feedback arrives before the retry; it must not join the interrupted batch
    queue.add(_feedback(comment="arrived during outage"))
    monkeypatch.setattr(queue, "mark_sent", real_mark)
    retry = sync_feedback(queue, LocalFolderTarget(lake))
    assert retry.files == ["corrections/incoming/edge-edge-7-1-3.jsonl", "corrections/incoming/edge-edge-7-4-4.jsonl"]
    assert (lake / "corrections/incoming/edge-edge-7-1-3.jsonl").read_bytes() == first_bytes
    _, records = _lines(lake)
    assert len(records) == 4 and len({r["feedback_id"] for r in records}) == 4
    assert queue.pending_count() == 0


def test_batches_split_by_size(tmp_path):
    queue, _ = _queue_with(tmp_path, 5)
    (tmp_path / "lake").mkdir()
    result = sync_feedback(queue, LocalFolderTarget(tmp_path / "lake"), batch_size=2)
    assert [f.rsplit("/", 1)[1] for f in result.files] == [
        "edge-edge-7-1-2.jsonl",
        "edge-edge-7-3-4.jsonl",
        "edge-edge-7-5-5.jsonl",
    ]


class _BlobHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_PUT(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.calls.append((self.path, self.headers.get("x-ms-blob-type")))
        status = server.statuses.pop(0) if server.statuses else 201
        if status < 300:
            server.blobs[self.path.split("?")[0]] = data
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_http_put_target_retries_until_the_store_answers(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BlobHandler)
    server.calls, server.blobs, server.statuses = [], {}, [503, 500]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        queue, ids = _queue_with(tmp_path, 2)
        target = HttpPutTarget(f"http://127.0.0.1:{server.server_port}/lake?sv=1&sig=abc")
        result = sync_feedback(queue, target, attempts=3, sleep=lambda s: None)
        assert result.ok and result.records == 2
        assert [c[0] for c in server.calls] == ["/lake/corrections/incoming/edge-edge-7-1-2.jsonl?sv=1&sig=abc"] * 3
        assert all(c[1] == "BlockBlob" for c in server.calls)
        lines = server.blobs["/lake/corrections/incoming/edge-edge-7-1-2.jsonl"].decode().splitlines()
        assert [json.loads(line)["feedback_id"] for line in lines] == ids
    finally:
        server.shutdown()
        server.server_close()


def test_sync_cli_exit_codes_and_output(tmp_path, client):
    for i in range(3):
        assert client.post("/v1/feedback", json=_feedback(comment=str(i)), headers=auth_header()).status_code == 201
    home = client.app.state.settings.home
    env = {**os.environ, "PYTHONPATH": str(EDGE_SRC), "ALUMI_EDGE_DEVICE_ID": "line1/cam 2"}
    target = tmp_path / "central-lake"
    cmd = [sys.executable, "-m", "alumi_edge", "sync", "--home", str(home), "--target", str(target), "--backoff", "0"]
    offline = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert offline.returncode == 5 and json.loads(offline.stdout)["pending"] == 3
    target.mkdir()
    online = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert online.returncode == 0, online.stderr
    assert json.loads(online.stdout)["files"] == ["corrections/incoming/edge-line1-cam-2-1-3.jsonl"]
    assert "alumi_edge_feedback_pending 0.0" in client.get("/metrics").text
