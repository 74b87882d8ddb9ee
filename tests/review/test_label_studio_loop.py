"""The review loop against a real Label Studio server: queue → project and tasks with the champion's boxes →
a reviewer's work through label-studio-sdk → review_sensor → QA corrections → gold."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import polars as pl
import pytest
from dagster import DagsterInstance, build_sensor_context
from label_studio_server import EMAIL, label_studio_python
from review_support import CLASSES, EDGE_REASONS

from alumi_pipelines.lib.vision.labelstudio import project_title
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.label_studio import LabelStudio

QUEUE_CONFIG = {"ops": {"review_queue": {"config": {"budget": 10, "confidence": 0.5, "max_boxes": 3}}}}


def review(server, actions: list[dict]) -> list[dict]:
    """The reviewer's actions, performed with label-studio-sdk in Label Studio's own environment."""
    plan = json.dumps({"url": server.url, "token": server.token, "actions": actions})
    done = subprocess.run(
        [str(label_studio_python()), str(Path(__file__).with_name("ls_reviewer.py"))],
        input=plan,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def sensor_tick(setup, label_studio, cursor=None):
    from alumi_pipelines.sensors.review import review_sensor

    context = build_sensor_context(
        instance=DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={"lake": setup.lake, "label_studio": label_studio, "pipeline_settings": setup.settings},
    )
    return review_sensor(context)


def expected_boxes(result: list[dict]) -> list[tuple]:
    """The normalised boxes a stored annotation means: (class, x_center, y_center, width, height)."""
    boxes = []
    for region in result:
        if region["type"] != "rectanglelabels":
            continue
        v = region["value"]
        boxes.append(
            (
                v["rectanglelabels"][0],
                (v["x"] + v["width"] / 2) / 100,
                (v["y"] + v["height"] / 2) / 100,
                v["width"] / 100,
                v["height"] / 100,
            )
        )
    return sorted(boxes)


def gold_boxes(lake, image_id: str) -> list[tuple] | None:
    """The image's boxes in the current gold dataset, or None when the image is not in it."""
    from alumi_pipelines.assets.gold import read_version

    manifest, labels = read_version(lake, lake.read_json(lake_keys.GOLD_POINTER)["prefix"])
    if image_id not in set(manifest["image_id"]):
        return None
    labels = labels.filter(pl.col("image_id") == image_id)
    return sorted(labels.select("class_name", "x_center", "y_center", "width", "height").rows())


def assert_same_boxes(actual, expected):
    assert actual is not None and len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert a[0] == e[0]
        assert a[1:] == pytest.approx(e[1:], abs=2e-4)


def label_studio_files(lake) -> list[str]:
    return sorted(f.key for f in lake.list_files(lake_keys.CORRECTIONS_INCOMING) if "label-studio" in f.key)


@pytest.fixture(scope="module")
def sent(label_studio_server, review_lake):
    """review_queue and label_studio_tasks materialised once: (the resource, their metadata)."""
    server = label_studio_server
    ls = LabelStudio(url=server.url, api_key=server.token, files_root=str(server.document_root))
    return ls, review_lake.materialize(["review_queue", "label_studio_tasks"], ls, QUEUE_CONFIG)


