"""The run launcher of a one-host instance: Dagster's default launcher, plus a health check of each run's worker.

Dagster's run monitoring (``run_monitoring`` in dagster.yaml, run by ``dagster-daemon``) asks the run launcher
whether the process executing a ``STARTED`` run is still alive; the default launcher cannot answer, so a run whose
worker was killed (SIGKILL, the OOM killer, a lost machine) stayed ``STARTED`` for ever and kept its slot in the
run queue's tag limits (``alumi/training``: one at a time), and every later training run waited behind it.

:class:`LocalRunLauncher` answers from the instance's own event log: the process that emitted the run's latest
``RUN_START`` event executes the run, whether the daemon launched it (``dagster api execute_run`` under the code
server) or a user ran ``dagster job execute`` in a shell. When that process no longer exists (or its pid now
belongs to a process started after the run), the worker is reported ``FAILED`` and run monitoring marks the run
failed within one ``poll_interval_seconds``; run retries then apply as for any failed run.

It assumes run workers run on the daemon's host, as on the one-machine instance of ``dagster.yaml`` and the shared
host of ``deploy/dagster.postgres.yaml``; on Kubernetes the K8sRunLauncher checks its pods itself.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

_CLOCK_SLACK_S = 2.0  # a RUN_START timestamp and /proc start times are measured on different clocks


def process_started_at(pid: int) -> float | None:
    """Epoch seconds a process started at (Linux /proc), None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, after the command name
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def worker_alive(pid: int, started_before: float) -> bool:
    """Whether process ``pid`` exists and is the one that was running at ``started_before`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    started = process_started_at(pid)
    return started is None or started <= started_before + _CLOCK_SLACK_S


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers run monitoring can check (see the module docstring)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        starts = self._instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_START)
        latest = max(starts, key=lambda entry: entry.timestamp, default=None)
        pid = latest.dagster_event.pid if latest is not None and latest.dagster_event is not None else None
        if pid is None:  # not started yet (or an event without a pid): nothing to judge
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker not known yet")
        if worker_alive(pid, latest.timestamp):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is alive", run_worker_id=str(pid))
        age = time.time() - latest.timestamp
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} (started the run {age:.0f} s ago) is gone: killed or crashed",
            run_worker_id=str(pid),
        )
