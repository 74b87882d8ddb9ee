"""Model quality per CPU-minute: the pipeline's cpu profile against plain ultralytics, same data, same budget.

On ``../shared/data/cr7_det_sample``, imported and split by the pipeline exactly as the README says
(``alumi import``, ``ingestion_job``, ``gold_dataset``), every arm trains yolo11n from its yaml for the same
wall-clock budget on the same gold train/val split and is scored by the same code on the same test split:

- ``plain``: ``YOLO("yolo11n.yaml").train(data=..., imgsz=..., batch=..., time=...)`` with every other argument
  ultralytics' default, at the image size and batch the pipeline chose for this data;
- ``before``: ``training_job`` with the previous cpu profile's values set explicitly (imgsz 256, batch 16,
  1 thread, no dataloader worker, patience 10, close_mosaic 5, no RAM cache, no warm start);
- ``pipeline``: ``training_job`` with the cpu profile as it is, from scratch;
- ``warm 1/2``, ``warm 2/2``: two successive ``training_job`` runs of half the budget each, the first from
  scratch, the second warm-started from the champion the first one became (the profile's default);
- ablations (not in the default run; name them in ``--arms``): ``pipeline`` with one setting changed back,
  ``imgsz256`` (the previous image size instead of the data's 320), ``no-ram-cache`` (images decoded every
  epoch), ``one-thread`` (ultralytics' own thread count on this machine: one core of two).

Prints test mAP50 / mAP50-95 overall and per class, epochs, training images/s, CPU utilisation (CPU time
over wall time x cores) and the machine's mean load during each arm (this machine is shared: read the load
column before the quality columns). Target: pipeline >= plain + 0.05 test mAP50.

    .venv/bin/python benchmarks/bench_quality.py                    # 20 minutes per arm (about 1 h 50 min)
    .venv/bin/python benchmarks/bench_quality.py --minutes 10 --arms plain,pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CR7 = REPO.parent / "shared" / "data" / "cr7_det_sample"
ARMS = ("plain", "before", "pipeline", "warm")
ABLATIONS = {"imgsz256": {"imgsz": 256}, "no-ram-cache": {"cache": "false"}, "one-thread": {"threads": 1}}
BEFORE = {
    "imgsz": 256,
    "batch": 16,
    "threads": 1,
    "workers": 0,
    "patience": 10,
    "close_mosaic": 5,
    "cache": "false",
    "warm_start": False,
}

PLAIN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from alumi_pipelines.lib.training.offline import import_ultralytics
    from alumi_pipelines.lib.training.runs import cpu_time
    a = json.loads(sys.argv[1])
    import_ultralytics(Path(a["config_dir"]))  # offline switches only: no training argument
    from ultralytics import YOLO
    model = YOLO("yolo11n.yaml")
    start, cpu = time.perf_counter(), cpu_time()
    model.train(data=a["data"], imgsz=a["imgsz"], batch=a["batch"], time=a["minutes"] / 60, device="cpu",
                project=a["out"], name="plain", exist_ok=True, seed=0, verbose=False)
    seconds, cpu = time.perf_counter() - start, cpu_time() - cpu
    t = model.trainer
    print("RESULT " + json.dumps({"weights": str(Path(t.save_dir) / "weights" / "best.pt"),
        "epochs": int(t.epoch) + 1, "train_seconds": seconds, "cpu_seconds": cpu,
        "train_images": len(t.train_loader.dataset)}))
    """
)


class Load:
    """Mean of the machine's 1-minute load average, sampled every 5 s while an arm runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(5.0):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else float("nan")


def sh(cmd: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=REPO, text=True, capture_output=True, **kw)


def prepare_lake(home: Path, env: dict) -> None:
    """The README's import path: alumi import, ingestion_job for the new batch, then gold_dataset."""
    dagster = [sys.executable, "-m", "dagster"]
    steps = [
        [sys.executable, "-m", "alumi_pipelines", "import", str(CR7), "--format", "yolo"],
    ]
    for cmd in steps:
        done = sh(cmd, env)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    tags = sh([sys.executable, "-m", "alumi_pipelines", "batches", "--tags"], env).stdout.strip()
    for cmd in (
        [*dagster, "job", "execute", "-m", "alumi_pipelines.definitions", "-j", "ingestion_job", "--tags", tags],
        [
            *dagster,
            "asset",
            "materialize",
            "-m",
            "alumi_pipelines.definitions",
            "--select",
            "label_corrections,gold_dataset",
        ],
    ):
        done = sh(cmd, env)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd[:6])} failed:\n{done.stderr[-3000:]}")