def test_queue_goes_out_with_pre_annotations_and_reviews_come_back_as_corrections(
    label_studio_server, review_lake, sent
):
    server, setup, lake = label_studio_server, review_lake, review_lake.lake
    ls, meta = sent

    # -- the queue and the project ----------------------------------------------------------------
    queue = lake.read_table(lake_keys.REVIEW_QUEUE).sort("rank")
    assert meta["review_queue"]["queued"].value == queue.height == 10
    assert meta["review_queue"]["model_version"].value == setup.champion
    reasons = dict(queue.select("image_id", "reason").rows())
    assert queue["reason"][0] == "flagged"  # what an operator flagged comes first
    # every edge frame is queued with the most telling reason it was kept for
    assert [reasons[i] for i in setup.edge_ids] == ["flagged", "uncertain", "uncertain", "random"]
    assert len(EDGE_REASONS) == len(setup.edge_ids)
    assert {"missed_boxes", "extra_boxes", "class_changes"} & set(reasons.values())  # disagreements with labels
    assert "| rank | image | reason |" in meta["review_queue"]["queue"].value

    tasks_meta = meta["label_studio_tasks"]
    pid = tasks_meta["project_id"].value
    assert (tasks_meta["project_action"].value, tasks_meta["imported"].value) == ("created", 10)
    project = next(p for p in ls.projects() if p["id"] == pid)
    assert project["title"] == project_title(CLASSES)
    assert all(f'<Label value="{name}"/>' in project["label_config"] for name in CLASSES)
    tasks = sorted(ls.tasks(pid), key=lambda t: t["id"])
    assert sorted(t["data"]["image_id"] for t in tasks) == sorted(reasons)
    for task in tasks:
        assert task["data"]["reason"] == reasons[task["data"]["image_id"]]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == setup.champion
        assert len(prediction["result"]) == 3 and all(r["score"] >= 0.5 for r in prediction["result"])
    # the server reaches the image through its local-files storage
    first = tasks[0]
    image = httpx.get(server.url + first["data"]["image"], headers=ls._auth_header(), timeout=30)
    assert image.status_code == 200
    assert image.content == lake.read_bytes(lake_keys.processed_image_key(first["data"]["image_id"]))

    # re-running imports nothing twice
    again = setup.materialize(["label_studio_tasks"], ls)["label_studio_tasks"]
    assert (again["imported"].value, again["already_in_project"].value, again["project_action"].value) == (
        0,
        10,
        "unchanged",
    )
    assert len(list(ls.tasks(pid))) == 10

    # -- a reviewer's work, through the SDK ---------------------------------------------------------
    t = [task["id"] for task in tasks]
    first_class = {task["id"]: task["predictions"][0]["result"][0]["value"]["rectanglelabels"][0] for task in tasks}
    other = next(c for c in CLASSES if c != first_class[t[4]])
    done = review(
        server,
        [
            {"op": "accept", "task": t[0]},
            {"op": "move", "task": t[1], "dx": 6.0},
            {"op": "delete", "task": t[2]},
            {"op": "add", "task": t[3], "label": "pit", "box": [10.0, 12.0, 20.0, 15.0]},
            {"op": "relabel", "task": t[4], "label": other},
            {"op": "skip", "task": t[5]},
            {"op": "no_defect", "task": t[6]},
        ],
    )
    image_of = {task["id"]: task["data"]["image_id"] for task in tasks}
    assert len(done) == 7

    tick = sensor_tick(setup, ls)
    assert len(label_studio_files(lake)) == 1
    assert "7 annotations of 7 tasks" in tick.skip_reason.skip_message
    applied = setup.materialize(["label_corrections", "gold_dataset"], ls)["label_corrections"]
    assert applied["rejected"].value == 0
    validated = lake.read_table(lake_keys.CORRECTIONS_VALIDATED).filter(pl.col("origin") == "label-studio")
    assert validated.height == 7
    assert set(validated["level"]) == {"qa"} and set(validated["author"]) == {EMAIL}
    assert set(validated["image_id"]) == {image_of[d["task"]] for d in done}
    assert all(
        f":{pid}:{d['task']}:{d['annotation']}@" in cid
        for d, cid in zip(done, sorted(validated["correction_id"], key=lambda c: int(c.split(":")[2])))
    )

    for entry in done:
        image_id = image_of[entry["task"]]
        if entry["op"] in ("skip", "no_defect"):
            assert gold_boxes(lake, image_id) == [], entry["op"]  # in gold, its boxes removed: defect-free
            continue
        assert_same_boxes(gold_boxes(lake, image_id), expected_boxes(entry["result"]))
    accepted = expected_boxes(done[0]["result"])
    predicted = expected_boxes([r for r in tasks[0]["predictions"][0]["result"]])
    assert [b[0] for b in accepted] == [b[0] for b in predicted]  # accepted unchanged: the champion's boxes
    assert len(expected_boxes(done[2]["result"])) == 2 and len(expected_boxes(done[3]["result"])) == 4
    assert other in {b[0] for b in expected_boxes(done[4]["result"])}  # the class change reached gold
    untouched = [image_of[i] for i in t[7:]]
    assert not set(untouched) & set(validated["image_id"])

    # -- a second pull changes nothing -------------------------------------------------------------
    before = lake.read_table(lake_keys.CORRECTIONS_VALIDATED)
    gold_before = lake.read_json(lake_keys.GOLD_POINTER)["dataset_hash"]
    tick2 = sensor_tick(setup, ls, tick.cursor)
    assert "no task" in tick2.skip_reason.skip_message and len(label_studio_files(lake)) == 1
    setup.materialize(["label_corrections", "gold_dataset"], ls)
    assert lake.read_table(lake_keys.CORRECTIONS_VALIDATED).equals(before)
    assert lake.read_json(lake_keys.GOLD_POINTER)["dataset_hash"] == gold_before

    # -- a task edited again: the newer annotation supersedes the earlier one ---------------------
    (edited,) = review(server, [{"op": "edit", "task": t[1], "annotation": done[1]["annotation"], "dx": 5.0}])
    tick3 = sensor_tick(setup, ls, tick2.cursor)
    assert len(label_studio_files(lake)) == 2 and "1 annotations of 1 tasks" in tick3.skip_reason.skip_message
    setup.materialize(["label_corrections", "gold_dataset"], ls)
    validated = lake.read_table(lake_keys.CORRECTIONS_VALIDATED).filter(pl.col("origin") == "label-studio")
    assert validated.height == 8  # both versions are kept; the newer one is applied last
    assert_same_boxes(gold_boxes(lake, image_of[t[1]]), expected_boxes(edited["result"]))
    assert expected_boxes(edited["result"]) != expected_boxes(done[1]["result"])


