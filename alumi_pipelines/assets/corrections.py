"""Corrections zone: operator feedback from edge devices and QA relabels, validated and applied.

``label_corrections`` calls :func:`apply_corrections`: every file of ``corrections/incoming/`` parsed,
validated and applied by ``lib.vision.corrections``; the validated table, overlay and changes out.
"""

from dataclasses import dataclass

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from alumi_pipelines.assets.metadata import counts_md
from alumi_pipelines.assets.processed import read_processed
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


@asset(
    deps=["processed_labels"],
    group_name="corrections",
    owners=["team:quality"],
    kinds={"parquet"},
    description="Every file in corrections/incoming/ (edge feedback JSONL from `alumi-edge sync`, QA COCO "
    "exports, QA CSV) parsed and validated (known image, box inside it, known class, author, timestamp, "
    "unique ids); rejects are quarantined with their reason; the rest is applied to the labels with "
    "provenance. Conflict rule: QA beats operator, newer beats older. gold_dataset uses the result.",
)
def label_corrections(
    context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings
) -> MaterializeResult:
    summary = apply_corrections(lake, pipeline_settings)
    for rej in summary.rejections[:20]:
        context.log.warning(
            f"rejected correction {rej.get('record_id') or ''} in {rej['file']}"
            f"{':' + str(rej['line']) if rej.get('line') else ''}: {rej['reason']}"
        )
    return MaterializeResult(
        metadata={
            "incoming_files": summary.files,
            "records": summary.records,
            "valid": summary.valid,
            "rejected": summary.rejected,
            "applied": summary.applied,
            "no_match": summary.no_match,
            "by_source": MetadataValue.md(counts_md("source", summary.by_origin)),
            "by_level": MetadataValue.md(counts_md("level", summary.by_level)),
            "changes": MetadataValue.path(lake.uri(lake_keys.CORRECTIONS_CHANGES)),
            "rejections": MetadataValue.path(lake.uri(lake_keys.CORRECTIONS_REJECTIONS)),
        }
    )


# -- corrections/incoming → validated + applied (zone I/O) ----------------------------------------
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
    from alumi_pipelines.lib.vision import corrections as corr

    features, labels = read_processed(lake)
    images = features.unique("image_id", keep="first", maintain_order=True).select(
        "image_id", "orig_width", "orig_height", "batch"
    )
    names = _image_names(lake)
    files = [
        f
        for f in lake.list_files(lake_keys.CORRECTIONS_INCOMING)
        if f.key.rsplit(".", 1)[-1] in ("jsonl", "json", "csv")
    ]
    records, rejects = [], []
    for f in files:
        recs, bad = corr.parse_incoming(f.key.rsplit("/", 1)[-1], lake.read_bytes(f.key), names=names)
        records.extend(recs)
        rejects.extend(bad)
    valid, invalid = corr.validate(records, images, list(settings.classes), max_pixels=settings.max_image_pixels)
    rejects.extend(invalid)
    lake.write_table(lake_keys.CORRECTIONS_VALIDATED, corr.corrections_frame(valid))
    lake.write_table(lake_keys.CORRECTIONS_REJECTIONS, corr.rejects_frame(rejects))
    overlay, changes = corr.apply(labels, valid, list(settings.classes))
    lake.write_table(lake_keys.CORRECTIONS_OVERLAY, overlay)
    lake.write_table(lake_keys.CORRECTIONS_CHANGES, changes)
    count = lambda col: dict(changes.group_by(col).len().sort(col).iter_rows()) if changes.height else {}  # noqa: E731
    results = count("result")
    return CorrectionsSummary(
        files=len(files),
        records=len(records),
        valid=len(valid),
        rejected=len(rejects),
        applied=results.get("applied", 0),
        no_match=results.get("no_match", 0),
        by_origin=count("origin"),
        by_level=count("level"),
        rejections=rejects[:50],
    )


def _image_names(lake: Lake) -> dict[str, str]:
    """Original file name (full landing path and base name) → image_id, from every raw manifest."""
    names: dict[str, str] = {}
    manifests = [f.key for f in lake.list_files(lake_keys.RAW_MANIFESTS) if f.key.endswith(".parquet")]
    table = lake.read_tables(manifests)
    if table is None:
        return names
    for batch, path, image_id in table.select("batch", "source_path", "image_id").iter_rows():
        names[f"{batch}/{path}"] = image_id
        names.setdefault(path.rsplit("/", 1)[-1], image_id)
    return names


def read_validated_corrections(lake: Lake):
    return lake.read_table(lake_keys.CORRECTIONS_VALIDATED) if lake.exists(lake_keys.CORRECTIONS_VALIDATED) else None
