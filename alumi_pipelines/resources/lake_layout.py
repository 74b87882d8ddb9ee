"""Where each zone keeps what, and the zone-to-zone moves that combine the lake with pure logic.

Assets call these functions; this module is the only place that knows the lake's key layout.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

GOLD_POINTER = "gold/current.json"


# -- keys ------------------------------------------------------------------------------------------
def landing_prefix(batch: str) -> str:
    return f"landing/{batch}"


def raw_image_key(image_id: str, ext: str) -> str:
    return f"raw/images/{image_id[:2]}/{image_id}{ext}"


def raw_manifest_key(batch: str) -> str:
    return f"raw/manifests/{batch}.parquet"


def raw_labels_key(batch: str) -> str:
    return f"raw/labels/{batch}.parquet"


def quarantine_table_key(batch: str) -> str:
    return f"quarantine/{batch}/rejections.parquet"


def quarantine_file_key(batch: str, path: str) -> str:
    return f"quarantine/{batch}/files/{path}"


def processed_image_key(image_id: str) -> str:
    return f"processed/images/{image_id[:2]}/{image_id}.jpg"


def processed_features_key(batch: str) -> str:
    return f"processed/features/{batch}.parquet"


def processed_labels_key(batch: str) -> str:
    return f"processed/labels/{batch}.parquet"


def gold_prefix(dataset_hash: str) -> str:
    return f"gold/datasets/{dataset_hash}"


# -- landing ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LandingBatch:
    batch_id: str
    complete: bool  # its _batch.json marker exists
    files: int
    newest_mtime: float


def list_landing_batches(lake: Lake) -> list[LandingBatch]:
    """Every folder of landing/, with whether its marker says it is complete."""
    from alumi_pipelines.lib.ingest import BATCH_ID, BATCH_MARKER

    batches: dict[str, list] = {}
    for f in lake.list_files("landing"):
        parts = f.key.split("/", 2)
        if len(parts) < 3:
            continue
        batches.setdefault(parts[1], []).append(f)
    out = []
    for batch_id, files in sorted(batches.items()):
        if not BATCH_ID.match(batch_id):
            continue
        complete = any(f.key.endswith(f"/{BATCH_MARKER}") and f.key.count("/") == 2 for f in files)
        out.append(LandingBatch(batch_id, complete, len(files), max(f.mtime for f in files)))
    return out


def write_landing_file(lake: Lake, batch: str, path: str, data: bytes) -> str:
    return lake.write_bytes(f"{landing_prefix(batch)}/{path}", data)


# -- raw -------------------------------------------------------------------------------------------
def ingest_landing_batch(lake: Lake, batch: str, settings: PipelineSettings):
    """landing/<batch> → raw images, raw manifest, raw labels and quarantine (tables always written)."""
    import polars as pl

    from alumi_pipelines.lib import ingest
    from alumi_pipelines.lib.labels import label_schema

    ingest.check_batch_id(batch)
    prefix = landing_prefix(batch)
    keys = [f.key for f in lake.list_files(prefix)]
    if not keys:
        raise ingest.BatchError(f"{prefix}/: the batch folder is empty or missing")
    rel = [k[len(prefix) + 1 :] for k in keys]
    if ingest.BATCH_MARKER not in rel:
        raise ingest.BatchError(f"{prefix}/{ingest.BATCH_MARKER}: missing; the batch is not complete yet")
    marker = ingest.read_marker(batch, lake.read_bytes(f"{prefix}/{ingest.BATCH_MARKER}"))

    def store(image_id: str, ext: str, data: bytes) -> None:
        key = raw_image_key(image_id, ext)
        if not lake.exists(key):
            lake.write_bytes(key, data)

    result = ingest.ingest_batch(
        batch, marker, rel, lambda p: lake.read_bytes(f"{prefix}/{p}"),
        settings.class_map(marker.get("classes")),
        min_side=settings.min_image_side, store=store, workers=settings.workers,
    )
    manifest_schema = {
        c: (pl.Int64 if c in ("width", "height", "channels", "bytes") else pl.Boolean if c == "labelled" else pl.Utf8)
        for c in ingest.MANIFEST_COLUMNS
    }
    lake.write_table(raw_manifest_key(batch), pl.DataFrame(result.manifest, schema=manifest_schema, orient="row"))
    labels = pl.DataFrame(result.labels, schema=label_schema(), orient="row") if result.labels else pl.DataFrame(schema=label_schema())
    lake.write_table(raw_labels_key(batch), labels.sort(["image_id", "source_file", "class_id", "x_center", "y_center"]))
    write_quarantine(lake, batch, result.rejections, lambda p: lake.read_bytes(f"{prefix}/{p}"))
    return result


def write_quarantine(lake: Lake, batch: str, rejections: list[dict], read) -> None:
    """Copy each rejected file's original bytes to quarantine/ and write the reasons table."""
    import polars as pl

    from alumi_pipelines.lib.ingest import REJECTION_COLUMNS
    from alumi_pipelines.resources.lake import LakeKeyError, check_key

    copied = set()
    for rej in rejections:
        path = rej["path"]
        if path in copied:
            continue
        copied.add(path)
        try:
            key = quarantine_file_key(batch, check_key(path))
            data = read(path)
        except (LakeKeyError, FileNotFoundError):
            continue  # a name that points outside the batch, or a file the annotation only mentions
        lake.write_bytes(key, data)
    table = pl.DataFrame(rejections, schema={c: pl.Utf8 for c in REJECTION_COLUMNS}, orient="row")
    lake.write_table(quarantine_table_key(batch), table.sort(["path", "stage", "reason"]))


