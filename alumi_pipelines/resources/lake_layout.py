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
CHAMPION_RECORD = "models/champion.json"  # {version, dataset_hash, promoted_at, trained_at}: read by sensors
CORRECTIONS_INCOMING = "corrections/incoming"
CORRECTIONS_VALIDATED = "corrections/validated/corrections.parquet"
CORRECTIONS_OVERLAY = "corrections/applied/overlay.parquet"
CORRECTIONS_CHANGES = "corrections/applied/changes.parquet"
CORRECTIONS_REJECTIONS = "quarantine/corrections/rejections.parquet"
DRIFT_LATEST = "reports/drift/latest.json"


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


# -- models: evaluations, exports ------------------------------------------------------------------
def evaluation_key(version: str) -> str:
    return f"models/evaluations/{version}.json"


def gate_key(version: str) -> str:
    return f"models/evaluations/{version}.gate.json"


def plot_key(version: str, name: str) -> str:
    return f"models/evaluations/{version}/{name}"


def onnx_prefix(model_version: str) -> str:
    return f"models/onnx/{model_version}"


def export_record_key(model_version: str) -> str:
    return f"{onnx_prefix(model_version)}/export.json"


def parity_record_key(model_version: str) -> str:
    return f"{onnx_prefix(model_version)}/parity.json"


def int8_record_key(model_version: str) -> str:
    return f"{onnx_prefix(model_version)}/int8.json"


def plan_key(model_version: str) -> str:
    return f"{onnx_prefix(model_version)}/tensorrt_plan.json"


def engine_key(model_version: str, file_name: str) -> str:
    return f"models/tensorrt/{model_version}/{file_name}"


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
        if not BATCH_ID.match(batch_id) or batch_id == "process":  # landing/process/ is the historian's zone
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
    ids, formats, widths, heights, channels = (
        per_image[c].to_list() for c in ("image_id", "format", "width", "height", "channels")
    )

    def work(i: int):
        # read, normalise and write in the worker: file creation is slow on some disks and releases the GIL
        image_id, fmt = ids[i], formats[i]
        raw_key = raw_image_key(image_id, ".jpg" if fmt == "jpeg" else f".{fmt}")
        data = lake.read_bytes(raw_key)
        info = imaging.ImageInfo(widths[i], heights[i], channels[i], fmt)
        processed = imaging.normalise(data, info, settings.image_size, image_id=image_id)
        key = processed_image_key(image_id)
        if processed.data is data:  # already conforming: the processed zone shares the raw object
            new = lake.copy(raw_key, key)
        else:
            new = not lake.exists(key)
            if new:
                lake.write_bytes(key, processed.data)
        return processed.width, processed.height, processed.features, new  # not the bytes: a batch can be large

    results = list(imaging.parallel_map(work, range(len(ids)), settings.workers))
    written = sum(r[3] for r in results)
    features = _empty_features()
    if results:
        features = per_image.rename({"width": "orig_width", "height": "orig_height"}).with_columns(
            pl.lit(batch).alias("batch"),
            pl.Series("width", [r[0] for r in results], pl.Int64),
            pl.Series("height", [r[1] for r in results], pl.Int64),
            *(pl.Series(c, [r[2][c] for r in results], pl.Float64) for c in imaging.FEATURE_COLUMNS),
        ).select(features.columns).cast(features.schema)
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
    means = {c: round(float(features[c].mean() or 0.0), 3) for c in imaging.FEATURE_COLUMNS} if results else {}
    return ProcessedBatch(len(results), written, labels.height, counts, means)


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


def build_gold(lake: Lake, settings: PipelineSettings) -> GoldInfo:
    """All processed batches (+ applied corrections) → a split YOLO dataset named by its content hash."""
    import polars as pl
    import yaml

    from alumi_pipelines.lib import gold
    from alumi_pipelines.lib.corrections import corrected_labels

    features, labels = read_processed(lake)
    if lake.exists(CORRECTIONS_OVERLAY) and lake.exists(CORRECTIONS_CHANGES):
        changes = lake.read_table(CORRECTIONS_CHANGES)
        labels = corrected_labels(labels, lake.read_table(CORRECTIONS_OVERLAY), changes)
        # an image a correction touched is labelled from now on, even if it arrived unlabelled
        touched = changes["image_id"].unique().implode()
        features = features.with_columns(pl.col("labelled") | pl.col("image_id").is_in(touched))
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


# -- corrections -----------------------------------------------------------------------------------
@dataclass
class CorrectionsSummary:
    files: int
    records: int
    valid: int
    rejected: int
    applied: int
    no_match: int
    by_origin: dict[str, int]
    by_level: dict[str, int]
    rejections: list[dict]


