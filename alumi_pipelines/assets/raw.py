"""Raw zone: landing batches ingested into content-addressed images, a manifest and raw labels.

``raw_ingestion`` (assets ``raw_images`` + ``raw_labels``) calls :func:`ingest_landing_batch`, which reads
``landing/<batch>/`` through the lake and hands the bytes to ``lib.vision.ingest``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from dagster import (
    AssetExecutionContext,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from alumi_pipelines.assets.metadata import histogram_md
from alumi_pipelines.assets.pictures import quarantine_samples
from alumi_pipelines.partitions import ingestion_backfill, landing_batches
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


@multi_asset(
    specs=[
        AssetSpec(
            "raw_images",
            group_name="raw",
            owners=["team:data-engineering"],
            kinds={"parquet", "image"},
            description="Landing images checked (decodable, minimum size), stored by sha256 under raw/images, "
            "with a manifest table per batch; rejected files go to quarantine/ with their reason.",
        ),
        AssetSpec(
            "raw_labels",
            group_name="raw",
            owners=["team:data-engineering"],
            kinds={"parquet"},
            description="Every batch's annotations (alumi, YOLO, VOC, COCO, LabelMe) in the canonical label "
            "table, resolved against the class map; rejected records go to quarantine/.",
        ),
    ],
    partitions_def=landing_batches,
    backfill_policy=ingestion_backfill,
    can_subset=False,
)
def raw_ingestion(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings):
    """Ingest one or more landing batches (one partition each)."""
    totals = {"files": 0, "images": 0, "unique": 0, "boxes": 0, "quarantined": 0, "held_out": 0}
    classes: dict[str, int] = {}
    for batch in context.partition_keys:
        result = ingest_landing_batch(lake, batch, pipeline_settings, log=context.log.info)
        totals["images"] += len(result.manifest)
        totals["unique"] += len({m["image_id"] for m in result.manifest})
        totals["boxes"] += len(result.labels)
        totals["quarantined"] += len(result.rejections)
        totals["held_out"] += len(result.held_out)
        for row in result.labels:
            classes[row["class_name"]] = classes.get(row["class_name"], 0) + 1
        for note in result.notes[:20]:
            context.log.info(f"{batch}: {note}")
        for rej in result.rejections[:20]:
            context.log.warning(f"{batch}: quarantined {rej['path']}: {rej['reason']}")
        context.log.info(
            f"{batch}: {len(result.manifest)} images, {len(result.labels)} boxes, {len(result.rejections)} quarantined"
        )
    batches = list(context.partition_keys)
    yield MaterializeResult(
        asset_key="raw_images",
        metadata={
            "batches": MetadataValue.text(", ".join(batches[:10]) + (" …" if len(batches) > 10 else "")),
            "images": totals["images"],
            "unique_images": totals["unique"],
            "duplicates_in_batch": totals["images"] - totals["unique"],
            "quarantined": totals["quarantined"],
            "held_out_of_gold": totals["held_out"],
            "manifest": MetadataValue.path(lake.uri(lake_keys.raw_manifest_key(batches[0]))),
            **quarantine_samples(lake, batches, image_limits(pipeline_settings)),
        },
    )
    yield MaterializeResult(
        asset_key="raw_labels",
        metadata={
            "boxes": totals["boxes"],
            "class_histogram": MetadataValue.md(histogram_md(classes)),
            "table": MetadataValue.path(lake.uri(lake_keys.raw_labels_key(batches[0]))),
        },
    )


# -- landing → raw (zone I/O) ---------------------------------------------------------------------
@dataclass(frozen=True)
class LandingBatch:
    batch_id: str
    complete: bool  # its _batch.json marker exists
    files: int
    newest_mtime: float


def list_landing_batches(lake: Lake) -> list[LandingBatch]:
    """Every folder of landing/, with whether its marker says it is complete."""
    from alumi_pipelines.lib.vision.ingest import BATCH_ID

    batches: dict[str, list] = {}
    for f in lake.list_files(lake_keys.LANDING):
        parts = f.key.split("/", 2)
        if len(parts) < 3:
            continue
        batches.setdefault(parts[1], []).append(f)
    out = []
    for batch_id, files in sorted(batches.items()):
        if not BATCH_ID.match(batch_id) or f"{lake_keys.LANDING}/{batch_id}" == lake_keys.PLANT_LANDING:
            continue
        complete = any(f.key.endswith(f"/{lake_keys.BATCH_MARKER}") and f.key.count("/") == 2 for f in files)
        out.append(LandingBatch(batch_id, complete, len(files), max(f.mtime for f in files)))
    return out


def write_landing_file(lake: Lake, batch: str, path: str, data: bytes) -> str:
    return lake.write_bytes(lake_keys.landing_key(batch, path), data)


def ingest_landing_batch(lake: Lake, batch: str, settings: PipelineSettings, log: Callable | None = None):
    """landing/<batch> → raw images, raw manifest, raw labels and quarantine (tables always written); progress of
    the images read through ``log``."""
    import polars as pl

    from alumi_pipelines.lib.vision import ingest
    from alumi_pipelines.lib.vision.formats import IMAGE_SUFFIXES
    from alumi_pipelines.lib.vision.labels import label_schema

    ingest.check_batch_id(batch)
    prefix = lake_keys.landing_prefix(batch)
    marker_key = lake_keys.batch_marker_key(batch)

    def marker_bytes() -> bytes | None:
        try:
            return lake.read_bytes(marker_key)
        except FileNotFoundError:
            return None

    # the batch's listing, its marker and the raw images' listing at once: one round trip on an object store
    listed, marker_data, may_be_absent = lake.gather(
        lambda: [f.key for f in lake.list_files(prefix)],
        marker_bytes,
        lambda: lake.absent_filter(lake_keys.RAW_IMAGES),  # listed once: a known image costs no request
    )
    if not listed:
        raise ingest.BatchError(f"{prefix}/: the batch folder is empty or missing")
    rel = [k[len(prefix) + 1 :] for k in listed]
    if ingest.BATCH_MARKER not in rel or marker_data is None:
        raise ingest.BatchError(f"{marker_key}: missing; the batch is not complete yet")
    marker = ingest.read_marker(marker_key, marker_data)

    # annotation files are read by the parser one after another: fetch them all at once first
    annotations = lake.read_many(
        lake_keys.landing_key(batch, p)
        for p in rel
        if PurePosixPath(p).suffix.lower() in ingest.ANNOTATION_SUFFIXES and p != ingest.BATCH_MARKER
    )

    images = sum(PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES for p in rel)
    progress = settings.progress(f"ingest {batch}", images, log) if log else None

    def read(path: str) -> bytes:
        key = lake_keys.landing_key(batch, path)
        data = annotations.get(key)
        if data is not None:
            return data
        data = lake.read_bytes(key)
        if progress is not None and PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES:
            progress.advance(1, len(data))
        return data

    cache = None if lake.is_local else settings.cache()  # processing on this machine then reads no raw image
    with lake.background() as submit:

        def store(image_id: str, ext: str, data: bytes) -> None:
            key = lake_keys.raw_image_key(image_id, ext)
            if cache is not None:
                cache.put(image_id, data)
            if may_be_absent(key):
                submit(lake.write_if_absent, key, data)

        result = ingest.ingest_batch(
            batch,
            marker,
            rel,
            read,
            settings.class_map(marker.get("classes")),
            min_side=settings.min_image_side,
            store=store,
            workers=lake.io_workers(settings.workers),
            chunk=lake.io_chunk(),
            limits=image_limits(settings),
        )
    if progress is not None:
        progress.finish()
    manifest_schema = {
        c: (pl.Int64 if c in ("width", "height", "channels", "bytes") else pl.Boolean if c == "labelled" else pl.Utf8)
        for c in ingest.MANIFEST_COLUMNS
    }
    labels = (
        pl.DataFrame(result.labels, schema=label_schema(), orient="row")
        if result.labels
        else pl.DataFrame(schema=label_schema())
    )
    sort = ["image_id", "source_file", "class_id", "x_center", "y_center"]
    # the labels and the quarantine at once (one round trip on an object store), then the manifest: a batch with a
    # manifest has its labels
    lake.gather(
        lambda: lake.write_table(lake_keys.raw_labels_key(batch), labels.sort(sort)),
        lambda: write_quarantine(lake, batch, result.rejections, read),
    )
    lake.write_table(
        lake_keys.raw_manifest_key(batch), pl.DataFrame(result.manifest, schema=manifest_schema, orient="row")
    )
    return result


def image_limits(settings: PipelineSettings):
    """The decoding bounds of the settings (pixels and decoded bytes, checked from each image's header)."""
    from alumi_pipelines.lib.vision.imaging import Limits

    return Limits(max_pixels=settings.max_image_pixels, max_decoded_bytes=settings.max_decoded_bytes)


def write_quarantine(lake: Lake, batch: str, rejections: list[dict], read) -> None:
    """Copy each rejected file's original bytes to quarantine/ and write the reasons table."""
    import polars as pl

    from alumi_pipelines.lib.vision.ingest import REJECTION_COLUMNS
    from alumi_pipelines.resources.lake import LakeKeyError, check_key

    def copy(path: str) -> None:
        try:
            key = lake_keys.quarantine_file_key(batch, check_key(path))
            data = read(path)
        except (LakeKeyError, FileNotFoundError):
            return  # a name that points outside the batch, or a file the annotation only mentions
        lake.write_bytes(key, data)

    lake.map(copy, sorted({rej["path"] for rej in rejections}))
    table = pl.DataFrame(rejections, schema={c: pl.Utf8 for c in REJECTION_COLUMNS}, orient="row")
    lake.write_table(lake_keys.quarantine_table_key(batch), table.sort(["path", "stage", "reason"]))
