"""Release stage: the exported champion as a signed edge release, and the channel pointers that devices follow.

``edge_release`` below ``tensorrt_engine`` bundles the alumi-edge wheel, the FP32 and INT8 ONNX models, the
TensorRT build plan and a self-test sample, signs the manifest and then moves the channels. An INT8 model that
``onnx_int8_model`` refused (its verdict in the INT8 record) is left out, and the manifest's ``refused`` says why.
Releases are immutable: a release that is already published only gets its channels moved.
Logic lives in ``lib/export/release``.
"""

import datetime as dt
import json
from pathlib import Path
from typing import Optional

from dagster import AssetExecutionContext, AssetKey, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from alumi_edge.manifest import MANIFEST_NAME
from alumi_pipelines.assets.export import fetch_file
from alumi_pipelines.assets.gold import gold_prefix_for, stage_gold
from alumi_pipelines.assets.records import latest_record
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

GROUP = "release"
EDGE_SOURCE = Path(__file__).resolve().parents[2] / "edge_export"


def release_version(model_version: str, dataset_hash: str) -> str:
    """Deterministic release name: ``<model_version>-<dataset_hash[:8]>``."""
    return f"{model_version}-{(dataset_hash or 'nodata')[:8]}"


class EdgeReleaseConfig(Config):
    channels: list[str] = Field(default_factory=lambda: ["stable"], description="channel pointers to move")
    signing_key: Optional[str] = Field(
        default=None,
        description="Ed25519 private key PEM path; default the pipeline setting release_key "
        "($ALUMI_RELEASE_KEY), else a development key under $ALUMI_HOME/keys/release-dev.key",
    )
    sample_conf: float = Field(default=0.25, description="confidence threshold of the bundled self-test")
    min_sample_conf: float = Field(
        default=0.01,
        gt=0,
        description="when the model finds nothing at sample_conf on any test image, the self-test sample is picked at "
        "lower thresholds down to this one; below it nothing is left to compare and no release is published",
    )
    channel_ttl_days: float = Field(
        default=30.0,
        gt=0,
        description="days until a channel pointer expires; devices refuse an expired pointer, so re-materialise "
        "edge_release (it only re-signs the pointers of a published release) more often than this",
    )


