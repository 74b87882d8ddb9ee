"""The lake's class map comes from the data: the first import that names classes writes it, a later import that
names others is refused before anything is copied (saying how to resolve it), ALUMI_CLASSES overrides it, and a
gold check that fails says why in `dagster job execute`'s own output."""

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_helpers import BIN, run

from alumi_pipelines.settings import resolve_classes


def write_voc(root: Path, classes_per_image: list[list[str]]) -> Path:
    root.mkdir(parents=True)
    for i, names in enumerate(classes_per_image):
        cv2.imwrite(str(root / f"img{i}.jpg"), np.full((96, 128, 3), 90 + 5 * i, np.uint8))
        objects = "".join(
            f"<object><name>{n}</name><bndbox><xmin>{10 + 20 * k}</xmin><ymin>10</ymin>"
            f"<xmax>{25 + 20 * k}</xmax><ymax>40</ymax></bndbox></object>"
            for k, n in enumerate(names)
        )
        (root / f"img{i}.xml").write_text(
            f"<annotation><filename>img{i}.jpg</filename><size><width>128</width><height>96</height>"
            f"<depth>3</depth></size>{objects}</annotation>"
        )
    return root


def alumi(args, env):
    return subprocess.run([str(BIN / "alumi"), *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


def test_the_first_import_sets_the_class_map_and_a_disagreeing_one_is_refused(cli_env, tmp_path):
    lake = Path(cli_env["ALUMI_HOME"]) / "lake"
    steel = write_voc(tmp_path / "steel", [["Crazing"], ["crazing", "Rolled-in scale"], ["patches"]])
    out = run([BIN / "alumi", "import", steel, "--format", "voc", "--batch", "steel-1"], cli_env).stdout
    assert "the lake's class map is now Crazing, Rolled-in scale, patches (from this dataset)" in out
    assert json.loads((lake / "meta" / "classes.json").read_text())["classes"] == [
        "Crazing",
        "Rolled-in scale",
        "patches",
    ]
    listed = run([BIN / "alumi", "classes"], cli_env).stdout.splitlines()
    assert listed == ["0\tCrazing", "1\tRolled-in scale", "2\tpatches"]

    # names that match up to case, spaces and underscores are the same classes
    same = write_voc(tmp_path / "same", [["rolled_in_scale", "PATCHES"]])
    out = run([BIN / "alumi", "import", same, "--format", "voc", "--batch", "steel-2"], cli_env).stdout
    assert "classes: all 2 in the lake's class map" in out

    # a new class: refused before anything is copied, naming it and the ways out
    more = write_voc(tmp_path / "more", [["inclusion"], ["crazing"]])
    refused = alumi(["import", more, "--format", "voc", "--batch", "steel-3"], cli_env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == (
        "alumi import: the dataset names inclusion, which the lake's class map (Crazing, Rolled-in scale, patches) "
        "does not have: run again with --extend-classes to add them, rename them in the dataset to the lake's "
        "names (YOLO: --classes with the lake's names), or start a new lake (ALUMI_HOME)"
    )
    assert not (lake / "landing" / "steel-3").exists()
    out = run([BIN / "alumi", "import", more, "--format", "voc", "--batch", "steel-3", "--extend-classes"], cli_env)
    assert "the lake's class map gained inclusion" in out.stdout
    assert run([BIN / "alumi", "classes"], cli_env).stdout.splitlines()[-1] == "3\tinclusion"

    # ALUMI_CLASSES overrides the lake's map, and is checked the same way
    forced = alumi(["import", more, "--format", "voc", "--batch", "x"], {**cli_env, "ALUMI_CLASSES": "crazing,dent"})
    assert forced.returncode == 2 and "which ALUMI_CLASSES (crazing, dent) does not have" in forced.stderr

    # YOLO ids without names cannot be checked: the import asks for them
    yolo = tmp_path / "yolo"
    (yolo / "labels").mkdir(parents=True)
    (yolo / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    cv2.imwrite(str(yolo / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    nameless = alumi(["import", yolo, "--format", "yolo"], cli_env)
    assert (
        nameless.returncode == 2
        and "the dataset names no classes" in nameless.stderr
        and "--classes" in nameless.stderr
    )

    # the class map cannot be rewritten under existing labels, only extended
    changed = alumi(["classes", "--set", "patches,crazing"], cli_env)
    assert changed.returncode == 2 and "would change the ids of the lake's classes" in changed.stderr


def test_a_failing_gold_check_says_which_classes_in_the_job_output(cli_env, tmp_path):
    data = write_voc(tmp_path / "d", [["crazing"]] * 12 + [["patches"]] * 12)
    run([BIN / "alumi", "import", data, "--format", "voc"], cli_env)
    run([BIN / "alumi", "classes", "--add", "pitting"], cli_env)  # a class no image shows
    tags = run([BIN / "alumi", "batches", "--tags"], cli_env).stdout.strip()
    job = ["dagster", "job", "execute", "-m", "alumi_pipelines.definitions"]
    run([BIN / job[0], *job[1:], "-j", "ingestion_job", "--tags", tags], cli_env)
    proc = subprocess.run(
        [str(BIN / job[0]), *job[1:], "-j", "retraining_job"], env=cli_env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert (
        "blocking check splits_cover_classes failed: no training boxes for pitting (classes crazing, patches, pitting)"
        in output
    )
    assert "detector_model" not in [line.split(" - ")[-2] for line in output.splitlines() if "STEP_START" in line]


def test_class_names_come_from_the_override_then_the_lake_then_the_default(tmp_path):
    lake = tmp_path / "lake"
    assert resolve_classes("", str(lake))[1] == "the default (synthetic) classes"
    (lake / "meta").mkdir(parents=True)
    (lake / "meta" / "classes.json").write_text(json.dumps({"classes": ["oil spot", "pit"], "source": "t"}))
    assert resolve_classes("", str(lake)) == (("oil spot", "pit"), "the lake's class map")
    assert resolve_classes("a,b", str(lake)) == (("a", "b"), "ALUMI_CLASSES")
    assert resolve_classes("", "abfs://c@a.dfs.core.windows.net/lake")[1] == "the default (synthetic) classes"
    (lake / "meta" / "classes.json").write_text(json.dumps({"classes": ["pit", "pit"]}))
    with pytest.raises(ValueError, match=r"classes.json: 'classes' must be a list of distinct names; fix it with"):
        resolve_classes("", str(lake))
