"""An ingestion backfill fanned out into several runs vs the same batches in one run: wall time and total CPU.

Every case gets a fresh lake (local folder) holding the same landing batches and a fresh Dagster instance from
the repository's dagster.yaml (SQLite, QueuedRunCoordinator: three backfill runs at a time, default run
launcher: one process per run, as one pod per run on Kubernetes):

- one run: `dagster job execute -j ingestion_job --tags "$(alumi batches --tags)"`, the CI way (the baseline);
- backfill, 1 run: `alumi batches --backfill` with ALUMI_BACKFILL_PARTITIONS_PER_RUN = the batch count, then
  `dagster-daemon run` until the backfill is done: the daemon route with no fan-out;
- backfill, fan-out: the same with the default (3 batches per run): 12 batches → 4 runs, 3 at once.

Wall time is from the command (or the daemon's start) to the end of the last run; "to done" adds the daemon's
bookkeeping until it marks the backfill complete (its loop runs every 30 s). CPU is user + system time of the
whole process tree: this process is made a child subreaper, so every descendant (the daemon, its code server,
each run and step process) is reaped here or below and counted by `getrusage(RUSAGE_CHILDREN)`; the daemon's
own polling is in the backfill rows. On a 2-core machine the runs compete for the
same cores; on a cluster each run is a pod with cores of its own.

    .venv/bin/python benchmarks/bench_backfill_fanout.py                     # 12 batches of 48 images, 640 px
    .venv/bin/python benchmarks/bench_backfill_fanout.py --batches 24 --images 24
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "postgres"))

from backfill_daemon import BIN, Daemon, backfill_runs, most_at_once, submit_backfill, wait_for_backfill  # noqa: E402


def land(lake_dir: Path, batches: list[str], images: int, size: int) -> None:
    from alumi_pipelines.assets.raw import write_landing_file
    from alumi_pipelines.lib.vision.synth import write_landing_batch
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=str(lake_dir))
    for i, batch in enumerate(batches):
        write_landing_batch(
            lambda key, data, batch=batch: write_landing_file(lake, batch, key, data),
            batch,
            images,
            day=dt.date.fromisoformat(batch),
            seed=i,
            size=size,
            created_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        )


def case_env(work: Path, template: Path, per_run: int | None) -> dict[str, str]:
    home = work / "alumi"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    shutil.copytree(template, home / "lake")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALUMI_", "DAGSTER_"))}
    env.update({"ALUMI_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})
    if per_run is not None:
        env["ALUMI_BACKFILL_PARTITIONS_PER_RUN"] = str(per_run)
    return env


def become_subreaper() -> None:
    """Orphaned descendants (a code server or run process whose parent exited first) are re-parented to this
    process instead of init, so their CPU time is not lost to the count (Linux prctl PR_SET_CHILD_SUBREAPER)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


def reap_orphans(timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(env: dict[str, str]) -> dict:
    tags = subprocess.run(
        [BIN / "alumi", "batches", "--tags"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    cpu, started = children_cpu(), time.perf_counter()
    proc = subprocess.run(
        [BIN / "dagster", "job", "execute", "-m", "alumi_pipelines.definitions", "-j", "ingestion_job"]
        + ["--tags", tags],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0 or "RUN_SUCCESS" not in proc.stdout + proc.stderr:
        raise SystemExit(f"dagster job execute failed:\n{proc.stderr[-3000:]}")
    return {"runs": 1, "at_once": 1, "wall": wall, "done": wall, "cpu": children_cpu() - cpu}


def backfill(env: dict[str, str], work: Path) -> dict:
    from dagster import DagsterInstance

    from alumi_pipelines.partitions import landing_batches

    backfill_id = submit_backfill(env)
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]  # the instance file reads it (storage base_dir)
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        daemon = Daemon(env, work / "daemon.log")
        cpu, started_wall, started = children_cpu(), time.time(), time.perf_counter()
        daemon.start()
        try:
            status = wait_for_backfill(instance, backfill_id, daemon, timeout_s=3600)
            done = time.perf_counter() - started
        finally:
            daemon.stop()
            reap_orphans()
        cpu = children_cpu() - cpu
        runs = backfill_runs(instance, backfill_id, landing_batches.name)
    if status != "COMPLETED_SUCCESS" or {r.status for r in runs} != {"SUCCESS"}:
        raise SystemExit(f"backfill {status}: {[r.status for r in runs]}\n{daemon.tail()}")
    return {
        "runs": len(runs),
        "at_once": most_at_once(runs),
        "wall": max(r.end for r in runs) - started_wall,
        "done": done,
        "cpu": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--images", type=int, default=48, help="images per batch")
    parser.add_argument("--size", type=int, default=640, help="image side in pixels")
    args = parser.parse_args()
    become_subreaper()

    batches = [(dt.date(2026, 10, 1) + dt.timedelta(days=i)).isoformat() for i in range(args.batches)]
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        tmp_path = Path(tmp)
        template = tmp_path / "landing-template"
        land(template, batches, args.images, args.size)
        results = {}
        cases = [
            ("one run (dagster job execute)", None),
            ("backfill, 1 run", args.batches),
            ("backfill, fan-out", None),
        ]
        for label, per_run in cases:
            work = tmp_path / f"case-{len(results)}"
            env = case_env(work, template, per_run)
            results[label] = one_run(env) if label.startswith("one run") else backfill(env, work)
            shutil.rmtree(work / "alumi" / "lake", ignore_errors=True)
            print(f"{label}: {json.dumps({k: round(v, 1) for k, v in results[label].items()})}", file=sys.stderr)

    base = results[cases[0][0]]
    print(f"\n{args.batches} landing batches x {args.images} images ({args.size} px), {os.cpu_count()} cores\n")
    print("| case | runs | at once | wall s | wall ratio | to done s | CPU s | CPU ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, _ in cases:
        r = results[label]
        print(
            f"| {label} | {r['runs']} | {r['at_once']} | {r['wall']:.1f} | {r['wall'] / base['wall']:.2f} | "
            f"{r['done']:.1f} | {r['cpu']:.1f} | {r['cpu'] / base['cpu']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
