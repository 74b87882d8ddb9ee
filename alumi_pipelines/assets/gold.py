"""Gold zone: the training-ready dataset, split and laid out for YOLO, named by its content hash.

``gold_dataset`` calls :func:`build_gold`: the processed zone and the applied corrections in, the plan
(dedup, conflicts, stable split, hash) from ``lib.vision.gold``, the dataset folder out.
"""

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)

from alumi_pipelines.assets.metadata import histogram_md
from alumi_pipelines.assets.processed import read_processed
from alumi_pipelines.lib.vision.splits import SPLITS
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


@asset(
    deps=["processed_images", "processed_labels", "label_corrections"],
    group_name="gold",
    owners=["team:data-science"],
    kinds={"parquet", "yaml"},
    description="Every labelled image once (exact duplicates collapse to one image), one label set each "
    "(conflicts reported), a stable class-stratified train/val/test split, YOLO layout with data.yaml and "
    "a manifest; the folder is named by the dataset's content hash and gold/current.json points to it.",
)
def gold_dataset(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings) -> MaterializeResult:
    info = build_gold(lake, pipeline_settings)
    for conflict in info.conflicts[:20]:
        context.log.warning(
            f"conflicting labels for identical image {conflict['image_id'][:12]}: kept {conflict['kept']}, "
            f"ignored {conflict['other']}"
        )
    totals = {c: sum(info.class_counts[s][c] for s in info.class_counts) for c in info.classes}
    split_md = "| split | images | " + " | ".join(info.classes) + " |\n|---|---:|" + "---:|" * len(info.classes) + "\n"
    for s, n in info.counts.items():
        split_md += f"| {s} | {n} | " + " | ".join(str(info.class_counts[s][c]) for c in info.classes) + " |\n"
    return MaterializeResult(
        metadata={
            "dataset_hash": info.dataset_hash,
            "images": sum(info.counts.values()),
            **{f"{s}_images": n for s, n in info.counts.items()},
            "label_conflicts": len(info.conflicts),
            "held_out_images": len(info.held_out),
            "held_out": MetadataValue.md(held_out_md(info.held_out)),
            "reused_existing": info.reused,
            "class_histogram": MetadataValue.md(histogram_md(totals)),
            "splits": MetadataValue.md(split_md),
            "data_yaml": MetadataValue.path(lake.uri(lake_keys.gold_data_yaml_key(info.prefix))),
        },
    )


def held_out_md(held_out: list[dict], limit: int = 20) -> str:
    """Markdown list of the images held out of gold (rejected annotation records) and why."""
    if not held_out:
        return "none: every labelled image's annotation was read in full"
    lines = ["| image | batch | reason |", "|---|---|---|"]
    for h in held_out[:limit]:
        lines.append(f"| {h['image_id'][:12]} | {h['batch']} | {h['reason'].replace('|', '/')} |")
    if len(held_out) > limit:
        lines.append(f"| … | | {len(held_out) - limit} more |")
    lines.append("")
    lines.append("Each is listed in its batch's quarantine table (with its annotation file) and stays in processed as")
    lines.append("an unlabelled image: a correction that labels it (label_corrections) brings it into gold.")
    return "\n".join(lines)


