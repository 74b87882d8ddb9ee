"""Every partitions definition: the asset modules, jobs, sensors and the CLI import them from here."""

from dagster import BackfillPolicy, DailyPartitionsDefinition, DynamicPartitionsDefinition

from alumi_pipelines.settings import backfill_partitions_per_run

# One partition per landing batch (a folder of landing/ whose _batch.json marks it complete), registered by
# landing_sensor or `alumi batches`.
landing_batches = DynamicPartitionsDefinition(name="landing_batches")

# The plant branch: one UTC calendar day per partition. The historian exports one file per day and line, so a
# day is the natural unit of new data; day keys are known in advance, so a schedule or CI can target
# "yesterday" or a range without registering anything. Only finished days exist as partitions.
PLANT_START_DATE = "2024-01-01"  # first day a partition exists for; older historian days need an earlier date
plant_days = DailyPartitionsDefinition(start_date=PLANT_START_DATE, timezone="UTC")

# Edge predictions: one UTC calendar day per partition, every device's hourly prediction logs of that day
# (predictions/<device>/<day>/). Only finished days exist as partitions; a device that syncs late is picked up
# by materialising its day again.
PREDICTION_START_DATE = "2026-01-01"  # first day a partition exists for; older logs need an earlier date
prediction_days = DailyPartitionsDefinition(start_date=PREDICTION_START_DATE, timezone="UTC")

# How the ingestion assets (raw + processed of landing batches, the plant branch's raw + features of days) back-fill:
# a backfill of many partitions becomes several runs of at most ALUMI_BACKFILL_PARTITIONS_PER_RUN partitions each,
# which the run queue executes side by side (its `dagster/backfill` limit, see dagster.yaml). Assets that run in
# one run share one policy. A run that names a range itself (`alumi batches --tags`, CI) still covers it whole.
ingestion_backfill = BackfillPolicy.multi_run(backfill_partitions_per_run())