def apply_corrections(lake: Lake, settings: PipelineSettings) -> CorrectionsSummary:
    """Every file in corrections/incoming → validated table, rejections, and the applied overlay + changes.

    Recomputed from all incoming files on every run, so applying the same corrections again changes nothing.
    """
    from alumi_pipelines.lib import corrections as corr

    features, labels = read_processed(lake)
    images = features.unique("image_id", keep="first", maintain_order=True).select(
        "image_id", "orig_width", "orig_height", "batch"
    )
    names = _image_names(lake)
    files = [f for f in lake.list_files(CORRECTIONS_INCOMING) if f.key.rsplit(".", 1)[-1] in ("jsonl", "json", "csv")]
    records, rejects = [], []
    for f in files:
        recs, bad = corr.parse_incoming(f.key.rsplit("/", 1)[-1], lake.read_bytes(f.key), names=names)
        records.extend(recs)
        rejects.extend(bad)
    valid, invalid = corr.validate(records, images, list(settings.classes))
    rejects.extend(invalid)
    lake.write_table(CORRECTIONS_VALIDATED, corr.corrections_frame(valid))
    lake.write_table(CORRECTIONS_REJECTIONS, corr.rejects_frame(rejects))
    overlay, changes = corr.apply(labels, valid, list(settings.classes))
    lake.write_table(CORRECTIONS_OVERLAY, overlay)
    lake.write_table(CORRECTIONS_CHANGES, changes)
    count = lambda col: dict(changes.group_by(col).len().sort(col).iter_rows()) if changes.height else {}  # noqa: E731
    results = count("result")
    return CorrectionsSummary(
        files=len(files), records=len(records), valid=len(valid), rejected=len(rejects),
        applied=results.get("applied", 0), no_match=results.get("no_match", 0),
        by_origin=count("origin"), by_level=count("level"), rejections=rejects[:50],
    )


def _image_names(lake: Lake) -> dict[str, str]:
    """Original file name (full landing path and base name) → image_id, from every raw manifest."""
    names: dict[str, str] = {}
    manifests = [f.key for f in lake.list_files("raw/manifests") if f.key.endswith(".parquet")]
    table = lake.read_tables(manifests)
    if table is None:
        return names
    for batch, path, image_id in table.select("batch", "source_path", "image_id").iter_rows():
        names[f"{batch}/{path}"] = image_id
        names.setdefault(path.rsplit("/", 1)[-1], image_id)
    return names


def read_validated_corrections(lake: Lake):
    return lake.read_table(CORRECTIONS_VALIDATED) if lake.exists(CORRECTIONS_VALIDATED) else None


# -- champion ----------------------------------------------------------------------------------------
def write_champion_record(lake: Lake, record: dict) -> None:
    """The registry's champion, mirrored in the lake so sensors can read it without importing mlflow."""
    lake.write_json(CHAMPION_RECORD, {**record, "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat()})


def sync_champion_record(lake: Lake, registry) -> dict | None:
    """Rewrite the champion record from the registry (after `alumi promote` / `alumi rollback`)."""
    version = registry.alias_version("champion")
    if version is None:
        lake.delete(CHAMPION_RECORD)
        return None
    info = registry.version(version)
    record = {"model_name": registry.model_name, "version": version, "previous": registry.alias_version("previous"),
              "run_id": info.run_id, "dataset_hash": info.tags.get("dataset_hash"), "trained_at": info.created_at}
    write_champion_record(lake, record)
    return record


# -- drift -------------------------------------------------------------------------------------------
def champion_record(lake: Lake) -> dict | None:
    return lake.read_json(CHAMPION_RECORD) if lake.exists(CHAMPION_RECORD) else None


def drift_inputs(lake: Lake, recent_batches: int):
    """(reference features, current features, reference description, current batches).

    The reference is the train split of the champion's gold dataset (or of the current gold dataset when
    there is no champion yet); the current set is the most recently processed batches.
    """
    import polars as pl

    champion = champion_record(lake)
    pointer = read_gold_pointer(lake)
    dataset_hash = (champion or {}).get("dataset_hash") or pointer["dataset_hash"]
    manifest_key = f"{gold_prefix(dataset_hash)}/manifest.parquet"
    if not lake.exists(manifest_key):
        dataset_hash, manifest_key = pointer["dataset_hash"], f"{pointer['prefix']}/manifest.parquet"
    train_ids = lake.read_table(manifest_key).filter(pl.col("split") == "train")["image_id"].implode()
    files = sorted(
        (f for f in lake.list_files("processed/features") if f.key.endswith(".parquet")), key=lambda f: (f.mtime, f.key)
    )
    current_batches = [PurePosixPath(f.key).stem for f in files[-recent_batches:]]
    features, _ = read_processed(lake)
    reference = features.filter(pl.col("image_id").is_in(train_ids)).unique("image_id", maintain_order=True)
    current = features.filter(pl.col("batch").is_in(current_batches))
    return reference, current, f"gold {dataset_hash[:12]} train split" + (" (champion)" if champion else ""), current_batches


def write_drift_report(lake: Lake, report_id: str, html: bytes, summary: dict) -> dict:
    """reports/drift/<id>.html + .json, then latest.json (what the drift sensor reads)."""
    html_key = lake.write_bytes(f"reports/drift/{report_id}.html", html)
    json_key = lake.write_json(f"reports/drift/{report_id}.json", summary)
    latest = {"report_id": report_id, "passed": summary["passed"], "drift_share": summary["drift_share"],
              "html": html_key, "json": json_key, "batches": summary.get("batches", [])}
    lake.write_json(DRIFT_LATEST, latest)
    return latest


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