@asset_check(
    asset=gold_dataset,
    blocking=True,
    description="No image (by content hash) appears in more than one split of the current gold dataset. "
    "Failing means test scores would be inflated by training images.",
)
def no_split_leakage(lake: Lake) -> AssetCheckResult:
    import polars as pl

    manifest = read_gold_manifest(lake)
    leaked = manifest.group_by("image_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
    return AssetCheckResult(
        passed=leaked.is_empty(),
        metadata={
            "images": manifest.height,
            "leaked_images": leaked.height,
            "examples": MetadataValue.text(", ".join(leaked["image_id"].head(5).to_list())),
        },
    )


@asset_check(
    asset=gold_dataset,
    blocking=True,
    description="Train and val are non-empty and every class has training boxes. Failing means a model "
    "trained now could not learn or be evaluated on some class.",
)
def splits_cover_classes(lake: Lake) -> AssetCheckResult:
    pointer = read_gold_pointer(lake)
    missing = [c for c in pointer["classes"] if pointer["class_counts"]["train"].get(c, 0) == 0]
    empty = [s for s in ("train", "val") if pointer["counts"].get(s, 0) == 0]
    return AssetCheckResult(
        passed=not missing and not empty,
        metadata={
            "classes_without_train_boxes": MetadataValue.text(", ".join(missing) or "none"),
            "empty_splits": MetadataValue.text(", ".join(empty) or "none"),
            **{f"{s}_images": n for s, n in pointer["counts"].items()},
        },
    )


@asset_check(
    asset=gold_dataset,
    blocking=False,
    description="Identical images (same bytes) that arrived with different label sets. Warns: one set was "
    "kept (the earliest batch), the others need a QA look.",
)
def identical_images_label_conflicts(lake: Lake) -> AssetCheckResult:
    pointer = read_gold_pointer(lake)
    n = int(pointer.get("conflicts", 0))
    return AssetCheckResult(passed=n == 0, severity=AssetCheckSeverity.WARN, metadata={"conflicts": n})


# -- processed + corrections → gold (zone I/O) ----------------------------------------------------
@dataclass
class GoldInfo:
    dataset_hash: str
    prefix: str
    classes: list[str]
    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    conflicts: list[dict] = field(default_factory=list)
    moved: dict[str, str] = field(default_factory=dict)
    reused: bool = False
    held_out: list[dict] = field(default_factory=list)

    def pointer(self) -> dict:
        return {
            "dataset_hash": self.dataset_hash,
            "prefix": self.prefix,
            "classes": self.classes,
            "counts": self.counts,
            "class_counts": self.class_counts,
            "conflicts": len(self.conflicts),
            "held_out": len(self.held_out),
        }


def build_gold(lake: Lake, settings: PipelineSettings) -> GoldInfo:
    """All processed batches (+ applied corrections) → a split YOLO dataset named by its content hash."""
    import polars as pl
    import yaml

    from alumi_pipelines.lib.vision import gold
    from alumi_pipelines.lib.vision.corrections import corrected_labels

    features, labels = read_processed(lake)
    if lake.exists(lake_keys.CORRECTIONS_OVERLAY) and lake.exists(lake_keys.CORRECTIONS_CHANGES):
        changes = lake.read_table(lake_keys.CORRECTIONS_CHANGES)
        labels = corrected_labels(labels, lake.read_table(lake_keys.CORRECTIONS_OVERLAY), changes)
        # an image a correction touched is labelled from now on, even if it arrived unlabelled or held out
        touched = changes["image_id"].unique().implode()
        features = features.with_columns(pl.col("labelled") | pl.col("image_id").is_in(touched))
        if "held_out" in features.columns:
            features = features.with_columns(
                pl.when(pl.col("image_id").is_in(touched))
                .then(pl.lit(""))
                .otherwise(pl.col("held_out"))
                .alias("held_out")
            )
    plan = gold.plan_dataset(features, labels, list(settings.classes), seed=settings.split_seed)
    prefix = lake_keys.gold_prefix(plan.dataset_hash)
    info = GoldInfo(
        dataset_hash=plan.dataset_hash,
        prefix=prefix,
        classes=list(settings.classes),
        counts=plan.counts,
        class_counts=plan.class_counts,
        conflicts=plan.conflicts,
        moved=plan.moved,
        held_out=plan.held_out,
    )
    manifest_key = lake_keys.gold_manifest_key(prefix)
    if lake.exists(manifest_key):
        info.reused = True
    else:
        for row in plan.manifest.iter_rows(named=True):
            image = lake.read_bytes(lake_keys.processed_image_key(row["image_id"]))
            lake.write_bytes(lake_keys.gold_file_key(prefix, row["file"]), image)
            lake.write_bytes(
                lake_keys.gold_file_key(prefix, row["label_file"]), plan.label_text[row["image_id"]].encode()
            )
        data_yaml = {
            "path": ".",
            "train": "images/train",
            "val": "images/val",
            "test": "images/test",
            "names": dict(enumerate(settings.classes)),
        }
        lake.write_bytes(lake_keys.gold_data_yaml_key(prefix), yaml.safe_dump(data_yaml, sort_keys=False).encode())
        lake.write_table(lake_keys.gold_labels_key(prefix), plan.labels)
        lake.write_table(manifest_key, plan.manifest)  # written last: its presence means complete
    lake.write_json(lake_keys.GOLD_POINTER, {**info.pointer(), "updated_at": dt.datetime.now(dt.UTC).isoformat()})
    return info


def read_gold_pointer(lake: Lake) -> dict:
    if not lake.exists(lake_keys.GOLD_POINTER):
        raise FileNotFoundError(f"{lake_keys.GOLD_POINTER}: no gold dataset yet; materialise gold_dataset first")
    return lake.read_json(lake_keys.GOLD_POINTER)


def read_gold_manifest(lake: Lake):
    return lake.read_table(lake_keys.gold_manifest_key(read_gold_pointer(lake)["prefix"]))


def gold_prefix_for(lake: Lake, dataset_hash: str | None) -> str:
    """The gold folder of ``dataset_hash`` while it is still in the lake, else the current one."""
    own = lake_keys.gold_prefix(dataset_hash) if dataset_hash else None
    if own and lake.exists(lake_keys.gold_data_yaml_key(own)):
        return own
    return read_gold_pointer(lake)["prefix"]


def stage_gold(
    lake: Lake, prefix: str, work: Path, splits: tuple[str, ...] = SPLITS, only: set[str] | None = None
) -> Path:
    """A gold dataset as a local YOLO folder: the lake's own folder when the lake is local, else a copy.

    The copy holds ``data.yaml`` and the images of ``splits`` (only the gold-relative paths in ``only``, when
    given) with their label files; the prefix is listed once.
    """
    local = lake.local_path(prefix)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"gold dataset {prefix}: no such folder in the lake")
        return local
    root = work / "gold"
    files = {f.key[len(prefix) + 1 :] for f in lake.list_files(prefix)}
    if not files:
        raise FileNotFoundError(f"gold dataset {prefix}: no such folder in the lake")
    wanted = ["data.yaml"] if "data.yaml" in files else []
    for split in splits:
        images = sorted(r for r in files if r.startswith(f"images/{split}/") and (only is None or r in only))
        for rel in images:
            label = "labels/" + str(PurePosixPath(rel).relative_to("images").with_suffix(".txt"))
            wanted += [rel, *([label] if label in files else [])]
    for rel in wanted:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lake.read_bytes(lake_keys.gold_file_key(prefix, rel)))
    return root


