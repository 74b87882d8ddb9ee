"""A killed run ends as failed: a real dagster-daemon with the repository's dagster.yaml frees the training slot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

JOBS = """
import time
from dagster import Definitions, job, op


@op
def sleep_long():
    time.sleep(600)


@op
def finish_quickly():
    return 1


@job(tags={"alumi/training": "true"})
def long_training():
    sleep_long()


@job(tags={"alumi/training": "true"})
def quick_training():
    finish_quickly()


defs = Definitions(jobs=[long_training, quick_training])
"""


def _instance_config() -> dict:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_launcher"] == {"module": "alumi_pipelines.run_launcher", "class": "LocalRunLauncher"}
    assert config["run_monitoring"]["poll_interval_seconds"] <= 60  # a killed run is failed within a minute
    config["run_monitoring"]["poll_interval_seconds"] = 2  # faster here; the rest as shipped
    return config


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    def restore_signals():  # a process started from a test inherits SIGINT as ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=restore_signals
        )


def _wait(what: str, predicate, timeout: float, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def _stop(process: subprocess.Popen) -> None:
    """Stop a process this test started, and everything in its session (an orphaned step worker too)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_a_killed_dagster_job_execute_ends_failed_and_a_queued_training_run_then_starts(tmp_path, monkeypatch):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the instance's storage is read from it
    (home / "dagster.yaml").write_text(yaml.safe_dump(_instance_config(), sort_keys=False))
    jobs = tmp_path / "jobs.py"
    jobs.write_text(JOBS)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'edge_export'}",
        "PYTHONWARNINGS": "ignore",
    }
    logs = [tmp_path / "execute.log", tmp_path / "launch.log", tmp_path / "daemon.log"]
    started: list[subprocess.Popen] = []
    instance = DagsterInstance.from_config(str(home))  # creates the storage before any other process opens it
    assert instance.get_runs() == []
    try:
        # 1. a training run executing in a shell, then killed from outside (SIGKILL: no chance to report anything)
        execute = _start(
            [str(BIN / "dagster"), "job", "execute", "-f", str(jobs), "-j", "long_training"]
            + ["--tags", json.dumps({"dagster/max_retries": "0"})],
            env,
            logs[0],
        )
        started.append(execute)

        def long_run_sleeping():
            runs = instance.get_runs(RunsFilter(job_name="long_training", statuses=[DagsterRunStatus.STARTED]))
            if runs and any("STEP_START" in line for line in logs[0].read_text(errors="replace").splitlines()):
                return runs[0]
            return None

        killed = _wait("the long training run to start its step", long_run_sleeping, 120, logs)
        os.kill(execute.pid, signal.SIGKILL)
        execute.wait()
        assert instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.STARTED  # what nobody else fixes

        # 2. the next training run is queued behind it (the alumi/training limit is 1)
        launch = subprocess.run(
            [str(BIN / "dagster"), "job", "launch", "-f", str(jobs), "-j", "quick_training"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert launch.returncode == 0, launch.stderr[-3000:]
        [queued] = instance.get_runs(RunsFilter(job_name="quick_training"))
        assert queued.status == DagsterRunStatus.QUEUED

        # 3. the daemon's run monitoring finds the dead worker, fails the run, and the queue moves on
        daemon = _start([str(BIN / "dagster-daemon"), "run", "-f", str(jobs)], env, logs[2])
        started.append(daemon)
        _wait(
            "the killed run to be marked failed",
            lambda: instance.get_run_by_id(killed.run_id).status == DagsterRunStatus.FAILURE,
            120,
            logs,
        )
        _wait(
            "the queued training run to succeed",
            lambda: instance.get_run_by_id(queued.run_id).status == DagsterRunStatus.SUCCESS,
            180,
            logs,
        )
        failure = instance.get_run_record_by_id(killed.run_id)
        success = instance.get_run_record_by_id(queued.run_id)
        assert failure.end_time is not None and success.start_time >= failure.end_time
        messages = [e.message for e in instance.all_logs(killed.run_id) if e.message]
        assert any(f"run worker process {execute.pid}" in m and "is gone" in m for m in messages), messages[-5:]
    finally:
        for process in reversed(started):
            _stop(process)