def run_plain(data_yaml: Path, imgsz: int, batch: int, minutes: float, out: Path, env: dict) -> dict:
    args = {
        "data": str(data_yaml),
        "imgsz": imgsz,
        "batch": batch,
        "minutes": minutes,
        "out": str(out),
        "config_dir": str(out / "ultralytics"),
    }
    done = sh([sys.executable, "-c", PLAIN, json.dumps(args)], env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"plain ultralytics failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    cores = os.cpu_count() or 1
    result["images_per_second"] = result["train_images"] * result["epochs"] / result["train_seconds"]
    result["cpu_utilisation"] = result["cpu_seconds"] / (result["train_seconds"] * cores)
    result["imgsz"], result["batch"], result["started_from"] = imgsz, batch, "scratch"
    return result


def run_pipeline(name: str, config: dict, home: Path, env: dict) -> dict:
    """One training_job run; its detector version's weights and training numbers from MLflow."""
    import yaml

    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.settings import Settings

    cfg = home / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"ops": {"detector_model": {"config": config}}}))
    cmd = [sys.executable, "-m", "dagster", "job", "execute", "-m", "alumi_pipelines.definitions"]
    done = sh([*cmd, "-j", "training_job", "-c", str(cfg)], env)
    registry = MlflowRegistry.from_settings(Settings.from_env())
    latest = registry.latest_version()
    if latest is None or latest.tags.get("dagster_run_id") is None or latest.tags.get("started_from") is None:
        sys.exit(f"training_job ({name}) registered no model:\n{done.stderr[-3000:]}")
    metrics = registry.run_metrics(latest.run_id)
    weights = registry.download_weights(latest.version, home / "weights" / name)
    return {
        "weights": str(weights),
        "version": latest.version,
        "epochs": int(latest.tags["epochs_run"]),
        "train_seconds": metrics["train_seconds"],
        "images_per_second": metrics["images_per_second"],
        "cpu_utilisation": metrics.get("cpu_utilisation", float("nan")),
        "imgsz": int(latest.tags["imgsz"]),
        "started_from": latest.tags["started_from"],
        "champion_after": registry.alias_version("champion"),
        "job_exit": done.returncode,
    }


def score(result: dict, data_yaml: Path, root: Path, out: Path) -> dict:
    """The test split scored twice: ultralytics val on the weights (what the model card reports) and the export
    gates' mAP on the exported ONNX through the edge runtime (what decides a release): the two should agree."""
    from alumi_pipelines.lib import training
    from alumi_pipelines.lib.export import accuracy, onnx_export, yolo_data

    config_dir = out / "ultralytics"
    evaluation = training.evaluate_detector(
        Path(result["weights"]),
        data_yaml,
        out,
        config_dir=config_dir,
        imgsz=result["imgsz"],
        split="test",
        latency_images=0,
    )
    exported = onnx_export.export_onnx(
        Path(result["weights"]),
        out / "onnx",
        config_dir=config_dir,
        imgsz=result["imgsz"],
        metadata={"model_version": result.get("version", "plain"), "dataset_hash": "bench", "mlflow_run_id": "none"},
    )
    images = yolo_data.read_yolo_split(root, "test", len(evaluation["per_class"]))
    gate = accuracy.onnx_map(Path(exported.path), images, config_dir=config_dir)
    return {**result, "test": evaluation, "gate": gate.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget of each full arm")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--home", default=str(REPO / "benchmarks" / "out" / "quality"), help="ALUMI_HOME (wiped)")
    opts = parser.parse_args()
    arms = [a for a in opts.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS) - set(ABLATIONS):
        sys.exit(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join([*ARMS, *ABLATIONS])}")
    if not CR7.is_dir():
        sys.exit(f"real-data sample not found at {CR7} (it lives in ../shared/data, outside the repository)")

    home = Path(opts.home).resolve()
    shutil.rmtree(home, ignore_errors=True)
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ALUMI_", "DAGSTER_"))},
        "ALUMI_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "ALUMI_PROFILE": "cpu",
        "ALUMI_GATE_FLOOR": "0",  # the first model becomes champion whatever its score: warm 2/2 starts from it
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "edge_export")]),
    }
    os.environ.clear()
    os.environ.update(env)

    started = time.perf_counter()
    prepare_lake(home, env)
    from alumi_pipelines.assets.gold import read_gold_pointer, stage_gold
    from alumi_pipelines.assets.training.detector import gold_long_sides
    from alumi_pipelines.lib import training
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    settings = Settings.from_env()
    lake = Lake(base_uri=settings.lake_uri)
    pointer = read_gold_pointer(lake)
    work = home / "bench"
    local = stage_gold(lake, pointer["prefix"], work, cache=PipelineSettings.from_settings(settings).cache())
    training.link_yolo_dataset(local, work / "dataset")
    summary = training.check_yolo_dataset(work / "dataset")
    _, choice = training.resolve_auto(training.resolve_training_args("cpu"), gold_long_sides(lake, pointer))
    print(
        f"gold {pointer['dataset_hash'][:12]}: {summary.images} images, classes {summary.classes}; "
        f"cpu profile chose imgsz {choice.imgsz} ({choice.reasons['imgsz']}), batch {choice.batch}; "
        f"budget {opts.minutes:g} min per full arm; prepared in {(time.perf_counter() - started) / 60:.1f} min",
        flush=True,
    )

    results: dict[str, dict] = {}
    minutes = opts.minutes

    def arm(name: str, fn) -> None:
        t0 = time.perf_counter()
        with Load() as load:
            result = fn()
        result["load"] = load.mean
        results[name] = score(result, summary.data_yaml, summary.root, work / "scores" / name)
        print(
            f"{name}: {results[name]['epochs']} epochs, test mAP50 {results[name]['test']['map50']:.3f} "
            f"({(time.perf_counter() - t0) / 60:.1f} min)",
            flush=True,
        )

    if "plain" in arms:
        arm("plain", lambda: run_plain(summary.data_yaml, choice.imgsz, choice.batch, minutes, work / "plain", env))
    if "before" in arms:
        arm("before", lambda: run_pipeline("before", {**BEFORE, "max_minutes": minutes}, home, env))
    if "pipeline" in arms:
        arm("pipeline", lambda: run_pipeline("pipeline", {"max_minutes": minutes, "warm_start": False}, home, env))
    for name, change in ABLATIONS.items():
        if name in arms:
            overrides = {"max_minutes": minutes, "warm_start": False, **change}
            arm(name, lambda overrides=overrides, name=name: run_pipeline(name, overrides, home, env))
    if "warm" in arms:
        half = minutes / 2
        arm("warm 1/2", lambda: run_pipeline("warm1", {"max_minutes": half, "warm_start": False}, home, env))
        arm("warm 2/2", lambda: run_pipeline("warm2", {"max_minutes": half}, home, env))

    report(results, summary.classes, minutes)


