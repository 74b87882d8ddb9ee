"""Partitions shared by assets, jobs and sensors."""

from dagster import DynamicPartitionsDefinition

# One partition per landing batch (a folder of landing/ whose _batch.json marks it complete).
landing_batches = DynamicPartitionsDefinition(name="landing_batches")