def test_the_task_view_shows_the_champions_boxes(label_studio_server, review_lake, sent, browser, tmp_path):
    """A reviewer opens an untouched task: the image, why it was queued, and the champion's boxes as regions."""
    import os
    import shutil

    from label_studio_server import PASSWORD

    server, (ls, meta) = label_studio_server, sent
    pid = meta["label_studio_tasks"]["project_id"].value
    task = max(ls.tasks(pid), key=lambda t: t["id"])  # the last task: no reviewer touches it
    assert not task["annotations"] and len(task["predictions"][0]["result"]) == 3
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{server.url}/user/login/")
    page.fill("input[name=email]", EMAIL)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
    page.goto(f"{server.url}/projects/{pid}/data?task={task['id']}")
    page.wait_for_selector("img", state="attached", timeout=90_000)
    page.wait_for_function(
        "w => [...document.images].some(i => i.complete && i.naturalWidth === w)",
        arg=task["data"]["width"],
        timeout=90_000,
    )
    page.get_by_text(task["data"]["detail"]).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)
    folder = tmp_path / "screenshots"
    folder.mkdir()
    page.screenshot(path=str(folder / "label-studio-task.png"), full_page=True)
    body = page.inner_text("body")
    assert task["data"]["reason"] in body
    assert all(name in body for name in CLASSES)  # the rectangle labels generated from the class map
    for region in task["predictions"][0]["result"]:  # each box in the regions list, with the model's score
        assert region["value"]["rectanglelabels"][0] in body and f"{region['score']:.2f}" in body
    extra = os.environ.get("ALUMI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "label-studio-task.png", Path(extra) / "label-studio-task.png")
