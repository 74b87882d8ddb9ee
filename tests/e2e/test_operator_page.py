"""The operator page on a tablet-sized screen: a real `alumi-edge serve` process with a pulled release, frames
posted to /v1/detect over HTTP, then headless Chromium (Debian's, driven by Playwright) picks a detection, flags a
box as a false positive, draws a missed defect and changes a box's class; the feedback queue and the capture store
on disk hold what the operator did.

Screenshots go to the test's tmp folder and, when ALUMI_SCREENSHOTS is set, to that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from edge_support import JWT_SECRET, ReleaseStore, color_image, encode, make_token  # noqa: E402

BIN = Path(sys.executable).parent
TABLET = {"width": 1024, "height": 768}
pytestmark = pytest.mark.browser

# 256 px frames: the test model (64 px input, 16 px cells) sees each 64 px square as one cell, so its boxes are exact
TARGET = color_image(256, 256, squares=(("red", 64, 64, 64), ("blue", 192, 128, 64)))
OTHERS = [color_image(256, 256, squares=(("green", 0, 0, 64),)), color_image(256, 256, squares=(("red", 128, 0, 64),))]
DRAWN = (20, 150, 60, 230)  # the missed defect the operator draws, image pixels
TOLERANCE_PX = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pulled_home(tmp_path: Path) -> Path:
    """A device home with test release 1.0.0 pulled (signed, verified)."""
    from alumi_edge.pull import pull
    from alumi_pipelines.lib.export.release import load_or_create_signing_key

    private_pem, public_pem = load_or_create_signing_key(tmp_path / "keys" / "release.key")
    store = ReleaseStore(tmp_path / "releases", private_pem, tmp_path / "work")
    store.root.mkdir()
    store.publish("1.0.0")
    home = tmp_path / "device"
    pull(str(store.root), home, public_pem)
    return home


def _start_server(home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`alumi-edge serve` on a free loopback port, capture on (the default), once it answers /readyz."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUMI_EDGE_")}
    env.update(
        ALUMI_EDGE_JWT_SECRET=JWT_SECRET,
        ALUMI_EDGE_RUNTIME="onnxruntime",
        ALUMI_EDGE_DEVICE="cpu",
        ALUMI_EDGE_DEVICE_ID="line1-cam2",
        ALUMI_EDGE_LOG_LEVEL="warning",
    )
    with log_path.open("a") as log:
        server = subprocess.Popen(
            [str(BIN / "alumi-edge"), "serve", "--home", str(home), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not ready after 60 s: {log_path.read_text()}"
        time.sleep(0.2)


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture
def edge_server(tmp_path):
    """`alumi-edge serve` on loopback with release 1.0.0 pulled, capture on (the default); (base url, home)."""
    home = _pulled_home(tmp_path)
    log_path = tmp_path / "serve.log"
    server, base = _start_server(home, log_path)
    try:
        yield base, home
    finally:
        _stop(server)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def _shot(page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    extra = os.environ.get("ALUMI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"{name}.png", Path(extra) / f"operator-{name}.png")


def _to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Image pixels of the shown 256×256 frame → page coordinates on the canvas."""
    box = page.get_by_test_id("frame-canvas").bounding_box()
    return box["x"] + x / 256 * box["width"], box["y"] + y / 256 * box["height"]


def _saved(page, text: str) -> None:
    status = page.get_by_test_id("status")
    status.filter(has_text=text).wait_for(timeout=15000)
    assert status.get_attribute("data-kind") == "ok", status.text_content()


def _records(home: Path) -> list[dict]:
    with sqlite3.connect(home / "feedback.sqlite3") as db:
        return [
            {**json.loads(record), "client_key": key}
            for record, key in db.execute("SELECT record, client_key FROM feedback ORDER BY seq")
        ]