def report(results: dict[str, dict], classes: list[str], minutes: float) -> None:
    print()
    print(f"Same gold split, {minutes:g} min of training per full arm (warm: two runs of {minutes / 2:g} min)")
    print()
    print(
        "| arm | starts from | imgsz | epochs | train images/s | CPU utilisation | machine load "
        "| test mAP50 | test mAP50-95 | mAP50 vs plain | mAP50 vs pipeline | gate mAP50 / mAP50-95 (ONNX) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    plain = results.get("plain", {}).get("test", {}).get("map50")
    pipeline = results.get("pipeline", {}).get("test", {}).get("map50")
    for name, r in results.items():
        delta = f"{r['test']['map50'] - plain:+.3f}" if plain is not None else "–"
        vs_pipeline = f"{r['test']['map50'] - pipeline:+.3f}" if pipeline is not None else "–"
        print(
            f"| {name} | {r['started_from']} | {r['imgsz']} | {r['epochs']} | {r['images_per_second']:.1f} "
            f"| {r['cpu_utilisation']:.0%} | {r['load']:.2f} | {r['test']['map50']:.3f} "
            f"| {r['test']['map50_95']:.3f} | {delta} | {vs_pipeline} "
            f"| {r['gate']['map50']:.3f} / {r['gate']['map50_95']:.3f} |"
        )
    print()
    print("| class | test boxes | " + " | ".join(f"{n} mAP50 / mAP50-95" for n in results) + " |")
    print("| --- | ---: |" + " ---: |" * len(results))
    for cname in classes:
        cells, boxes = [], 0
        for r in results.values():
            row = r["test"]["per_class"][cname]
            boxes = row["instances"]
            cells.append("–" if row["map50"] is None else f"{row['map50']:.3f} / {row['map50_95']:.3f}")
        print(f"| {cname} | {boxes} | " + " | ".join(cells) + " |")
    if "warm 2/2" in results and "pipeline" in results:
        warm, full = results["warm 2/2"]["test"], results["pipeline"]["test"]
        print()
        print("| retraining | epochs | test mAP50 | test mAP50-95 |")
        print("| --- | ---: | ---: | ---: |")
        epochs = results["warm 1/2"]["epochs"] + results["warm 2/2"]["epochs"]
        print(
            f"| two half-budget runs, the second warm-started | {epochs} | {warm['map50']:.3f} "
            f"| {warm['map50_95']:.3f} |"
        )
        print(
            f"| one full-budget run from scratch | {results['pipeline']['epochs']} | {full['map50']:.3f} "
            f"| {full['map50_95']:.3f} |"
        )


if __name__ == "__main__":
    main()
