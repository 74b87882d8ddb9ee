"""Run a backfill the way a deployment does: `alumi batches --backfill`, then `dagster-daemon run` until it is done.

Used by test_backfill_fanout.py and benchmarks/bench_backfill_fanout.py. The daemon loads the code location of
workspace.yaml in a gRPC server of its own; with the default run launcher every run is a process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _default_signals() -> None:
    # a process started from a script can inherit SIGINT as ignored; the daemon must stop on SIGTERM / SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def submit_backfill(env: dict[str, str]) -> str:
    """`alumi batches --backfill` as a user runs it; returns the backfill id it printed."""
    proc = subprocess.run(
        [BIN / "alumi", "batches", "--backfill"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise AssertionError(f"alumi batches --backfill exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("backfill "), line
    return line.split()[1].rstrip(":")


class Daemon:
    """`dagster-daemon run` on the repository's workspace.yaml, in a process group of its own."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None
        self.cpu_seconds = 0.0  # user + system CPU of the daemon and every process it waited for, after stop()

    def start(self) -> Daemon:
        handle = self.log.open("w")
        self.process = subprocess.Popen(
            [BIN / "dagster-daemon", "run", "-w", str(REPO / "workspace.yaml")],
            env=self.env,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,
        )
        handle.close()
        return self

    def stop(self) -> None:
        """SIGTERM to its process group (the daemon, its code server, any run left), SIGKILL after 60 s. The
        daemon is reaped here with wait4, which gives the CPU of its whole tree (every process reaped below it)."""
        if self.process is None:
            return
        pid = self.process.pid
        if self.process.returncode is None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while True:
                done, status, usage = os.wait4(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.killpg(pid, signal.SIGKILL)
                    done, status, usage = os.wait4(pid, 0)
                    break
                time.sleep(0.2)
            self.process.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.process = None

    def exited(self) -> int | None:
        """The daemon's exit code if it ended on its own, else None (it is left for stop() to reap)."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        done, status, usage = os.wait4(self.process.pid, os.WNOHANG)
        if not done:
            return None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        return self.process.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class BackfillRun:
    run_id: str
    status: str
    start: float
    end: float
    partitions: tuple[str, ...]


def wait_for_backfill(instance, backfill_id: str, daemon: Daemon, timeout_s: float) -> str:
    """Poll until the backfill reaches a terminal status; returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        backfill = instance.get_backfill(backfill_id)
        if backfill is not None and backfill.status.value in TERMINAL:
            return backfill.status.value
        code = daemon.exited()
        if code is not None:
            raise AssertionError(f"dagster-daemon exited {code}:\n{daemon.tail()}")
        time.sleep(1.0)
    raise AssertionError(f"backfill {backfill_id} not done after {timeout_s:.0f} s:\n{daemon.tail()}")


def backfill_runs(instance, backfill_id: str, partitions_def_name: str) -> list[BackfillRun]:
    """Every run of the backfill with its status, start and end time and the partitions it covered."""
    from dagster import RunsFilter

    keys = instance.get_dynamic_partitions(partitions_def_name)
    runs = []
    for record in instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id})):
        tags = record.dagster_run.tags
        if "dagster/partition" in tags:
            covered = (tags["dagster/partition"],)
        else:
            first = keys.index(tags["dagster/asset_partition_range_start"])
            last = keys.index(tags["dagster/asset_partition_range_end"])
            covered = tuple(keys[first : last + 1])
        runs.append(
            BackfillRun(
                record.dagster_run.run_id,
                record.dagster_run.status.value,
                record.start_time or 0.0,
                record.end_time or 0.0,
                covered,
            )
        )
    return sorted(runs, key=lambda r: r.start)


def most_at_once(runs: list[BackfillRun]) -> int:
    """The largest number of runs whose [start, end] intervals overlap at one instant."""
    events = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs], key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
