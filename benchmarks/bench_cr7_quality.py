"""Detector quality on real data: the cpu profile on the CR7-DET sample for a fixed wall-clock budget.

Builds a gold dataset from ``../shared/data/cr7_det_sample`` (a deterministic 70/15/15 split by file
name hash; or uses an existing lake's gold with ``--lake``), materialises ``detector_model`` with the
``cpu`` profile and ``max_minutes`` set to the budget, then ``detector_evaluation`` on the test split,
and prints mAP50 / mAP50-95 overall and per class.

    .venv/bin/python benchmarks/bench_cr7_quality.py                 # 20 minutes of training
    .venv/bin/python benchmarks/bench_cr7_quality.py --minutes 5 --imgsz 256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CR7 = REPO.parent / "shared" / "data" / "cr7_det_sample"


def split_of(name: str) -> str:
    """Deterministic split of a file name: 70 % train, 15 % val, 15 % test."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


def write_cr7_gold(lake, source: Path) -> dict:
    """The sample as a gold dataset (gold contract: YOLO layout, data.yaml, manifest, pointer)."""
    import polars as pl
    import yaml

    classes = [c.strip() for c in (source / "classes.txt").read_text().splitlines() if c.strip()]
    images = sorted((source / "image").glob("*.jpg"))
    digest = hashlib.sha256()
    plan = []
    for image in images:
        data = image.read_bytes()
        label = (source / "label" / f"{image.stem}.txt").read_text()
        image_id = hashlib.sha256(data).hexdigest()
        plan.append((image_id, split_of(image.name), data, label))
        digest.update(image_id.encode() + split_of(image.name).encode() + label.encode())
    prefix = f"gold/datasets/cr7-{digest.hexdigest()[:12]}"
    counts = {s: 0 for s in ("train", "val", "test")}
    class_counts = {s: {c: 0 for c in classes} for s in counts}
    rows, seen = [], set()
    for image_id, split, data, label in plan:
        if image_id in seen:  # identical bytes under two names: keep one
            continue
        seen.add(image_id)
        if not lake.exists(f"{prefix}/manifest.parquet"):
            lake.write_bytes(f"{prefix}/images/{split}/{image_id}.jpg", data)
            lake.write_bytes(f"{prefix}/labels/{split}/{image_id}.txt", label.encode())
        counts[split] += 1
        lines = [ln.split() for ln in label.splitlines() if ln.strip()]
        for parts in lines:
            class_counts[split][classes[int(float(parts[0]))]] += 1
        rows.append(
            {
                "image_id": image_id,
                "split": split,
                "file": f"images/{split}/{image_id}.jpg",
                "width": 400,
                "height": 400,
                "n_boxes": len(lines),
            }
        )
    if not lake.exists(f"{prefix}/manifest.parquet"):
        names = dict(enumerate(classes))
        lake.write_bytes(
            f"{prefix}/data.yaml",
            yaml.safe_dump(
                {"path": ".", "train": "images/train", "val": "images/val", "test": "images/test", "names": names},
                sort_keys=False,
            ).encode(),
        )
        lake.write_table(f"{prefix}/manifest.parquet", pl.DataFrame(rows))
    pointer = {
        "dataset_hash": prefix.rsplit("/", 1)[1],
        "prefix": prefix,
        "classes": classes,
        "counts": counts,
        "class_counts": class_counts,
    }
    lake.write_bytes("gold/current.json", json.dumps(pointer, indent=2).encode())
    return pointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    parser.add_argument("--imgsz", type=int, help="override the cpu profile's image size")
    parser.add_argument("--home", default=str(REPO / "benchmarks" / "out" / "cr7"), help="ALUMI_HOME of the run")
    parser.add_argument("--lake", help="use this lake's current gold dataset instead of building one")
    opts = parser.parse_args()
    if not opts.lake and not CR7.is_dir():
        sys.exit(f"real-data sample not found at {CR7} (it lives in ../shared/data, outside the repository)")

    home = Path(opts.home).resolve()
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {"ALUMI_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "ALUMI_PROFILE": "cpu", "MPLBACKEND": "Agg"}
    )
    for key in ("ALUMI_MLFLOW_URI", "ALUMI_MLFLOW_ARTIFACTS", "ALUMI_LAKE_URI"):
        os.environ.pop(key, None)

    from dagster import DagsterInstance, materialize

    from alumi_pipelines.assets.training.detector import detector_model
    from alumi_pipelines.assets.training.evaluation import detector_evaluation
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    settings = Settings.from_env()
    lake = Lake(base_uri=opts.lake or settings.lake_uri)
    pointer = lake.read_json("gold/current.json") if opts.lake else write_cr7_gold(lake, CR7)
    registry = MlflowRegistry.from_settings(settings)
    config = {"profile": "cpu", "max_minutes": opts.minutes}
    if opts.imgsz:
        config["imgsz"] = opts.imgsz
    print(f"gold {pointer['dataset_hash']}: {pointer['counts']} images; training budget {opts.minutes} min")
    start = time.perf_counter()
    result = materialize(
        [detector_model, detector_evaluation],
        resources={"lake": lake, "mlflow": registry, "pipeline_settings": PipelineSettings.from_settings(settings)},
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": {"detector_model": {"config": config}}},
    )
    wall = time.perf_counter() - start
    assert result.success
    trained = {k: v.value for k, v in result.asset_materializations_for_node("detector_model")[0].metadata.items()}
    evaluated = {
        k: v.value for k, v in result.asset_materializations_for_node("detector_evaluation")[0].metadata.items()
    }
    evaluation = lake.read_json(evaluated["evaluation_key"])
    record = evaluation["challenger"]["metrics"]

    print()
    print("| run | value |")
    print("| --- | ---: |")
    for label, value in (
        ("model version", trained["model_version"]),
        ("architecture / imgsz", f"{trained['architecture']} / {trained['imgsz']}"),
        ("epochs run", trained["epochs_run"]),
        ("training minutes", f"{trained['train_seconds'] / 60:.1f}"),
        ("train images/s", f"{trained['images_per_second']:.1f}"),
        ("val mAP50 / mAP50-95 (best.pt)", f"{trained['val_mAP50']:.3f} / {trained['val_mAP50_95']:.3f}"),
        (f"test mAP50 ({record['images']} images)", f"{record['map50']:.3f}"),
        ("test mAP50-95", f"{record['map50_95']:.3f}"),
        ("latency ms/image (CPU, batch 1)", record["latency_ms"]),
        ("wall-clock minutes (train + evaluate)", f"{wall / 60:.1f}"),
    ):
        print(f"| {label} | {value} |")
    print()
    print("| class | test boxes | precision | recall | mAP50 | mAP50-95 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in evaluation["classes"]:
        row = record["per_class"][name]
        cells = [row.get(k) for k in ("precision", "recall", "map50", "map50_95")]
        print(f"| {name} | {row['instances']} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