# -- processed -------------------------------------------------------------------------------------
@dataclass
class ProcessedBatch:
    images: int
    written: int
    boxes: int
    class_counts: dict[str, int]
    feature_means: dict[str, float]


def process_batch(lake: Lake, batch: str, settings: PipelineSettings) -> ProcessedBatch:
    """raw images of a batch → normalised JPEGs + a features table; raw labels → processed labels."""
    import polars as pl

    from alumi_pipelines.lib import imaging
    from alumi_pipelines.lib.labels import ClassMap

    manifest = lake.read_table(raw_manifest_key(batch))
    per_image = (
        manifest.sort("source_path")
        .group_by("image_id", maintain_order=True)
        .agg(
            pl.first("format", "width", "height", "channels", "line_id", "camera_id", "captured_at"),
            pl.col("labelled").any(),
            pl.len().alias("copies"),
        )
    )
    rows = per_image.to_dicts()

    def work(row: dict):
        # read, normalise and write in the worker: file creation is slow on some disks and releases the GIL
        ext = ".jpg" if row["format"] == "jpeg" else f".{row['format']}"
        data = lake.read_bytes(raw_image_key(row["image_id"], ext))
        info = imaging.ImageInfo(row["width"], row["height"], row["channels"], row["format"])
        processed = imaging.normalise(data, info, settings.image_size, image_id=row["image_id"])
        key = processed_image_key(row["image_id"])
        new = not lake.exists(key)
        if new:
            lake.write_bytes(key, processed.data)
        return row, processed, new

    written = 0
    out = []
    for row, processed, new in imaging.parallel_map(work, rows, settings.workers):
        written += new
        out.append(
            {
                "image_id": row["image_id"],
                "batch": batch,
                "orig_width": row["width"],
                "orig_height": row["height"],
                "channels": row["channels"],
                "width": processed.width,
                "height": processed.height,
                "labelled": row["labelled"],
                "copies": row["copies"],
                "line_id": row["line_id"],
                "camera_id": row["camera_id"],
                "captured_at": row["captured_at"],
                **processed.features,
            }
        )
    features = pl.DataFrame(out, orient="row", infer_schema_length=None) if out else _empty_features()
    lake.write_table(processed_features_key(batch), features)

    labels = lake.read_table(raw_labels_key(batch))
    cmap = ClassMap.of(settings.classes)
    labels = (
        labels.filter(pl.col("image_id").is_in(features["image_id"].implode()))
        .filter(pl.col("class_name").is_in(list(cmap.names)))
        .unique(subset=["image_id", "class_id", "x_center", "y_center", "width", "height", "source_file"], maintain_order=True)
        .sort(["image_id", "source_file", "class_id", "x_center", "y_center"])
    )
    lake.write_table(processed_labels_key(batch), labels)
    counts = dict(labels.group_by("class_name").len().sort("class_name").iter_rows())
    means = {c: round(float(features[c].mean() or 0.0), 3) for c in imaging.FEATURE_COLUMNS} if out else {}
    return ProcessedBatch(len(out), written, labels.height, counts, means)