# -- gold → a labelling tool's folder (local) ------------------------------------------------------
def export_gold_labels(
    lake: Lake,
    out_dir: str | Path,
    fmt: str,
    dataset_hash: str | None = None,
    splits: list[str] | tuple[str, ...] | None = None,
    copy_images: bool = True,
    force: bool = False,
) -> dict:
    """Write the current gold dataset (or version ``dataset_hash``) as COCO, YOLO or Label Studio files.

    The folder is built under a temporary name and renamed into place, so ``out_dir`` never holds a half
    export. ``force`` replaces an earlier export (a folder holding ``alumi_export.json``), nothing else.
    Images are read through the lake (local or Azure). Bad input raises ``LabelExportError`` naming the fix.
    Returns the summary also written to ``alumi_export.json`` (plus ``out``).
    """
    import json

    import yaml

    from alumi_pipelines.lib.files import atomic_dir
    from alumi_pipelines.lib.vision import label_export as lx

    fmt = lx.check_format(fmt)
    chosen = lx.check_splits(splits)
    out = Path(out_dir).expanduser().absolute()
    _check_export_target(out, force)
    prefix, dataset_hash = _export_source(lake, dataset_hash)

    data_yaml_bytes = lake.read_bytes(lake_keys.gold_data_yaml_key(prefix))
    data_yaml = yaml.safe_load(data_yaml_bytes) or {}
    classes = lx.class_names(data_yaml)
    images = lx.export_images(lake.read_table(lake_keys.gold_manifest_key(prefix)), chosen)
    labels_key = lake_keys.gold_labels_key(prefix)
    if not lake.exists(labels_key):
        raise lx.LabelExportError(
            f"gold dataset {dataset_hash} has no label table ({lake.uri(labels_key)}): rebuild it (materialise "
            "gold_dataset)"
        )
    labels = lx.export_labels(lake.read_table(labels_key), images, classes)

    record = {
        "tool": "alumi export-labels",
        "format": fmt,
        "dataset_hash": dataset_hash,
        "classes": classes,
        "splits": {s: int((images["split"] == s).sum()) for s in chosen},
        "images": images.height,
        "boxes": labels.height,
        "images_copied": images.height if copy_images else 0,
    }
    with atomic_dir(out, replace=force) as tmp:
        if fmt == "coco":
            doc = lx.coco_document(images, labels, classes, dataset_hash)
            _write_text(tmp / lx.COCO_FILE, json.dumps(doc, indent=2))
        elif fmt == "labelstudio":
            _write_text(
                tmp / lx.LABEL_STUDIO_TASKS, json.dumps(lx.labelstudio_tasks(images, labels, classes), indent=2)
            )
            _write_text(tmp / lx.LABEL_STUDIO_CONFIG, lx.labelstudio_config(classes))
        else:
            if tuple(chosen) == SPLITS:
                (tmp / lx.DATA_YAML).write_bytes(data_yaml_bytes)
            else:
                doc = lx.yolo_data_yaml(data_yaml, chosen)
                _write_text(tmp / lx.DATA_YAML, yaml.safe_dump(doc, sort_keys=False))
            _copy_gold_files(lake, prefix, images["label_file"].to_list(), tmp)
        if copy_images:
            _copy_gold_files(lake, prefix, images["file"].to_list(), tmp)
        _write_text(tmp / lx.EXPORT_RECORD, json.dumps(record, indent=2))
    return {**record, "out": str(out)}


