"""The plant branch (casting and rolling sensor data): historian samples → features per part → risk dataset →
XGBoost model → gate → champion, plus feature drift. One module per stage, each with its Dagster definitions
and the zone-to-zone function that does the work (pure logic lives in ``lib.plant``):

- ``sensor_raw``: ``plant_sensor_raw`` (group ``plant_raw``), landing/plant/<day>/ → raw + quarantine;
  also the simulated demo data for that landing folder (``alumi plant-demo-data``, ``alumi plant-days``).
- ``sensor_features``: ``plant_sensor_features`` (group ``plant_features``), raw → windowed features per part.
- ``risk_dataset``: ``defect_risk_dataset`` (group ``plant_risk``), features + inspection outcomes → gold.
- ``risk_model``: ``defect_risk_model`` (group ``plant_risk``), gold → XGBoost model registered in MLflow as
  ``alumi-defect-risk``; also the registry helpers (``risk_registry``, ``register_risk_model``,
  ``risk_model_bytes``) and ``champion_days``.
- ``risk_evaluation``: ``defect_risk_evaluation`` and its blocking check ``risk_promotion_gate`` (group
  ``plant_risk``), challenger vs champion and baselines on the hold-out days.
- ``risk_champion``: ``defect_risk_champion`` (group ``plant_risk``), the ``champion`` alias and the champion
  file for the edge release (``publish_risk_champion``).
- ``feature_drift``: ``plant_feature_drift`` (group ``plant_drift``), evidently report for the drift sensor.

Partitioning: ``plant_days`` (alumi_pipelines.partitions), one UTC calendar day per partition. The historian
exports one file per day and line, so a day is the natural unit of new data; day keys are known in advance, so
a schedule or CI can target "yesterday" or a range without registering anything, and re-landing a day's
export re-runs exactly that partition. Only finished days exist as partitions (samples of the running day
would be incomplete). A day without landing files materialises empty tables and says so in its metadata, so a
backfill across non-production days does not fail. ``plant_sensor_raw`` and ``plant_sensor_features`` are
partitioned; everything downstream reads every day in the lake and is unpartitioned. The jobs
(``plant_risk_job`` over a day range, the unpartitioned ``plant_retraining_job`` for the drift sensor) are in
alumi_pipelines.jobs.
"""