def _empty_features():
    import polars as pl

    from alumi_pipelines.lib.imaging import FEATURE_COLUMNS

    schema: dict[str, Any] = {"image_id": pl.Utf8, "batch": pl.Utf8}
    schema.update({c: pl.Int64 for c in ("orig_width", "orig_height", "channels", "width", "height")})
    schema.update({"labelled": pl.Boolean, "copies": pl.UInt32})
    schema.update({c: pl.Utf8 for c in ("line_id", "camera_id", "captured_at")})
    schema.update({c: pl.Float64 for c in FEATURE_COLUMNS})
    return pl.DataFrame(schema=schema)


def read_processed(lake: Lake, batches: list[str] | None = None):
    """(features, labels) of the given processed batches, or of all of them."""
    import polars as pl

    from alumi_pipelines.lib.labels import empty_labels

    if batches is None:
        batches = [PurePosixPath(f.key).stem for f in lake.list_files("processed/features") if f.key.endswith(".parquet")]
    features = lake.read_tables([processed_features_key(b) for b in batches])
    labels = lake.read_tables([processed_labels_key(b) for b in batches if lake.exists(processed_labels_key(b))])
    return (features if features is not None else _empty_features()), (labels if labels is not None else empty_labels())


# -- gold ------------------------------------------------------------------------------------------
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

    def pointer(self) -> dict:
        return {
            "dataset_hash": self.dataset_hash,
            "prefix": self.prefix,
            "classes": self.classes,
            "counts": self.counts,
            "class_counts": self.class_counts,
            "conflicts": len(self.conflicts),
        }


def build_gold(lake: Lake, settings: PipelineSettings, corrected_labels=None) -> GoldInfo:
    """All processed batches (+ applied corrections) → a split YOLO dataset named by its content hash."""
    import yaml

    from alumi_pipelines.lib import gold

    features, labels = read_processed(lake)
    if corrected_labels is not None:
        labels = corrected_labels
    plan = gold.plan_dataset(features, labels, list(settings.classes), seed=settings.split_seed)
    prefix = gold_prefix(plan.dataset_hash)
    info = GoldInfo(
        dataset_hash=plan.dataset_hash,
        prefix=prefix,
        classes=list(settings.classes),
        counts=plan.counts,
        class_counts=plan.class_counts,
        conflicts=plan.conflicts,
        moved=plan.moved,
    )
    manifest_key = f"{prefix}/manifest.parquet"
    if lake.exists(manifest_key):
        info.reused = True
    else:
        for row in plan.manifest.iter_rows(named=True):
            image = lake.read_bytes(processed_image_key(row["image_id"]))
            lake.write_bytes(f"{prefix}/{row['file']}", image)
            lake.write_bytes(f"{prefix}/{row['label_file']}", plan.label_text[row["image_id"]].encode())
        data_yaml = {
            "path": ".",
            "train": "images/train",
            "val": "images/val",
            "test": "images/test",
            "names": dict(enumerate(settings.classes)),
        }
        lake.write_bytes(f"{prefix}/data.yaml", yaml.safe_dump(data_yaml, sort_keys=False).encode())
        lake.write_table(f"{prefix}/labels.parquet", plan.labels)
        lake.write_table(manifest_key, plan.manifest)  # written last: its presence means complete
    lake.write_json(GOLD_POINTER, {**info.pointer(), "updated_at": dt.datetime.now(dt.timezone.utc).isoformat()})
    return info


def read_gold_pointer(lake: Lake) -> dict:
    if not lake.exists(GOLD_POINTER):
        raise FileNotFoundError(f"{GOLD_POINTER}: no gold dataset yet; materialise gold_dataset first")
    return lake.read_json(GOLD_POINTER)


def read_gold_manifest(lake: Lake):
    return lake.read_table(f"{read_gold_pointer(lake)['prefix']}/manifest.parquet")


def histogram_md(counts: dict[str, int]) -> str:
    """A markdown table with a bar per class."""
    if not counts:
        return "_no boxes_"
    top = max(counts.values()) or 1
    lines = ["| class | boxes | |", "| --- | ---: | --- |"]
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {name} | {n} | {'█' * max(1, round(20 * n / top))} |")
    return "\n".join(lines)