@asset(
    deps=[AssetKey("tensorrt_engine")],
    group_name=GROUP,
    owners=["team:ml-platform"],
    kinds={"python"},
    description="A signed edge release at releases/<version>/: the alumi-edge wheel, model.onnx, model_int8.onnx "
    "(unless onnx_int8_model refused it: then the manifest's 'refused' says why), the TensorRT build plan, "
    "a sample image with its expected detections, manifest.json and its Ed25519 "
    "signature; then the channel pointer (releases/channels/stable.json) moves to it.",
)
def edge_release(
    context: AssetExecutionContext, config: EdgeReleaseConfig, lake: Lake, pipeline_settings: PipelineSettings
) -> MaterializeResult:
    from alumi_edge.selftest import raw_informative
    from alumi_pipelines.lib.export import predict, release, yolo_data

    record = latest_record(context, "onnx_model", lake, "export_key")
    int8 = latest_record(context, "onnx_int8_model", lake, "int8_record_key")
    version = record["model_version"]
    name = release_version(version, record["dataset_hash"])
    verdict = int8.get("verdict") or {"accepted": True}  # records written before verdicts: the check blocked
    refused = {} if verdict["accepted"] else {"model_int8": {k: v for k, v in verdict.items() if k != "accepted"}}
    try:
        key_path, dev_key = release.signing_key_path(
            pipeline_settings.home_path, config.signing_key, pipeline_settings.release_key
        )
    except release.ReleaseError as exc:
        raise Failure(str(exc)) from exc
    private_pem, public_pem = release.load_or_create_signing_key(key_path)
    if dev_key:
        context.log.warning(f"signing with the development key {key_path}; set ALUMI_RELEASE_KEY for production")
    manifest_key = lake_keys.release_file_key(name, MANIFEST_NAME)
    reused = lake.exists(manifest_key)
    ttl = dt.timedelta(days=config.channel_ttl_days)

    def read_if_present(key: str) -> bytes | None:  # the previous pointer: the new sequence exceeds its own
        return lake.read_bytes(key) if lake.exists(key) else None

    if reused:
        context.log.info(f"release {name} already published; releases are immutable, moving the channels only")
        manifest = lake.read_json(manifest_key)
        refused = manifest.get("refused", {})
        keys = release.move_channels(
            name,
            config.channels,
            lake.write_bytes,
            channel_key=lake_keys.channel_key,
            private_key_pem=private_pem,
            manifest=lake.read_bytes(manifest_key),
            read_bytes=read_if_present,
            ttl=ttl,
        )
    else:
        with pipeline_settings.scratch(context.run.run_id, "edge_release") as work:
            model = fetch_file(lake, record["onnx_key"], work / "in" / "model.onnx")
            model_int8 = None if refused else fetch_file(lake, int8["int8_key"], work / "in" / "model_int8.onnx")
            plan = fetch_file(lake, lake_keys.plan_key(version), work / "in" / "tensorrt_plan.json")
            try:
                wheel = release.build_edge_wheel(EDGE_SOURCE, work / "wheel")
            except release.ReleaseError as exc:
                raise Failure(str(exc)) from exc
            prefix = gold_prefix_for(lake, record["dataset_hash"])
            root = stage_gold(
                lake, prefix, work, splits=("test",), cache=pipeline_settings.cache(), log=context.log.info
            )
            test = [t.path for t in yolo_data.read_yolo_split(root, "test", len(record["names"]))]
            conf = config.sample_conf
            sample, found = predict.pick_sample_image(model, test, conf=conf)
            while len(found) == 0 and conf > config.min_sample_conf:  # an undertrained model: look lower
                conf = max(config.min_sample_conf, round(conf / 5, 6))
                sample, found = predict.pick_sample_image(model, test, conf=conf)
            raw = release.sample_raw(model, sample)  # the raw output too: boxes alone can pass vacuously
            if len(found) == 0 and not raw_informative(raw):
                raise Failure(
                    f"edge release {name}: the model detects nothing on any of the {len(test)} test images, even at "
                    f"confidence {config.min_sample_conf} (min_sample_conf), and its raw scores are flat (top "
                    f"{max(raw['top_scores']):.3g}), so the release's self-test would have nothing to compare; not "
                    "publishing it (train longer)"
                )
            if len(found) == 0:
                context.log.warning(
                    f"the model detects nothing on the test images even at confidence {conf}: the release's self-test "
                    f"compares its raw top scores on {sample.name} only (top {max(raw['top_scores']):.3g})"
                )
            elif conf != config.sample_conf:
                context.log.warning(
                    f"the model finds nothing at sample_conf={config.sample_conf}: the self-test sample uses "
                    f"{len(found)} boxes at confidence {conf} (and the raw scores)"
                )
            expected = release.expected_detections(
                found.boxes.tolist(),
                found.confidences.tolist(),
                found.class_ids.tolist(),
                record["names"],
                conf=conf,
                iou=predict.NMS_IOU,
            )
            expected["raw"] = raw
            # The INT8 model's own boxes on the same image: a device self-tests whichever model it serves.
            expected["roles"] = {}
            if model_int8 is not None:
                found_int8 = predict.predict_onnx(model_int8, [sample], conf=conf)[0]
                expected["roles"]["model_int8"] = {
                    "boxes": release.expected_detections(
                        found_int8.boxes.tolist(),
                        found_int8.confidences.tolist(),
                        found_int8.class_ids.tolist(),
                        record["names"],
                        conf=conf,
                        iou=predict.NMS_IOU,
                    )["boxes"],
                    "raw": release.sample_raw(model_int8, sample),
                }
            else:
                context.log.warning(f"INT8 model refused ({refused['model_int8']['why']}): releasing FP32 only")
            expected_path = work / "in" / "sample_expected.json"
            expected_path.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
            parity_key = lake_keys.parity_record_key(version)
            parity = lake.read_json(parity_key) if lake.exists(parity_key) else {}
            metrics = {
                "test_map50_fp32": int8["map50_fp32"],
                "test_map50_int8": int8["map50_int8"],
                **({"test_map50_95_fp32": int8["map50_95_fp32"]} if "map50_95_fp32" in int8 else {}),
                **({"test_map50_95_int8": int8["map50_95_int8"]} if "map50_95_int8" in int8 else {}),
                "cpu_latency_ms_fp32": int8["latency_fp32"]["median_ms"],
                "cpu_latency_ms_int8": int8["latency_int8"]["median_ms"],
                **({"parity_map50_diff": parity["map50_diff"]} if "map50_diff" in parity else {}),
            }
            files = [
                release.ReleaseInput(model, "model.onnx", "model"),
                *([release.ReleaseInput(model_int8, "model_int8.onnx", "model_int8")] if model_int8 else []),
                release.ReleaseInput(wheel, wheel.name, "wheel"),
                release.ReleaseInput(plan, "tensorrt_plan.json", "build_plan"),
                release.ReleaseInput(sample, f"sample/sample{sample.suffix.lower()}", "sample_image"),
                release.ReleaseInput(expected_path, "sample/expected.json", "sample_expected"),
            ]
            if lake.exists(lake_keys.RISK_CHAMPION_KEY):  # the plant branch's champion risk model serves /v1/risk
                risk = fetch_file(lake, lake_keys.RISK_CHAMPION_KEY, work / "in" / "risk_model.json")
                files.append(release.ReleaseInput(risk, "risk_model.json", "risk_model"))
            manifest = release.write_release(
                work / "release",
                files,
                version=name,
                classes=record["names"],
                imgsz=record["imgsz"],
                private_key_pem=private_pem,
                metrics=metrics,
                source={
                    "mlflow_run_id": record["mlflow_run_id"],
                    "model_name": record["model_name"],
                    "model_version": version,
                    "dataset_hash": record["dataset_hash"],
                },
                refused=refused,
            )
            keys = release.publish_release(
                work / "release",
                lake.write_bytes,
                channels=config.channels,
                file_key=lake_keys.release_file_key,
                channel_key=lake_keys.channel_key,
                private_key_pem=private_pem,
                read_bytes=read_if_present,
                ttl=ttl,
                map_calls=lake.map,
            )
    context.log.info(f"release {name}: channels {', '.join(config.channels)} → {name}")
    return MaterializeResult(
        metadata={
            "release_version": name,
            "release_prefix": lake_keys.release_prefix(name),
            "manifest_key": manifest_key,
            "manifest_path": MetadataValue.path(lake.uri(manifest_key)),
            "channels": MetadataValue.json(list(config.channels)),
            "reused": reused,
            "model_version": version,
            "int8_in_release": "model_int8" not in refused,
            "int8_refused": MetadataValue.md(
                "\n".join(
                    ["| role | why |", "| --- | --- |"] + [f"| {role} | {r['why']} |" for role, r in refused.items()]
                )
                if refused
                else "_none: the release carries the INT8 model_"
            ),
            "files": MetadataValue.md(
                "\n".join(
                    ["| file | role | bytes | sha256 |", "| --- | --- | ---: | --- |"]
                    + [
                        f"| {f['path']} | {f['role']} | {f['size']} | `{f['sha256'][:16]}…` |"
                        for f in manifest["files"]
                    ]
                )
            ),
            "keys_written": len(keys),
            "signing_key": "development key" if dev_key else str(key_path),
            "public_key": MetadataValue.text(public_pem.decode("ascii")),
        }
    )
