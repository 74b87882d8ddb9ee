"""The cpu profile learns: a few CPU minutes of ``training_job`` on generated defects reach a test mAP50 floor.

The ``ci`` profile proves the path runs (2 epochs at 64 px score about 0); this proves the model the pipeline
trains with its real defaults is worth shipping. Marked slow: about 5 minutes on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gold_factory import write_tiny_gold

REPO = Path(__file__).resolve().parents[2]
MINUTES = 3.0
# Measured on two cores: test mAP50 0.9+ after 3 minutes; the floor leaves room for a slower machine.
FLOOR_MAP50 = 0.5


@pytest.mark.slow
def test_three_cpu_minutes_of_the_cpu_profile_learn_generated_defects(tmp_path):
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALUMI_", "DAGSTER_"))},
        "ALUMI_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ALUMI_PROFILE": "cpu",
        "ALUMI_CLASSES": "scratch,dent,pit",
        "ALUMI_GATE_FLOOR": "0",
        "MPLBACKEND": "Agg",
    }
    (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(home / "lake"))
    pointer = write_tiny_gold(lake, n_images=240, size=160, split_sizes=(180, 30, 30), seed=7, layout="manifest")
    config = tmp_path / "run.yaml"
    config.write_text(f"ops:\n  detector_model:\n    config:\n      max_minutes: {MINUTES}\n")
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "alumi_pipelines.definitions"]
        + ["-j", "training_job", "-c", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.settings import Settings

    old = dict(os.environ)
    os.environ.update(env)
    try:
        registry = MlflowRegistry.from_settings(Settings.from_env())
        version = registry.version(registry.alias_version("champion"))
        params = registry.client().get_run(version.run_id).data.params
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert version.tags["dataset_hash"] == pointer["dataset_hash"]
    # the data-aware choices: 160 px images train at 160 px, on every core
    assert version.tags["imgsz"] == "160"
    assert params["auto/imgsz"].startswith("median long side 160 px")
    assert int(params["cpu_threads"]) == len(os.sched_getaffinity(0))
    assert version.tags["started_from"] == "scratch (no champion yet)"
    assert int(version.tags["epochs_run"]) >= 5
    test_map50 = float(version.tags["metrics.test.mAP50"])
    print(f"cpu profile, {MINUTES} min: {version.tags['epochs_run']} epochs, test mAP50 {test_map50:.3f}")
    assert test_map50 >= FLOOR_MAP50, f"test mAP50 {test_map50:.3f} after {MINUTES} CPU minutes"
