"""Jobs users and CI run by name (see DESIGN.md: names other parts rely on)."""

from dagster import AssetSelection, define_asset_job

from alumi_pipelines.partitions import landing_batches

INGESTION = AssetSelection.groups("raw", "processed")

ingestion_job = define_asset_job(
    "ingestion_job",
    selection=INGESTION,
    partitions_def=landing_batches,
    description="Landing batches → raw (quarantine) → processed. One partition per landing batch; a run may "
    "cover a range of batches (tags dagster/asset_partition_range_start/_end, see `alumi batches --tags`).",
)

end_to_end_job = define_asset_job(
    "end_to_end_job",
    selection=AssetSelection.all() - AssetSelection.groups("process"),
    partitions_def=landing_batches,
    description="Everything on the vision branch for the given batches: ingestion, gold, and every stage "
    "downstream of it that exists.",
)

JOBS = [ingestion_job, end_to_end_job]