def _check_export_target(out: Path, force: bool) -> None:
    from alumi_pipelines.lib.vision.label_export import EXPORT_RECORD, LabelExportError

    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise LabelExportError(f"--out {out} exists and is not a folder: give a new or empty folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise LabelExportError(f"--out {out} is not empty: give a new or empty folder, or --force to replace it")
    if not (out / EXPORT_RECORD).is_file():
        raise LabelExportError(
            f"--out {out} is not empty and is not an earlier export (no {EXPORT_RECORD}): --force only replaces an "
            "export; give a new or empty folder"
        )


def _export_source(lake: Lake, dataset_hash: str | None) -> tuple[str, str]:
    """(gold prefix, dataset hash) of the dataset to export: ``dataset_hash``'s folder, else the current one."""
    from alumi_pipelines.lib.vision.label_export import LabelExportError, check_dataset_hash

    if dataset_hash is None:
        if not lake.exists(lake_keys.GOLD_POINTER):
            raise LabelExportError(
                f"no gold dataset yet ({lake.uri(lake_keys.GOLD_POINTER)} does not exist): materialise gold_dataset "
                "first (dagster asset materialize -m alumi_pipelines.definitions --select gold_dataset)"
            )
        pointer = read_gold_pointer(lake)
        return pointer["prefix"], pointer["dataset_hash"]
    dataset_hash = check_dataset_hash(dataset_hash)
    prefix = lake_keys.gold_prefix(dataset_hash)
    if not lake.exists(lake_keys.gold_manifest_key(prefix)):
        known = [
            h
            for h in lake.list_dirs(lake_keys.GOLD_DATASETS)
            if lake.exists(lake_keys.gold_manifest_key(lake_keys.gold_prefix(h)))
        ]
        listed = ", ".join(known[:5]) + (", ..." if len(known) > 5 else "") if known else "none"
        raise LabelExportError(
            f"unknown dataset hash {dataset_hash}: no complete gold dataset of that hash in the lake (known: "
            f"{listed}); give one of those, or omit --dataset for the current one"
        )
    return prefix, dataset_hash


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def _copy_gold_files(lake: Lake, prefix: str, rels: list[str], root: Path, threads: int = 8) -> None:
    """Copy files of a gold folder (paths relative to it) under ``root``, read through the lake."""
    from concurrent.futures import ThreadPoolExecutor

    def copy(rel: str) -> None:
        data = lake.read_bytes(lake_keys.gold_file_key(prefix, rel))  # refuses '..' and absolute paths
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(copy, rels))
