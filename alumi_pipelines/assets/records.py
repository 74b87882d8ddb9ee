"""JSON records that an asset writes to the lake and names in its materialisation metadata.

The next asset of a chain (evaluation → gate → champion, ONNX → INT8 → TensorRT → release) reads the record
of the latest materialisation, so it works on exactly what its upstream produced.
"""

from dagster import AssetKey, Failure

from alumi_pipelines.resources.lake import Lake


def latest_record(context, asset_name: str, lake: Lake, metadata_key: str) -> dict:
    """The JSON record named by ``metadata_key`` in the latest materialisation of ``asset_name``."""
    event = context.instance.get_latest_materialization_event(AssetKey(asset_name))
    if event is None or event.asset_materialization is None:
        raise Failure(f"{asset_name} has never been materialised: nothing to work on")
    entry = event.asset_materialization.metadata.get(metadata_key)
    if entry is None:
        raise Failure(f"the latest {asset_name} materialisation has no {metadata_key!r} metadata")
    return lake.read_json(entry.value)
