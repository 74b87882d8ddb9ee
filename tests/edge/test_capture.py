"""Capture wired into the server: detection ids, the frame store and prediction log, sampling rules, feedback by
detection id or with the frame uploaded, the operator endpoints and page, and the store's size bound."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading

import pytest
from edge_support import auth_header, color_image, edge_settings, encode
from fastapi.testclient import TestClient

from alumi_edge.capture import CaptureRules, CaptureStore, Frame, read_prediction_log
from alumi_edge.main import create_app

RED = encode(color_image(128, 128, squares=(("red", 32, 32, 32),)))
BLUE = encode(color_image(128, 128, squares=(("blue", 64, 64, 32),)))
GREY = encode(color_image(128, 128, squares=()))


def _dim_red(x: int = 32) -> bytes:
    """A faint red square: the colour model finds it as 'red' with confidence (200 - 114) / 255 ≈ 0.34."""
    image = color_image(128, 128, squares=())
    image[32:64, x : x + 32] = (114, 114, 200)
    return encode(image)


@contextlib.contextmanager
def _client(edge_home, **overrides):
    with TestClient(create_app(edge_settings(edge_home, **overrides))) as client:
        yield client


def _detect(client, data: bytes = RED) -> dict:
    response = client.post("/v1/detect", content=data, headers=auth_header())
    assert response.status_code == 200, response.text
    return response.json()


def _store(client) -> CaptureStore:
    store = client.app.state.capture
    store.flush()
    return store


def _feedback(detection_id=None, kind="false_positive", class_name="red", box=(32, 32, 64, 64), **extra) -> dict:
    body = {
        "kind": kind,
        "class_name": class_name,
        "author": "op-7",
        "box": dict(zip(("x1", "y1", "x2", "y2"), box, strict=True)),
        **extra,
    }
    if detection_id is not None:
        body["detection_id"] = detection_id
    return body


def _frame_files(edge_home) -> set[str]:
    return {p.stem for p in (edge_home / "capture" / "frames").iterdir()}


def test_detect_returns_an_id_and_the_frame_and_prediction_log_line_are_written(client, edge_home):
    body = _detect(client)
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert _detect(client)["id"] != body["id"]
    store = _store(client)
    frame = edge_home / "capture" / "frames" / f"{body['id']}.png"
    assert frame.read_bytes() == RED  # the request's original bytes: the lake's image id is the same sha256
    assert hashlib.sha256(frame.read_bytes()).hexdigest() == body["image"]["sha256"]
    logs = sorted((edge_home / "capture" / "predictions").glob("*.jsonl"))
    lines = [line for log in logs for line in read_prediction_log(log)]
    line = next(line for line in lines if line["request_id"] == body["id"])
    assert line["model_version"] == "1.0.0" and line["image_sha256"] == body["image"]["sha256"]
    assert (line["width"], line["height"]) == (128, 128)
    assert line["boxes"] == body["boxes"] and line["timing_ms"] == body["timing_ms"]
    assert len(lines) == 2
    row = store.get(body["id"])
    assert row["kept"] is False and row["flagged"] is False and row["reasons"] == []
    assert row["prediction"]["boxes"] == body["boxes"]


def test_sampling_rules_uncertain_band_rare_class_and_hourly_cap(edge_home):
    with _client(
        edge_home,
        capture_uncertain_low=0.3,
        capture_uncertain_high=0.4,
        capture_rare_classes="blue, green",
        capture_per_hour_cap=2,
    ) as client:
        confident = _detect(client, RED)
        uncertain = _detect(client, _dim_red())
        assert 0.3 <= uncertain["boxes"][0]["confidence"] < 0.4  # ≈ 0.337
        rare = _detect(client, BLUE)
        over_cap = [_detect(client, _dim_red(x)) for x in (0, 64)]
        nothing = _detect(client, GREY)
        store = _store(client)
        rows = {name: store.get(b["id"]) for name, b in [("confident", confident), ("uncertain", uncertain)]}
        rows |= {"rare": store.get(rare["id"]), "nothing": store.get(nothing["id"])}
        assert rows["confident"]["reasons"] == [] and not rows["confident"]["kept"]
        assert rows["uncertain"]["reasons"] == ["uncertain"] and rows["uncertain"]["kept"]
        assert rows["rare"]["reasons"] == ["rare_class"] and rows["rare"]["kept"]
        assert rows["nothing"]["reasons"] == []
        hours = {store.get(b["id"])["created_at"][:13] for b in (uncertain, rare, *over_cap)}
        if len(hours) == 1:  # the cap is per clock hour
            assert [store.get(b["id"])["kept"] for b in over_cap] == [False, False]
        # flagging is not limited by the cap
        flagged = client.post("/v1/feedback", json=_feedback(over_cap[0]["id"]), headers=auth_header())
        assert flagged.status_code == 201, flagged.text
        assert store.get(over_cap[0]["id"])["reasons"] == ["flagged"]

    with _client(edge_home, capture_random_fraction=1.0, capture_per_hour_cap=100) as client:
        body = _detect(client, GREY)
        assert _store(client).get(body["id"])["reasons"] == ["random"]


@pytest.mark.parametrize(
    "boxes, draw, expected",
    [
        ([{"confidence": 0.25, "class_name": "red"}], 0.9, ["uncertain"]),  # low end is inside
        ([{"confidence": 0.5, "class_name": "red"}], 0.9, []),  # high end is outside
        ([{"confidence": 0.9, "class_name": "red"}, {"confidence": 0.3, "class_name": "red"}], 0.9, []),  # top box
        ([{"confidence": 0.9, "class_name": "crack"}], 0.9, ["rare_class"]),
        ([{"confidence": 0.4, "class_name": "crack"}], 0.05, ["uncertain", "rare_class", "random"]),
        ([], 0.09, ["random"]),
        ([], 0.1, []),
    ],
)
def test_capture_rules_reasons(boxes, draw, expected):
    rules = CaptureRules(uncertain_low=0.25, uncertain_high=0.5, rare_classes=("crack",), random_fraction=0.1)
    assert rules.reasons(boxes, draw) == expected


def test_feedback_by_detection_id_flags_the_frame_and_fills_image_sha256(client, edge_home):
    body = _detect(client)
    headers = {**auth_header(), "Idempotency-Key": "tablet-1"}
    response = client.post("/v1/feedback", json=_feedback(body["id"]), headers=headers)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["image_sha256"] == body["image"]["sha256"] and answer["frame_kept"] is True
    again = client.post("/v1/feedback", json=_feedback(body["id"]), headers=headers)
    assert again.status_code == 200 and again.json()["feedback_id"] == answer["feedback_id"]
    record = client.get(f"/v1/feedback/{answer['feedback_id']}", headers=auth_header()).json()
    assert record["image_sha256"] == body["image"]["sha256"] and record["detection_id"] == body["id"]
    assert record["model_version"] == "1.0.0" and record["image_ref"] is None
    row = _store(client).get(body["id"])
    assert row["kept"] and row["flagged"] and row["reasons"] == ["flagged"] and row["synced_at"] is None
    assert client.app.state.capture.counts()["unsynced"] == 1

    missed = _feedback(body["id"], kind="missed_defect", class_name="blue", box=(90, 90, 120, 120))
    assert client.post("/v1/feedback", json=missed, headers=auth_header()).status_code == 201
    assert _store(client).get(body["id"])["reasons"] == ["flagged"]  # flagged once

    # image_sha256 and image_ref keep working; a sha256 that contradicts the frame is refused
    plain = _feedback(image_sha256=body["image"]["sha256"])
    assert client.post("/v1/feedback", json=plain, headers=auth_header()).status_code == 201
    by_ref = _feedback(image_ref="cam2/0001.png")
    assert client.post("/v1/feedback", json=by_ref, headers=auth_header()).status_code == 201
    wrong = _feedback(body["id"], image_sha256="0" * 64)
    response = client.post("/v1/feedback", json=wrong, headers=auth_header())
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "image_sha256"
    outside = _feedback(body["id"], box=(100, 100, 140, 120))  # the frame is 128 px wide
    response = client.post("/v1/feedback", json=outside, headers=auth_header())
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "box"
    response = client.post("/v1/feedback", json=_feedback(), headers=auth_header())
    assert response.status_code == 422 and "detection_id" in json.dumps(response.json()["detail"])
    malformed = client.post("/v1/feedback", json=_feedback("XYZ"), headers=auth_header())
    assert malformed.status_code == 422 and malformed.json()["detail"][0]["field"] == "detection_id"


def _refused_naming_detection_id(response) -> str:
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert [p["field"] for p in problems] == ["detection_id"]
    return problems[0]["message"]


def test_unknown_or_evicted_detection_id_gets_422_naming_detection_id(edge_home):
    with _client(edge_home, capture_recent_frames=2) as client:
        first, _, _ = (_detect(client) for _ in range(3))
        _store(client)
        assert _frame_files(edge_home) == {
            r["id"] for r in client.get("/v1/recent", headers=auth_header()).json()["detections"]
        }
        message = _refused_naming_detection_id(
            client.post("/v1/feedback", json=_feedback(first["id"]), headers=auth_header())
        )
        assert "evicted" in message and first["id"] in message
        _refused_naming_detection_id(client.post("/v1/feedback", json=_feedback("a" * 32), headers=auth_header()))
        assert client.app.state.queue.total_count() == 0


def test_capture_off_still_returns_an_id_and_refuses_detection_ids(edge_home):
    with _client(edge_home, capture=False) as client:
        body = _detect(client)
        assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
        assert client.app.state.capture is None and not (edge_home / "capture").exists()
        message = _refused_naming_detection_id(
            client.post("/v1/feedback", json=_feedback(body["id"]), headers=auth_header())
        )
        assert "capture is off" in message
        for path in ("/v1/recent", f"/v1/frames/{body['id']}"):
            response = client.get(path, headers=auth_header())
            assert response.status_code == 501 and response.json()["error"] == "capture_off"
        upload = client.post(
            "/v1/feedback/upload",
            files={"file": ("f.png", RED, "image/png")},
            data={"feedback": json.dumps(_feedback())},
            headers=auth_header(),
        )
        assert upload.status_code == 501 and upload.json()["error"] == "capture_off"
        assert client.post("/v1/feedback", json=_feedback(image_ref="x.png"), headers=auth_header()).status_code == 201


def test_feedback_with_the_frame_uploaded_keeps_the_frame(client, edge_home):
    frame = encode(color_image(96, 64, squares=(("green", 10, 10, 20),)), ".jpg")
    sha = hashlib.sha256(frame).hexdigest()
    record = _feedback(kind="missed_defect", class_name="green", box=(10, 10, 30, 30), comment="found by hand")
    response = client.post(
        "/v1/feedback/upload",
        files={"file": ("cam2-0042.jpg", frame, "image/jpeg")},
        data={"feedback": json.dumps(record)},
        headers={**auth_header(), "Idempotency-Key": "upload-1"},
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["image_sha256"] == sha and answer["frame_kept"] is True
    queued = client.get(f"/v1/feedback/{answer['feedback_id']}", headers=auth_header()).json()
    assert queued["image_sha256"] == sha and queued["kind"] == "missed_defect" and queued["comment"] == "found by hand"
    assert queued["model_version"] == "1.0.0" and queued["token_subject"] == "operator-7"
    row = client.app.state.capture.get(answer["frame_id"])
    assert row["reasons"] == ["uploaded"] and row["kept"] and row["flagged"] and row["sha256"] == sha
    assert (row["width"], row["height"]) == (96, 64)
    assert (edge_home / "capture" / "frames" / f"{answer['frame_id']}.jpg").read_bytes() == frame
    served = client.get(f"/v1/frames/{answer['frame_id']}", headers=auth_header())
    assert served.content == frame and served.headers["content-type"] == "image/jpeg"

    # the record as a file part works too; bad records, files and shas are refused with the field named
    as_file = client.post(
        "/v1/feedback/upload",
        files={
            "file": ("f.png", RED, "image/png"),
            "feedback": ("f.json", json.dumps(_feedback()), "application/json"),
        },
        headers=auth_header(),
    )
    assert as_file.status_code == 201, as_file.text
    cases = [
        ({"feedback": json.dumps({**record, "class_name": "purple"})}, 422, "feedback.class_name"),
        ({"feedback": json.dumps({**record, "kind": "odd"})}, 422, "feedback.kind"),
        ({"feedback": json.dumps({**record, "image_sha256": "0" * 64})}, 422, "feedback.image_sha256"),
        ({"feedback": json.dumps(_feedback(box=(10, 10, 30, 99)))}, 422, "feedback.box"),
        ({"feedback": "{not json"}, 422, "feedback"),
        ({}, 422, "feedback"),
    ]
    for data, status, field in cases:
        refused = client.post(
            "/v1/feedback/upload", files={"file": ("f.jpg", frame, "image/jpeg")}, data=data, headers=auth_header()
        )
        assert refused.status_code == status, (data, refused.text)
        assert refused.json()["detail"][0]["field"] == field, refused.json()
    not_image = client.post(
        "/v1/feedback/upload",
        files={"file": ("f.txt", b"plain text", "text/plain")},
        data={"feedback": json.dumps(record)},
        headers=auth_header(),
    )
    assert not_image.status_code == 415
    no_file = client.post(
        "/v1/feedback/upload", files={"x": (None, "1")}, data={"feedback": json.dumps(record)}, headers=auth_header()
    )
    assert no_file.status_code == 400 and no_file.json()["error"] == "no_file"
    assert client.post("/v1/feedback/upload", json=record, headers=auth_header()).status_code == 415
    assert client.app.state.capture.counts()["kept"] == 2


def test_recent_and_frames_serve_what_detect_saw(client):
    red = _detect(client, RED)
    jpeg = encode(color_image(128, 128, squares=(("blue", 64, 64, 32),)), ".jpg")
    blue = _detect(client, jpeg)
    listed = client.get("/v1/recent", headers=auth_header())
    assert listed.status_code == 200
    detections = listed.json()["detections"]
    assert [d["id"] for d in detections] == [blue["id"], red["id"]]  # newest first
    newest = detections[0]
    assert newest["image"] == blue["image"] and newest["boxes"] == blue["boxes"]
    assert newest["model_version"] == "1.0.0" and newest["flagged"] is False and newest["reasons"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", newest["time"])
    assert set(newest) >= {"id", "time", "model_version", "image", "boxes", "flagged", "reasons"}
    assert [d["id"] for d in client.get("/v1/recent?limit=1", headers=auth_header()).json()["detections"]] == [
        blue["id"]
    ]
    assert client.get("/v1/recent?limit=0", headers=auth_header()).status_code == 422

    png = client.get(f"/v1/frames/{red['id']}", headers=auth_header())
    assert png.status_code == 200 and png.content == RED and png.headers["content-type"] == "image/png"
    served = client.get(f"/v1/frames/{blue['id']}", headers=auth_header())
    assert served.content == jpeg and served.headers["content-type"] == "image/jpeg"
    for missing in ("f" * 32, "not-an-id", "..%2F..%2Ffeedback.sqlite3"):
        gone = client.get(f"/v1/frames/{missing}", headers=auth_header())
        assert gone.status_code == 404 and gone.json()["error"] == "not_found", missing


def test_operator_endpoints_need_a_token_the_page_does_not(client):
    body = _detect(client)
    for path in ("/v1/recent", f"/v1/frames/{body['id']}"):
        response = client.get(path)
        assert response.status_code == 401 and response.json()["error"] == "token_missing", path
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    upload = client.post("/v1/feedback/upload", files={"file": ("f.png", RED, "image/png")})
    assert upload.status_code == 401
    page = client.get("/operator")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    for testid in ("token-input", "author-input", "detections", "frame-canvas", "false-positive", "missed-defect"):
        assert f'data-testid="{testid}"' in html
    assert "http://" not in html and "https://" not in html  # no CDN, no external fonts
    script = client.get("/operator/operator.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "pointerdown" in script.text and "Idempotency-Key" in script.text and "https://" not in script.text
    assert client.get("/operator/operator.css").status_code == 200
    assert client.get("/operator/settings.py").status_code == 404
    assert "alumi_edge_capture_dropped_frames 0.0" in client.get("/metrics").text


def test_size_bound_evicts_oldest_unflagged_frames_never_an_unsynced_flagged_one(edge_home):
    with _client(edge_home, capture_max_bytes=int(3.5 * len(RED))) as client:
        a = _detect(client)["id"]
        assert client.post("/v1/feedback", json=_feedback(a), headers=auth_header()).status_code == 201
        b, c, d, e = (_detect(client)["id"] for _ in range(4))
        store = _store(client)
        assert _frame_files(edge_home) == {a, d, e}  # 3 frames fit: the flagged one and the two newest
        assert store.get(b) is None and store.get(c) is None
        assert client.post("/v1/feedback", json=_feedback(b), headers=auth_header()).status_code == 422

        batch = store.next_batch("cam-2")
        assert batch.ids == (a,)
        store.mark_batch_synced(batch.name)
        assert _frame_files(edge_home) == {a, d, e}  # synced, and still within the bound
        f = _detect(client)["id"]
        _store(client)
        assert _frame_files(edge_home) == {d, e, f}  # now the synced frame is the oldest removable one
        assert store.counts()["bytes"] <= 3.5 * len(RED)


def test_flagged_frames_stay_even_beyond_the_bound(tmp_path):
    store = CaptureStore(tmp_path / "capture", max_bytes=150, recent_frames=10)
    try:
        prediction = {"boxes": [], "image": {"width": 1, "height": 1, "sha256": "x"}}
        ids = [f"{i:032x}" for i in range(4)]
        store.submit(Frame(ids[0], b"\x89PNG\r\n\x1a\n" + bytes(92), "1", dict(prediction)))
        store.flush()
        assert store.flag(ids[0])["flagged"]
        upload = store.keep_upload(bytes(100), model_version="1")
        for frame_id in ids[1:]:
            store.submit(Frame(frame_id, b"\x89PNG\r\n\x1a\n" + bytes(92), "1", dict(prediction)))
        store.flush()
        assert [r["id"] for r in store.recent(10)] == [upload["id"], ids[0]]  # each new frame was evicted at once
        assert store.counts() == {"frames": 2, "kept": 2, "flagged": 2, "unsynced": 2, "bytes": 200, "dropped": 0}
    finally:
        store.close()


def test_a_full_writer_queue_drops_frames_without_waiting(tmp_path, monkeypatch):
    store = CaptureStore(tmp_path / "capture", queue_size=1)
    release = threading.Event()
    written = []
    monkeypatch.setattr(store, "_write", lambda frame: (release.wait(10), written.append(frame.id)))
    prediction = {"boxes": [], "image": {}}
    try:
        results = [store.submit(Frame(f"{i:032x}", b"x", None, prediction)) for i in range(4)]
        assert results.count(False) >= 2 and store.dropped == results.count(False)
    finally:
        release.set()
        store.close()
    assert len(written) == results.count(True)


def test_capture_settings_from_the_environment(monkeypatch, tmp_path):
    from alumi_edge.settings import EdgeSettings

    monkeypatch.setenv("ALUMI_EDGE_HOME", str(tmp_path))
    monkeypatch.setenv("ALUMI_EDGE_CAPTURE_RARE_CLASSES", "crack, pit,,")
    monkeypatch.setenv("ALUMI_EDGE_CAPTURE_MAX_BYTES", "1000000")
    settings = EdgeSettings(auth="none")
    assert settings.capture is True and settings.capture_dir == tmp_path / "capture"
    assert settings.capture_rare_class_names == ("crack", "pit") and settings.capture_max_bytes == 1_000_000
    assert (settings.capture_recent_frames, settings.capture_per_hour_cap) == (200, 60)
    assert EdgeSettings(auth="none", capture_rare_classes=["a", "b"]).capture_rare_class_names == ("a", "b")
    with pytest.raises(ValueError, match="CAPTURE_UNCERTAIN_LOW"):
        EdgeSettings(auth="none", capture_uncertain_low=0.6, capture_uncertain_high=0.5)
    assert (settings.capture_uncertain_low, settings.capture_uncertain_high) == (0.25, 0.5)


def test_a_capture_store_that_cannot_be_opened_leaves_detection_running(edge_home, caplog):
    (edge_home / "capture").write_text("a file where the capture folder should be")
    with _client(edge_home) as client:
        assert client.app.state.capture is None
        assert re.fullmatch(r"[0-9a-f]{32}", _detect(client)["id"])
        assert client.get("/v1/recent", headers=auth_header()).json()["error"] == "capture_off"
    assert "capture is off" in caplog.text


def test_the_operator_files_are_package_data():
    import tomllib

    from edge_support import EDGE_SRC

    patterns = tomllib.loads((EDGE_SRC / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    static = EDGE_SRC / "alumi_edge" / "static"
    shipped = {p for pattern in patterns["alumi_edge"] for p in (EDGE_SRC / "alumi_edge").glob(pattern)}
    assert {"operator.html", "operator.js", "operator.css"} <= {p.name for p in static.iterdir()}
    assert set(static.iterdir()) <= shipped


def test_a_synced_prediction_log_left_behind_by_a_crash_is_removed_not_resent(tmp_path):
    from datetime import UTC, datetime

    from alumi_edge.capture import CaptureStore

    store = CaptureStore(tmp_path / "capture")
    try:
        old = store.logs_dir / "2026-11-01T08.jsonl"
        old.write_text('{"request_id": "a"}\n')
        now = datetime(2026, 11, 2, tzinfo=UTC)
        assert store.closed_prediction_logs(now) == [old]
        store.mark_log_synced(old)
        old.write_text('{"request_id": "a"}\n')  # as if killed between recording the sync and deleting the file
        assert store.closed_prediction_logs(now) == [] and not old.exists()
    finally:
        store.close()