def test_operator_flags_a_false_positive_draws_a_missed_defect_and_changes_a_class(tmp_path, browser, edge_server):
    base, home = edge_server
    token = make_token(expires_in=600)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        target = http.post("/v1/detect", content=encode(TARGET), headers={"Content-Type": "image/png"}).json()
        assert sorted((b["class_name"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in target["boxes"]) == [
            ("blue", 192, 128, 256, 192),
            ("red", 64, 64, 128, 128),
        ]
        red_index = [b["class_name"] for b in target["boxes"]].index("red")  # the page lists them in this order
        for image in OTHERS:
            assert http.post("/v1/detect", content=encode(image)).status_code == 200
    shots = tmp_path / "screenshots"
    shots.mkdir()

    context = browser.new_context(viewport=TABLET, has_touch=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/operator", wait_until="networkidle")

    # a wrong token: the API's own error message is shown
    page.get_by_test_id("token-input").fill("not-a-token")
    page.get_by_test_id("save-token").click()
    status = page.get_by_test_id("status")
    status.filter(has_text="token_invalid").wait_for(timeout=15000)
    assert status.get_attribute("data-kind") == "error"

    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("save-token").click()
    page.get_by_test_id("author-input").fill("Operator Seven")
    page.get_by_test_id("model-info").filter(has_text="1.0.0").wait_for(timeout=15000)
    items = page.get_by_test_id("detection-item")
    items.nth(2).wait_for(timeout=15000)
    assert items.count() == 3
    assert page.locator(f'[data-testid="detection-item"][data-id="{target["id"]}"]').count() == 1
    classes = page.get_by_test_id("class-select").locator("option").all_text_contents()
    assert classes == ["red", "green", "blue"]

    page.locator(f'[data-testid="detection-item"][data-id="{target["id"]}"]').click()
    page.locator('[data-testid="frame-canvas"][data-loaded="true"]').wait_for(timeout=15000)
    assert page.get_by_test_id("box-item").count() == 2
    canvas = page.get_by_test_id("frame-canvas").bounding_box()
    assert canvas["width"] > 300 and canvas["y"] + canvas["height"] <= TABLET["height"]  # fits the tablet screen
    for control in ("false-positive", "missed-defect", "change-class"):
        button = page.get_by_test_id(control).bounding_box()
        assert button["y"] + button["height"] <= TABLET["height"] and button["x"] + button["width"] <= TABLET["width"]
    _shot(page, shots, "1-detection")

    # (a) tap the red box, press "False positive"
    page.touchscreen.tap(*_to_screen(page, 96, 96))
    page.locator(f'[data-testid="box-item"][data-index="{red_index}"][aria-pressed="true"]').wait_for(timeout=5000)
    page.get_by_test_id("false-positive").click()
    _saved(page, "False positive saved")
    _shot(page, shots, "2-false-positive")

    # (b) drag a box where the model saw nothing, pick a class, press "Missed defect"
    x1, y1 = _to_screen(page, DRAWN[0], DRAWN[1])
    x2, y2 = _to_screen(page, DRAWN[2], DRAWN[3])
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=4)
    page.mouse.move(x2, y2, steps=4)
    page.mouse.up()
    page.get_by_test_id("class-select").select_option("green")
    _shot(page, shots, "3-drawn")
    page.get_by_test_id("missed-defect").click()
    _saved(page, "Missed defect saved")

    # (c) select the blue box, pick another class, press "Change class"
    page.mouse.click(*_to_screen(page, 224, 160))
    page.locator(f'[data-testid="box-item"][data-index="{1 - red_index}"][aria-pressed="true"]').wait_for(timeout=5000)
    assert page.get_by_test_id("class-select").input_value() == "blue"
    page.get_by_test_id("class-select").select_option("red")
    page.get_by_test_id("change-class").click()
    _saved(page, "Changed class saved")
    page.locator(f'[data-testid="detection-item"][data-id="{target["id"]}"] [data-testid="flagged-badge"]').wait_for(
        timeout=15000
    )
    _shot(page, shots, "4-saved")
    assert not errors, errors
    context.close()

    records = _records(home)
    assert [r["kind"] for r in records] == ["false_positive", "missed_defect", "corrected_box"]
    for record in records:
        assert record["detection_id"] == target["id"] and record["image_sha256"] == target["image"]["sha256"]
        assert record["author"] == "Operator Seven" and record["model_version"] == "1.0.0"
        assert record["token_subject"] == "operator-7" and record["device_id"] == "line1-cam2"
        assert record["client_key"]  # every post carried an Idempotency-Key
    false_positive, missed, corrected = records
    assert false_positive["class_name"] == "red"
    assert false_positive["box"] == {"x1": 64, "y1": 64, "x2": 128, "y2": 128}
    assert missed["class_name"] == "green"
    drawn = [missed["box"][k] for k in ("x1", "y1", "x2", "y2")]
    assert all(abs(got - want) <= TOLERANCE_PX for got, want in zip(drawn, DRAWN, strict=True)), drawn
    assert corrected["class_name"] == "red"
    assert corrected["original_box"] == corrected["box"] == {"x1": 192, "y1": 128, "x2": 256, "y2": 192}

    # the frame is kept (flagged, waiting for sync) in the capture store, and listed so
    with sqlite3.connect(home / "capture" / "capture.sqlite3") as db:
        kept, flagged, synced_at, reasons, ext = db.execute(
            "SELECT kept, flagged, synced_at, reasons, ext FROM frames WHERE id = ?", (target["id"],)
        ).fetchone()
    assert (kept, flagged, synced_at, json.loads(reasons)) == (1, 1, None, ["flagged"])
    assert (home / "capture" / "frames" / f"{target['id']}{ext}").read_bytes() == encode(TARGET)
    listed = httpx.get(f"{base}/v1/recent", headers={"Authorization": f"Bearer {token}"}).json()["detections"]
    assert [d["flagged"] for d in listed if d["id"] == target["id"]] == [True]
    assert sum(d["flagged"] for d in listed) == 1


# -- the whole loop: operator page → sync → landing and corrections sensors → ingestion → gold --------------------
LOOP_CLASSES = ["red", "green", "blue"]  # the test model's classes, also the lake's class map


def _land_base_batch(lake, batch: str, count: int = 18) -> None:
    """A labelled "alumi" batch of coloured squares (one square each, classes in turn) so gold has every class."""
    from alumi_pipelines.assets.raw import write_landing_file
    from alumi_pipelines.resources import lake_keys

    for i in range(count):
        name = LOOP_CLASSES[i % 3]
        x, y = 16 * (i % 8), 16 * ((i * 3) % 8)
        image = color_image(192, 192, squares=((name, x, y, 48),))
        stem = f"base-{i:02d}"
        write_landing_file(lake, batch, f"L1/C1/{stem}.png", encode(image))
        box = {
            "class_name": name,
            "x_center": (x + 24) / 192,
            "y_center": (y + 24) / 192,
            "width": 0.25,
            "height": 0.25,
        }
        sidecar = {
            "image": f"{stem}.png",
            "line_id": "L1",
            "camera_id": "C1",
            "captured_at": "2026-11-01T08:00:00Z",
            "width": 192,
            "height": 192,
            "boxes": [box],
        }
        write_landing_file(lake, batch, f"L1/C1/{stem}.json", json.dumps(sidecar).encode())
    marker = {"format": "alumi", "classes": LOOP_CLASSES}
    write_landing_file(lake, batch, lake_keys.BATCH_MARKER, json.dumps(marker).encode())


def _run_requests(tick) -> list:
    return list(getattr(tick, "run_requests", None) or [])


def test_flagged_frames_and_their_corrections_reach_the_next_gold_dataset(tmp_path, browser, edge_server):
    from dagster import DagsterInstance, build_sensor_context, materialize

    from alumi_pipelines.assets import corrections, gold, processed, raw
    from alumi_pipelines.partitions import landing_batches
    from alumi_pipelines.resources import lake_keys
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.sensors.corrections import corrections_sensor
    from alumi_pipelines.sensors.landing import landing_sensor

    base, home = edge_server
    lake = Lake(base_uri=str(tmp_path / "lake"))
    settings = PipelineSettings(classes=LOOP_CLASSES, image_size=256, workers=2, retrain_corrections=1000)
    resources = {"lake": lake, "pipeline_settings": settings}
    assets = [raw.raw_ingestion, processed.processing, corrections.label_corrections, gold.gold_dataset]
    instance = DagsterInstance.ephemeral()

    def ingest(batch: str) -> None:
        selection = ["raw_images", "raw_labels", "processed_images", "processed_labels"]
        result = materialize(assets, instance=instance, selection=selection, partition_key=batch, resources=resources)
        assert result.success

    def correct_and_build_gold():
        selection = ["label_corrections", "gold_dataset"]
        result = materialize(assets, instance=instance, selection=selection, resources=resources)
        assert result.success
        return lake.read_json(lake_keys.GOLD_POINTER)

    def landing_tick(cursor):
        tick = landing_sensor(build_sensor_context(instance=instance, cursor=cursor, resources=resources))
        for request in getattr(tick, "dynamic_partitions_requests", None) or []:
            instance.add_dynamic_partitions(landing_batches.name, list(request.partition_keys))
        return tick

    # the lake before: one labelled batch, ingested through the landing sensor's request, and its gold dataset
    _land_base_batch(lake, "base-1")
    tick = landing_tick(None)
    assert [r.partition_key for r in _run_requests(tick)] == ["base-1"]
    ingest("base-1")
    before = correct_and_build_gold()
    landing_cursor = tick.cursor

    # production: frames through /v1/detect; the operator flags the red box and draws a missed green defect
    token = make_token(expires_in=600)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        target = http.post("/v1/detect", content=encode(TARGET), headers={"Content-Type": "image/png"}).json()
        for image in OTHERS:
            assert http.post("/v1/detect", content=encode(image)).status_code == 200
    page = browser.new_context(viewport=TABLET, has_touch=True).new_page()
    page.goto(f"{base}/operator", wait_until="networkidle")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("save-token").click()
    page.get_by_test_id("author-input").fill("Operator Seven")
    page.locator(f'[data-testid="detection-item"][data-id="{target["id"]}"]').click()
    page.locator('[data-testid="frame-canvas"][data-loaded="true"]').wait_for(timeout=15000)
    page.touchscreen.tap(*_to_screen(page, 96, 96))
    page.locator('[data-testid="box-item"][aria-pressed="true"]').wait_for(timeout=5000)
    page.get_by_test_id("false-positive").click()
    _saved(page, "False positive saved")
    x1, y1 = _to_screen(page, DRAWN[0], DRAWN[1])
    x2, y2 = _to_screen(page, DRAWN[2], DRAWN[3])
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move(x2, y2, steps=6)
    page.mouse.up()
    page.get_by_test_id("class-select").select_option("green")
    page.get_by_test_id("missed-defect").click()
    _saved(page, "Missed defect saved")

    # the device syncs: feedback, the flagged frame as a landing batch, (no closed prediction hour yet)
    sync = [str(BIN / "alumi-edge"), "sync", "--home", str(home), "--target", lake.base_uri]
    sync_env = {**os.environ, "ALUMI_EDGE_DEVICE_ID": "line1-cam2"}  # as the device's service sets it
    out = subprocess.run(sync, capture_output=True, text=True, timeout=300, env=sync_env)
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["records"] == 2 and summary["frames"] == 1 and len(summary["batches"]) == 1
    files_after_sync = sorted((f.key, f.size) for f in lake.list_files(lake_keys.LANDING)) + sorted(
        (f.key, f.size) for f in lake.list_files(lake_keys.CORRECTIONS_INCOMING)
    )

    # the landing sensor sees the edge batch; its ingestion takes the frame in, unlabelled
    edge_tick = landing_tick(landing_cursor)
    (request,) = _run_requests(edge_tick)
    edge_batch = request.partition_key
    assert edge_batch.startswith("edge-line1-cam2-")
    ingest(edge_batch)
    manifest = lake.read_table(lake_keys.raw_manifest_key(edge_batch))
    assert manifest["image_id"].to_list() == [target["image"]["sha256"]]
    assert manifest["labelled"].to_list() == [False]

    # the corrections sensor asks for corrections_job; both corrections are applied, and gold changes
    tick = corrections_sensor(build_sensor_context(instance=instance, resources=resources))
    assert [r.job_name for r in _run_requests(tick)] == ["corrections_job"]
    after = correct_and_build_gold()
    assert after["dataset_hash"] != before["dataset_hash"]
    changes = lake.read_table(lake_keys.CORRECTIONS_CHANGES)
    mine = changes.filter(changes["image_id"] == target["image"]["sha256"])
    assert sorted(mine["action"].to_list()) == ["add", "remove"]
    assert dict(zip(mine["action"].to_list(), mine["result"].to_list(), strict=True)) == {
        "add": "applied",
        "remove": "no_match",  # the lake never held the model's false box: nothing to remove, and none enters gold
    }
    labels = gold.read_version(lake, after["prefix"])[1]
    frame = labels.filter(labels["image_id"] == target["image"]["sha256"])
    assert frame["class_name"].to_list() == ["green"]
    (row,) = frame.iter_rows(named=True)
    drawn_center = ((DRAWN[0] + DRAWN[2]) / 2 / 256, (DRAWN[1] + DRAWN[3]) / 2 / 256)
    assert abs(row["x_center"] - drawn_center[0]) <= TOLERANCE_PX / 256
    assert abs(row["y_center"] - drawn_center[1]) <= TOLERANCE_PX / 256

    # a second sync sends nothing; applying the same corrections again leaves gold as it is
    again = subprocess.run(sync, capture_output=True, text=True, timeout=300, env=sync_env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (
        sorted((f.key, f.size) for f in lake.list_files(lake_keys.LANDING))
        + sorted((f.key, f.size) for f in lake.list_files(lake_keys.CORRECTIONS_INCOMING))
        == files_after_sync
    )
    assert _run_requests(landing_tick(edge_tick.cursor)) == []
    assert correct_and_build_gold()["dataset_hash"] == after["dataset_hash"]


def test_a_server_killed_while_capturing_loses_no_flagged_frame_and_syncs_it_once(tmp_path):
    """kill -9 of `alumi-edge serve` while frames stream in: after a restart the store is consistent (every row has
    its file, the flagged frame is kept), and sync delivers that frame exactly once."""
    import threading

    from alumi_edge.capture import CaptureStore, read_prediction_log
    from alumi_pipelines.resources import lake_keys
    from alumi_pipelines.resources.lake import Lake

    home = _pulled_home(tmp_path)
    log_path = tmp_path / "serve.log"
    server, base = _start_server(home, log_path)
    token = make_token(expires_in=600)
    auth = {"Authorization": f"Bearer {token}"}
    flagged = httpx.post(f"{base}/v1/detect", content=encode(TARGET), headers=auth, timeout=30).json()
    red = next(b for b in flagged["boxes"] if b["class_name"] == "red")
    feedback = {
        "kind": "false_positive",
        "detection_id": flagged["id"],
        "class_name": "red",
        "author": "op-7",
        "box": {k: red[k] for k in ("x1", "y1", "x2", "y2")},
    }
    assert httpx.post(f"{base}/v1/feedback", json=feedback, headers=auth, timeout=30).status_code == 201

    stop, answered = threading.Event(), []

    def stream() -> None:  # frames keep arriving until the process dies
        with httpx.Client(base_url=base, headers=auth, timeout=5) as http:
            i = 0
            while not stop.is_set():
                image = color_image(256, 256, squares=(("green", (i * 16) % 192, 32, 64),))
                try:
                    answered.append(http.post("/v1/detect", content=encode(image)).json()["id"])
                except (httpx.TransportError, ValueError):
                    return
                i += 1

    streamer = threading.Thread(target=stream)
    streamer.start()
    deadline = time.monotonic() + 30
    while len(answered) < 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # SIGKILL: no lifespan shutdown, the capture writer dies mid-queue
    server.wait()
    stop.set()
    streamer.join(timeout=30)
    assert len(answered) >= 15

    # restarted: the store opens cleanly and holds the flagged frame; every row has its file
    server, base = _start_server(home, log_path)
    try:
        recent = httpx.get(f"{base}/v1/recent?limit=500", headers=auth, timeout=30).json()["detections"]
        assert [d["id"] for d in recent if d["flagged"]] == [flagged["id"]]
    finally:
        _stop(server)
    store = CaptureStore(home / "capture")
    try:
        with sqlite3.connect(home / "capture" / "capture.sqlite3") as db:
            rows = db.execute("SELECT id, ext FROM frames").fetchall()
        assert rows and all((home / "capture" / "frames" / f"{i}{e}").is_file() for i, e in rows)
        assert {p.name for p in (home / "capture" / "frames").iterdir()} == {f"{i}{e}" for i, e in rows}
        logged = [r for p in sorted((home / "capture" / "predictions").glob("*.jsonl")) for r in read_prediction_log(p)]
        assert flagged["id"] in {r["request_id"] for r in logged}
    finally:
        store.close()

    # sync delivers the flagged frame and its feedback once; a second sync adds nothing
    lake = Lake(base_uri=str(tmp_path / "lake"))
    (tmp_path / "lake").mkdir()
    sync = [str(BIN / "alumi-edge"), "sync", "--home", str(home), "--target", lake.base_uri, "--no-predictions"]
    env = {**os.environ, "ALUMI_EDGE_DEVICE_ID": "line1-cam2"}
    first = subprocess.run(sync, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    images = [f.key for f in lake.list_files(lake_keys.LANDING) if f.key.endswith(".png")]
    names = [k.rsplit("/", 1)[1] for k in images]
    with sqlite3.connect(home / "capture" / "capture.sqlite3") as db:
        kept = {f"{i}.png" for (i,) in db.execute("SELECT id FROM frames WHERE kept = 1")}
    assert len(names) == len(set(names)) and set(names) == kept and f"{flagged['id']}.png" in kept
    listing = sorted((f.key, f.size) for f in lake.list_files(lake_keys.LANDING))
    incoming = lake.list_files(lake_keys.CORRECTIONS_INCOMING)
    assert sum(len(lake.read_bytes(f.key).splitlines()) for f in incoming) == 1
    again = subprocess.run(sync, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted((f.key, f.size) for f in lake.list_files(lake_keys.LANDING)) == listing
    assert len(lake.list_files(lake_keys.CORRECTIONS_INCOMING)) == len(incoming)
