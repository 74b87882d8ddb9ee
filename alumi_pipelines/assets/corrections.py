"""Corrections zone: operator feedback from edge devices and QA relabels, validated and applied."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from alumi_pipelines.resources import lake_layout as layout
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


def _counts_md(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"_no {title}_"
    return f"| {title} | corrections |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items()))


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
def label_corrections(context: AssetExecutionContext, lake: Lake, pipeline_settings: PipelineSettings) -> MaterializeResult:
    summary = layout.apply_corrections(lake, pipeline_settings)
    for rej in summary.rejections[:20]:
        context.log.warning(f"rejected correction {rej.get('record_id') or ''} in {rej['file']}"
                            f"{':' + str(rej['line']) if rej.get('line') else ''}: {rej['reason']}")
    return MaterializeResult(
        metadata={
            "incoming_files": summary.files,
            "records": summary.records,
            "valid": summary.valid,
            "rejected": summary.rejected,
            "applied": summary.applied,
            "no_match": summary.no_match,
            "by_source": MetadataValue.md(_counts_md("source", summary.by_origin)),
            "by_level": MetadataValue.md(_counts_md("level", summary.by_level)),
            "changes": MetadataValue.path(lake.uri(layout.CORRECTIONS_CHANGES)),
            "rejections": MetadataValue.path(lake.uri(layout.CORRECTIONS_REJECTIONS)),
        }
    )
