"""Ingestion of the cr7 sample with the lake on Azurite vs on local disk, in one run, and where the time goes.

Each backend gets a fresh lake: the sample is copied into landing/, then ingested (landing → raw →
processed, the two steps of ingestion_job). Every lake call is timed. With one worker the phases are
sequential, so "compute" is the phase's wall time minus its lake calls; a second pass with every core
gives the wall time users see. Azurite runs on 127.0.0.1 (no network latency, no TLS): the ratio is a
floor on the cost of the object-store protocol itself, not a prediction for a real Azure region.

    .venv/bin/python benchmarks/bench_lake_azure.py            # needs Node.js + Azurite (scripts/install-services)
    .venv/bin/python benchmarks/bench_lake_azure.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "azure"))
CR7 = REPO.parent / "shared" / "data" / "cr7_det_sample"
CR7_CLASSES = ["inclusions", "dents", "oil_spots", "pits", "punching", "linear", "macular"]
OPERATIONS = ("list", "exists", "read", "write")


class TimedLake:
    """Wraps a Lake: every call that reaches storage is counted and timed (thread-safe)."""

    def __init__(self, lake):
        self._lake = lake
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.calls = defaultdict(int)
        self.seconds = defaultdict(float)
        self.bytes = defaultdict(int)

    @contextmanager
    def _timed(self, operation: str, size: int = 0):
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.calls[operation] += 1
                self.seconds[operation] += elapsed
                self.bytes[operation] += size

    # storage calls
    def list_files(self, prefix):
        with self._timed("list"):
            return self._lake.list_files(prefix)

    def list_dirs(self, prefix):
        with self._timed("list"):
            return self._lake.list_dirs(prefix)

    def exists(self, key):
        with self._timed("exists"):
            return self._lake.exists(key)

    def read_bytes(self, key):
        started = time.perf_counter()
        data = self._lake.read_bytes(key)
        with self._lock:
            self.calls["read"] += 1
            self.seconds["read"] += time.perf_counter() - started
            self.bytes["read"] += len(data)
        return data

    def write_bytes(self, key, data):
        with self._timed("write", len(data)):
            return self._lake.write_bytes(key, data)

    def delete(self, key):
        with self._timed("write"):
            return self._lake.delete(key)

    # the Lake's conveniences, re-routed through the timed calls above
    def read_json(self, key):
        import json

        return json.loads(self.read_bytes(key))

    def read_table(self, key):
        import io

        import polars as pl

        return pl.read_parquet(io.BytesIO(self.read_bytes(key)))

    def read_tables(self, keys):
        import polars as pl

        frames = [self.read_table(k) for k in keys]
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def write_json(self, key, obj):
        import json

        return self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_table(self, key, df):
        import io

        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        return self.write_bytes(key, buf.getvalue())

    def __getattr__(self, name):
        return getattr(self._lake, name)


def _phase(timed: TimedLake, run) -> dict:
    timed.reset()
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    io = sum(timed.seconds[op] for op in OPERATIONS)
    return {
        "wall": wall,
        "calls": dict(timed.calls),
        "seconds": dict(timed.seconds),
        "bytes": dict(timed.bytes),
        "compute": max(wall - io, 0.0),
        "result": result,
    }


def _ingest(lake, workers: int, size: int) -> dict:
    """landing copy, raw and processed phases on a fresh lake; returns {phase: measurements}."""
    from alumi_pipelines.assets.processed import process_batch
    from alumi_pipelines.assets.raw import ingest_landing_batch
    from alumi_pipelines.cli import import_dataset
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    settings = PipelineSettings(classes=CR7_CLASSES, image_size=size, workers=workers)
    timed = TimedLake(lake)
    phases = {
        "landing copy": _phase(timed, lambda: import_dataset(timed, CR7, "yolo", "cr7", CR7_CLASSES)),
        "raw": _phase(timed, lambda: ingest_landing_batch(timed, "cr7", settings)),
        "processed": _phase(timed, lambda: process_batch(timed, "cr7", settings)),
    }
    images = len({m["image_id"] for m in phases["raw"]["result"].manifest})
    assert phases["processed"]["result"].images == images
    phases["raw"]["images"] = images
    return phases


def _lakes(azurite, tmp: Path):
    """(name, factory of a fresh lake) for local disk and Azurite."""
    from azurite import ACCOUNT_KEY, ACCOUNT_NAME

    from alumi_pipelines.resources.azure import azure_lake
    from alumi_pipelines.resources.lake import Lake

    counter = iter(range(1000))
    env = {
        "ALUMI_AZURE_ACCOUNT_NAME": ACCOUNT_NAME,
        "ALUMI_AZURE_ACCOUNT_KEY": ACCOUNT_KEY,
        "ALUMI_AZURE_ACCOUNT_URL": azurite.account_url,
    }

    def local():
        return Lake(base_uri=str(tmp / f"lake-{next(counter)}"))

    def on_azurite():
        container = f"bench-{next(counter)}"
        azurite.create_container(container)
        return azure_lake(f"abfs://{container}/lake", env=env, deferred=False)

    return [("local disk", local), ("Azurite", on_azurite)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend and worker count (median)")
    parser.add_argument("--size", type=int, default=640, help="processed longest side")
    parser.add_argument("--in-memory", action="store_true", help="Azurite keeps blobs in memory instead of on disk")
    args = parser.parse_args()
    if not CR7.is_dir():
        print(f"skipping: the cr7 sample is not at {CR7}")
        return 0
    from azurite import AzuriteServer, AzuriteUnavailable

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        try:
            azurite = AzuriteServer(Path(tmp) / "azurite", in_memory=args.in_memory).start()
        except AzuriteUnavailable as exc:
            print(f"skipping: {exc}")
            return 0
        try:
            breakdown, walls = {}, defaultdict(dict)
            for name, fresh in _lakes(azurite, Path(tmp)):
                runs = [_ingest(fresh(), 1, args.size) for _ in range(args.repeat)]
                breakdown[name] = runs[len(runs) // 2]
                for workers in (1, cores):
                    samples = (
                        runs if workers == 1 else [_ingest(fresh(), workers, args.size) for _ in range(args.repeat)]
                    )
                    walls[name][workers] = statistics.median(r["raw"]["wall"] + r["processed"]["wall"] for r in samples)
        finally:
            azurite.stop()

    images = breakdown["local disk"]["raw"]["images"]
    where = "in memory" if args.in_memory else "on disk"
    print(
        f"\ncr7 sample: {images} images, processed size {args.size}, median of {args.repeat}; one worker; "
        f"Azurite keeps blobs {where}; n = calls, s = seconds inside them"
    )
    header = (
        f"{'lake':<11} {'phase':<13} {'wall s':>7} {'list n/s':>11} {'exists n/s':>12} {'read n/s/MB':>17} "
        f"{'write n/s/MB':>17} {'compute s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, phases in breakdown.items():
        for phase, m in phases.items():

            def cell(op, with_bytes=False, m=m):
                text = f"{m['calls'].get(op, 0)}/{m['seconds'].get(op, 0.0):.2f}"
                return text + (f"/{m['bytes'].get(op, 0) / 1e6:.1f}" if with_bytes else "")

            print(
                f"{name:<11} {phase:<13} {m['wall']:>7.2f} {cell('list'):>11} {cell('exists'):>12} "
                f"{cell('read', True):>17} {cell('write', True):>17} {m['compute']:>9.2f}"
            )
    print(f"\ningestion (raw + processed) wall time, median of {args.repeat}")
    print(f"{'workers':>7} {'local disk s':>13} {'Azurite s':>10} {'Azurite / local':>16}")
    for workers in (1, cores):
        local, azure = walls["local disk"][workers], walls["Azurite"][workers]
        print(f"{workers:>7} {local:>13.2f} {azure:>10.2f} {azure / local:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
