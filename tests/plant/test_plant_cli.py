"""plant_risk_job through the `dagster job execute` CLI, as CI runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plant_support import start_day

from alumi_pipelines.assets.plant.sensor_raw import landing_days, plant_days_tags, write_plant_demo
from alumi_pipelines.resources import lake_keys

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFS = Path(__file__).resolve().parent / "plant_defs.py"


@pytest.fixture
def cli_env(tmp_path, mlflow_template_db):
    """A fresh ALUMI_HOME and DAGSTER_HOME (the repo's dagster.yaml), MLflow schema already in place."""
    home = tmp_path / "alumi"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    (home / "mlflow").mkdir()
    shutil.copyfile(mlflow_template_db, home / "mlflow" / "mlflow.db")
    return {
        **os.environ,
        "ALUMI_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ALUMI_PROFILE": "ci",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _execute(env, tags: dict, config_dir: Path) -> subprocess.CompletedProcess:
    """Run the job in one process (each step of the default executor would re-import the code location)."""
    config = config_dir / "in_process.yaml"
    config.write_text("execution:\n  config:\n    in_process: {}\n")
    cmd = [
        BIN / "dagster",
        "job",
        "execute",
        "-f",
        DEFS,
        "-j",
        "plant_risk_job",
        "--tags",
        json.dumps(tags),
        "-c",
        config,
    ]
    return subprocess.run([str(c) for c in cmd], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_plant_risk_job_cli_runs_the_whole_branch(cli_env, tmp_path):
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(Path(cli_env["ALUMI_HOME"]) / "lake"))
    write_plant_demo(lake, start_day(5), 5, 60, seed=2)
    proc = _execute(cli_env, plant_days_tags(lake), tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "RUN_SUCCESS" in output
    assert "Asset check 'risk_promotion_gate' on 'defect_risk_evaluation' passed" in output
    pointer = lake.read_json(lake_keys.RISK_CHAMPION_POINTER)
    assert pointer["version"] == "1" and pointer["model_name"] == "alumi-defect-risk"
    assert json.loads(lake.read_bytes(lake_keys.RISK_CHAMPION_KEY))["info"]["registry"]["version"] == "1"
    assert set(lake.read_json(lake_keys.PLANT_DRIFT_LATEST)) >= {"report_id", "passed", "drift_share"}
    assert lake.read_table(lake_keys.RISK_DATASET_KEY).height == 5 * 60


def test_plant_risk_job_cli_exits_non_zero_when_a_stage_fails(cli_env, tmp_path):
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(Path(cli_env["ALUMI_HOME"]) / "lake"))
    write_plant_demo(lake, start_day(2), 2, 12, seed=2)  # two days: too few for a train/val/test split
    proc = _execute(cli_env, plant_days_tags(lake), tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "time_split: 2 day(s) of data, need at least val_days + test_days + 1 = 3" in output
    assert lake.exists(lake_keys.plant_features_key(landing_days(lake)[1]))  # the stages before it ran
