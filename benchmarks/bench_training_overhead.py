"""Orchestration overhead of training: images/s through the detector_model asset vs plain ultralytics.

Both paths train the same architecture on the same synthetic dataset with the same arguments, in this
one process, alternating which goes first in each round. The asset's time is the whole
materialisation: Dagster, staging the gold folder, MLflow params/per-epoch metrics/artifacts and the
model registration. The MLflow database is created before timing (a one-off migration per install).
Target: asset images/s >= 0.95 x plain images/s.

    .venv/bin/python benchmarks/bench_training_overhead.py                       # 96 images, 3 epochs, imgsz 128
    .venv/bin/python benchmarks/bench_training_overhead.py --images 48 --epochs 2 --imgsz 96 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "training"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="synthetic images in the gold dataset")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each path")
    parser.add_argument("--keep", help="folder for the runs (default: a temp folder, removed)")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        home = Path(opts.keep or tmp).resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ.update(
            {"ALUMI_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "ALUMI_PROFILE": "ci", "MPLBACKEND": "Agg"}
        )
        for key in ("ALUMI_LAKE_URI", "ALUMI_MLFLOW_URI", "ALUMI_MLFLOW_ARTIFACTS"):
            os.environ.pop(key, None)
        (home / "dagster").mkdir(exist_ok=True)
        run(home, opts)


def run(home: Path, opts) -> None:
    from dagster import DagsterInstance, materialize
    from gold_factory import write_tiny_gold

    from alumi_pipelines.assets.training.detector import detector_model
    from alumi_pipelines.lib import training
    from alumi_pipelines.lib.training.offline import import_ultralytics
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    settings = Settings.from_env()
    config_dir = settings.home / "ultralytics"
    import_ultralytics(config_dir)
    import torch
    from ultralytics import YOLO

    lake = Lake(base_uri=settings.lake_uri)
    pointer = write_tiny_gold(lake, n_images=opts.images, size=max(96, opts.imgsz))
    registry = MlflowRegistry.from_settings(settings)
    registry.experiment_id()  # schema migration + experiment, outside the timings
    overrides = {"epochs": opts.epochs, "imgsz": opts.imgsz, "batch": opts.batch, "workers": 0, "patience": 0}
    args = training.resolve_training_args("ci", overrides)
    kwargs = training.ultralytics_train_kwargs(args)
    n_train = pointer["counts"]["train"]
    instance = DagsterInstance.ephemeral()

    def plain(i: int) -> float:
        data_yaml = training.link_yolo_dataset(lake.local_path(pointer["prefix"]), home / "plain" / f"data-{i}")
        start = time.perf_counter()
        model = YOLO(args["architecture"])
        model.train(
            data=str(data_yaml),
            project=str(home / "plain" / "runs"),
            name=f"run-{i}",
            exist_ok=True,
            verbose=False,
            plots=True,
            val=True,
            **kwargs,
        )
        return time.perf_counter() - start

    def asset(i: int) -> float:
        start = time.perf_counter()
        result = materialize(
            [detector_model],
            resources={"lake": lake, "mlflow": registry, "pipeline_settings": PipelineSettings.from_settings(settings)},
            instance=instance,
            run_config={"ops": {"detector_model": {"config": {"profile": "ci", **overrides}}}},
        )
        assert result.success
        return time.perf_counter() - start

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); {n_train} train images, "
        f"{opts.epochs} epochs, imgsz {opts.imgsz}, batch {opts.batch}"
    )
    plain(-1)  # warm-up: first-call costs (model build, dataloader, plotting fonts) paid by neither path
    times: dict[str, list[float]] = {"plain ultralytics": [], "detector_model asset": []}
    for i in range(opts.repeat):
        order = [("plain ultralytics", plain), ("detector_model asset", asset)]
        for name, path in order if i % 2 == 0 else order[::-1]:  # alternate who goes first (machine drift)
            times[name].append(path(i))
        print(
            f"  round {i + 1}: plain {times['plain ultralytics'][-1]:.1f} s, "
            f"asset {times['detector_model asset'][-1]:.1f} s"
        )

    images = n_train * opts.epochs
    rate = {k: images / statistics.median(v) for k, v in times.items()}
    base = rate["plain ultralytics"]
    print()
    print("| path | runs | median s | images/s | ratio to plain |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in times.items():
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.2f} | {rate[name]:.1f} | {rate[name] / base:.3f} |"
        )
    ratio = rate["detector_model asset"] / base
    print(f"\nratio {ratio:.3f} (target >= 0.95): {'met' if ratio >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
