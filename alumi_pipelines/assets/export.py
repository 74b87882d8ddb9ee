"""Export stage: the champion as ONNX (parity-checked), INT8 ONNX (accuracy-checked) and TensorRT engines or their plan.

``onnx_model → onnx_int8_model → tensorrt_engine`` below ``champion_model``, with the blocking check ``onnx_parity``
and the warning ``int8_accuracy`` (a refused INT8 model is left out of the release, the FP32 one still ships); each
asset keeps a JSON record under ``models/onnx/<model_version>/`` that the next one reads. Every mAP is ultralytics'
own (``accuracy.detection_map``) on the edge runtime's detections with ultralytics val's NMS settings.
Logic lives in ``lib/export/`` (``onnx_export``, ``dfl``, ``int8``, ``accuracy``, ``tensorrt_plan``); the signed edge
release is the next stage (``assets/release.py``).
"""

import datetime as dt
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
)
from pydantic import Field

from alumi_pipelines.assets.gold import gold_image_keys, gold_prefix_for, stage_gold
from alumi_pipelines.assets.records import latest_record
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry, VersionInfo
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

GROUP = "export"
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


# -- configs ---------------------------------------------------------------------------------------
class OnnxExportConfig(Config):
    opset: int = Field(default=17, description="ONNX opset")
    simplify: bool = Field(default=True, description="simplify with onnxslim (the plain export is kept if it fails)")
    imgsz: Optional[int] = Field(default=None, description="input size; default: the training run's imgsz")


class OnnxParityConfig(Config):
    max_map50_diff: float = Field(default=0.002, description="largest allowed |mAP50(PyTorch) - mAP50(ONNX)|")
    box_conf: float = Field(default=0.25, description="confidence threshold of the per-image box comparison")
    iou_min: float = Field(default=0.9, description="IoU for two runtimes' boxes to count as the same box")


class OnnxInt8Config(Config):
    calibration_images: int = Field(default=300, description="gold train+val images used for calibration (at most)")
    activation_type: str = Field(default="QUInt8", description="QUInt8 or QInt8 activations (weights are QInt8)")
    per_channel: bool = Field(default=True, description="per-channel weight scales")
    latency_runs: int = Field(default=50, description="timed session.run calls per model (median reported)")
    margin: float = Field(
        default=0.01,
        description="largest allowed test mAP50 drop of INT8 vs FP32 (0.01 = 1 point); a larger drop refuses the "
        "INT8 model: int8_accuracy warns and edge_release ships the FP32 model alone",
    )


class TensorRTEngineConfig(Config):
    workspace_mib: int = Field(default=1024, description="TensorRT builder workspace")
    latency_runs: int = Field(default=50, description="timed inferences per engine")


# -- helpers ---------------------------------------------------------------------------------------
def _champion_weights(mlflow: MlflowRegistry, tmpdir: Path) -> tuple[Path, VersionInfo]:
    """best.pt of the registry's ``champion`` version, downloaded into ``tmpdir``, and the version's info."""
    version = mlflow.alias_version(CHAMPION)
    if version is None:
        raise Failure(f"model {mlflow.model_name!r} has no {CHAMPION!r} alias: materialise champion_model first")
    info = mlflow.version(version)
    return mlflow.download_weights(version, Path(tmpdir) / "champion"), info


def gold_image_paths(lake: Lake, prefix: str, splits: tuple[str, ...]) -> dict[str, list[str]]:
    """Gold-relative paths (``images/<split>/...``) of each split's images, sorted, from the version's manifest."""
    found: dict[str, list[str]] = {split: [] for split in splits}
    for rel in gold_image_keys(lake, prefix):
        parts = rel.split("/")
        if len(parts) > 2 and parts[1] in found and rel.lower().endswith(IMAGE_SUFFIXES):
            found[parts[1]].append(rel)
    return {split: sorted(paths) for split, paths in found.items()}


def fetch_file(lake: Lake, key: str, dest: Path) -> Path:
    """The lake file ``key`` copied to the local path ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(lake.read_bytes(key))
    return dest


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "| --- | ---: |", *(f"| {k} | {v} |" for k, v in rows)])


# -- onnx_model ------------------------------------------------------------------------------------
@asset(
    deps=[AssetKey("champion_model")],
    group_name=GROUP,
    owners=["team:ml-platform"],
    kinds={"onnx", "pytorch"},
    description="The champion detector exported to ONNX (static 1×3×imgsz×imgsz, FP32, simplified) with class "
    "names, imgsz, stride, model version, dataset hash and MLflow run id in its metadata; stored at "
    "models/onnx/<model_version>/model.onnx.",
)
def onnx_model(
    context: AssetExecutionContext,
    config: OnnxExportConfig,
    lake: Lake,
    mlflow: MlflowRegistry,
    pipeline_settings: PipelineSettings,
) -> MaterializeResult:
    from alumi_pipelines.lib.export import onnx_export

    config_dir = pipeline_settings.ultralytics_dir
    with pipeline_settings.scratch(context.run.run_id, "onnx_model") as work:
        weights, info = _champion_weights(mlflow, work)
        dataset_hash = info.tags.get("dataset_hash", "")
        imgsz = config.imgsz or int(info.tags.get("imgsz") or 0) or onnx_export.checkpoint_imgsz(weights, config_dir)
        result = onnx_export.export_onnx(
            weights,
            work / "export",
            config_dir=config_dir,
            imgsz=imgsz,
            opset=config.opset,
            simplify=config.simplify,
            metadata={
                "model_version": info.version,
                "dataset_hash": dataset_hash,
                "mlflow_run_id": info.run_id or "",
                "model_name": mlflow.model_name,
            },
        )
        key = lake.put_file(result.path, lake_keys.onnx_model_key(info.version, "model.onnx"))
    if result.simplify_error:
        context.log.warning(f"onnxslim failed, the plain export is kept: {result.simplify_error}")
    record = {
        "model_name": mlflow.model_name,
        "model_version": info.version,
        "dataset_hash": dataset_hash,
        "mlflow_run_id": info.run_id,
        "imgsz": imgsz,
        "names": result.names,
        "opset": result.opset,
        "simplified": result.simplified,
        "onnx_key": key,
        "sha256": result.sha256,
        "size_bytes": result.size_bytes,
        "metadata_props": {k: v for k, v in result.metadata.items() if k != "args"},
        "exported_at": dt.datetime.now(dt.UTC).isoformat(),
        "dagster_run_id": context.run_id,
    }
    record_key = lake.write_json(lake_keys.export_record_key(info.version), record)
    context.log.info(f"exported {mlflow.model_name} v{info.version} to {key} ({result.size_bytes} bytes)")
    return MaterializeResult(
        metadata={
            "export_key": record_key,
            "onnx_key": key,
            "onnx_path": MetadataValue.path(lake.uri(key)),
            "model_version": info.version,
            "dataset_hash": dataset_hash,
            "mlflow_run_id": info.run_id or "",
            "imgsz": imgsz,
            "opset": result.opset,
            "simplified": result.simplified,
            "size_bytes": result.size_bytes,
            "sha256": result.sha256,
            "names": MetadataValue.json(result.names),
        }
    )


@asset_check(
    asset=onnx_model,
    name="onnx_parity",
    blocking=True,
    description="The ONNX (through the edge package's ONNX Runtime pipeline) and the PyTorch champion agree on the "
    "gold test split: |mAP50 difference| ≤ 0.002 (ultralytics' matching and AP, on detections made with ultralytics "
    "val's NMS: conf 0.001, IoU 0.7, max_det 300, multi-label) and, per image, the same boxes at the deployed "
    "confidence (same count, same classes, IoU ≥ 0.9 matched greedily).",
)
def onnx_parity(
    context: AssetCheckExecutionContext,
    config: OnnxParityConfig,
    lake: Lake,
    mlflow: MlflowRegistry,
    pipeline_settings: PipelineSettings,
) -> AssetCheckResult:
    from alumi_pipelines.lib.export import accuracy, yolo_data

    record = latest_record(context, "onnx_model", lake, "export_key")
    with pipeline_settings.scratch(context.run.run_id, "onnx_parity") as work:
        weights = mlflow.download_weights(record["model_version"], work / "champion")
        onnx_path = fetch_file(lake, record["onnx_key"], work / "model.onnx")
        prefix = gold_prefix_for(lake, record["dataset_hash"])
        root = stage_gold(lake, prefix, work, splits=("test",), cache=pipeline_settings.cache(), log=context.log.info)
        images = yolo_data.read_yolo_split(root, "test", len(record["names"]))
        report = accuracy.parity(
            weights,
            onnx_path,
            images,
            config_dir=pipeline_settings.ultralytics_dir,
            imgsz=record["imgsz"],
            box_conf=config.box_conf,
            max_map50_diff=config.max_map50_diff,
            iou_min=config.iou_min,
        )
    result = {**report.as_dict(), "model_version": record["model_version"], "gold_prefix": prefix}
    lake.write_json(lake_keys.parity_record_key(record["model_version"]), result)
    context.log.info(
        f"parity v{record['model_version']}: mAP50 torch {report.map50_torch:.4f} onnx "
        f"{report.map50_onnx:.4f}; {report.images_matching}/{report.images} images match"
    )
    return AssetCheckResult(
        passed=report.passed,
        metadata={
            "images": report.images,
            "map50_torch": round(report.map50_torch, 6),
            "map50_onnx": round(report.map50_onnx, 6),
            "map50_diff": round(report.map50_diff, 6),
            "map50_95_torch": round(report.map50_95_torch, 6),
            "map50_95_onnx": round(report.map50_95_onnx, 6),
            "max_map50_diff": config.max_map50_diff,
            "map_nms": MetadataValue.json(accuracy.VAL_NMS),
            "box_conf": config.box_conf,
            "boxes_torch": report.boxes_torch,
            "boxes_onnx": report.boxes_onnx,
            "images_matching": report.images_matching,
            "mismatches": MetadataValue.md("\n".join(f"- {m}" for m in report.mismatches[:20]) or "_none_"),
        },
    )


# -- onnx_int8_model -------------------------------------------------------------------------------
@asset(
    deps=[onnx_model],
    group_name=GROUP,
    owners=["team:ml-platform"],
    kinds={"onnx"},
    description="Static INT8 quantisation (ONNX Runtime QDQ, per-channel QInt8 weights) calibrated on gold train+val "
    "images, with the Detect head's box decoding left in float; size, CPU latency, test mAP50 and mAP50-95 against "
    "FP32 (ultralytics' matching and AP, ultralytics val's NMS) and the verdict: accepted, or refused when mAP50 "
    "drops by more than the margin (then the release ships without it).",
)
def onnx_int8_model(
    context: AssetExecutionContext, config: OnnxInt8Config, lake: Lake, pipeline_settings: PipelineSettings
) -> MaterializeResult:
    from alumi_pipelines.lib.export import accuracy, latency, yolo_data
    from alumi_pipelines.lib.export.int8 import quantize_int8
    from alumi_pipelines.lib.files import file_sha256
    from alumi_pipelines.lib.progress import Tracked

    record = latest_record(context, "onnx_model", lake, "export_key")
    version = record["model_version"]
    with pipeline_settings.scratch(context.run.run_id, "onnx_int8_model") as work:
        fp32 = fetch_file(lake, record["onnx_key"], work / "model.onnx")
        prefix = gold_prefix_for(lake, record["dataset_hash"])
        keys = gold_image_keys(lake, prefix)
        images = gold_image_paths(lake, prefix, ("train", "val", "test"))
        chosen = yolo_data.select_calibration_images(images["train"] + images["val"], config.calibration_images)
        root = stage_gold(
            lake,
            prefix,
            work,
            splits=("train", "val", "test"),
            only=set(chosen) | set(images["test"]),
            cache=pipeline_settings.cache(),
            log=context.log.info,
        )
        calibration = Tracked(
            [root / rel for rel in chosen], pipeline_settings.progress("INT8 calibration", None, context.log.info)
        )
        quant = quantize_int8(
            fp32,
            work / "model_int8.onnx",
            calibration,
            per_channel=config.per_channel,
            activation_type=config.activation_type,
        )
        test = yolo_data.read_yolo_split(root, "test", len(record["names"]))
        paths = [t.path for t in test]
        map_fp32 = accuracy.onnx_map(fp32, test, config_dir=pipeline_settings.ultralytics_dir)
        map_int8 = accuracy.onnx_map(quant.path, test, config_dir=pipeline_settings.ultralytics_dir)
        verdict = accuracy.int8_verdict(map_fp32, map_int8, config.margin)
        lat_fp32 = latency.session_latency(fp32, paths, runs=config.latency_runs)
        lat_int8 = latency.session_latency(quant.path, paths, runs=config.latency_runs)
        key = lake.put_file(quant.path, lake_keys.onnx_model_key(version, "model_int8.onnx"))
        int8_sha = file_sha256(quant.path)
        cal_list = [{"path": keys[rel], "sha256": file_sha256(root / rel)} for rel in chosen]
    speedup = lat_fp32.median_ms / lat_int8.median_ms if lat_int8.median_ms > 0 else 0.0
    int8 = {
        "model_version": version,
        "int8_key": key,
        "sha256": int8_sha,
        "fp32_key": record["onnx_key"],
        "size_bytes_fp32": record["size_bytes"],
        "size_bytes_int8": quant.size_bytes,
        "activation_type": quant.activation_type,
        "per_channel": quant.per_channel,
        "excluded_nodes": quant.excluded_nodes,
        "preprocessed": quant.preprocessed,
        "float_nodes": quant.float_nodes,
        "shared_concat_scales": quant.shared_concat_scales,
        "input_format": quant.input_format,
        "calibration": cal_list,
        "test_images": len(test),
        "map50_fp32": round(map_fp32.map50, 6),
        "map50_int8": round(map_int8.map50, 6),
        "map50_drop": round(map_fp32.map50 - map_int8.map50, 6),
        "map50_95_fp32": round(map_fp32.map50_95, 6),
        "map50_95_int8": round(map_int8.map50_95, 6),
        "map_nms": dict(accuracy.VAL_NMS),
        "map_method": accuracy.MAP_METHOD,
        "verdict": verdict,
        "latency_fp32": lat_fp32.as_dict(),
        "latency_int8": lat_int8.as_dict(),
        "speedup": round(speedup, 3),
        "dagster_run_id": context.run_id,
    }
    record_key = lake.write_json(lake_keys.int8_record_key(version), int8)
    context.log.info(
        f"INT8 v{version}: mAP50 {map_fp32.map50:.4f} → {map_int8.map50:.4f}, latency {lat_fp32.median_ms:.2f} → "
        f"{lat_int8.median_ms:.2f} ms ({speedup:.2f}×), {len(cal_list)} calibration images; {verdict['why']}"
    )
    return MaterializeResult(
        metadata={
            "int8_record_key": record_key,
            "int8_key": key,
            "int8_path": MetadataValue.path(lake.uri(key)),
            "model_version": version,
            "calibration_images": len(cal_list),
            "excluded_head_nodes": len(quant.excluded_nodes),
            "float_nodes": len(quant.float_nodes),
            "input_format": quant.input_format,
            "size_bytes_fp32": record["size_bytes"],
            "size_bytes_int8": quant.size_bytes,
            "latency_ms_fp32": lat_fp32.median_ms,
            "latency_ms_int8": lat_int8.median_ms,
            "speedup": round(speedup, 3),
            "map50_fp32": int8["map50_fp32"],
            "map50_int8": int8["map50_int8"],
            "map50_drop": int8["map50_drop"],
            "map50_95_fp32": int8["map50_95_fp32"],
            "map50_95_int8": int8["map50_95_int8"],
            "map_nms": MetadataValue.json(accuracy.VAL_NMS),
            "int8_accepted": verdict["accepted"],
            "margin": config.margin,
            "verdict": MetadataValue.text(verdict["why"]),
            "summary": MetadataValue.md(
                _table(
                    [
                        ("size (bytes) FP32 / INT8", f"{record['size_bytes']} / {quant.size_bytes}"),
                        (
                            f"CPU latency, median of {config.latency_runs} (ms) FP32 / INT8",
                            f"{lat_fp32.median_ms} / {lat_int8.median_ms}",
                        ),
                        ("speed-up", f"{speedup:.2f}×"),
                        (
                            f"test mAP50 FP32 / INT8 ({len(test)} images)",
                            f"{map_fp32.map50:.4f} / {map_int8.map50:.4f}",
                        ),
                        ("test mAP50-95 FP32 / INT8", f"{map_fp32.map50_95:.4f} / {map_int8.map50_95:.4f}"),
                        ("INT8 in the release", "yes" if verdict["accepted"] else "no: refused"),
                    ]
                )
            ),
        }
    )


@asset_check(
    asset=onnx_int8_model,
    name="int8_accuracy",
    blocking=False,
    description="Reports onnx_int8_model's verdict: it fails (a warning) when the INT8 model's test mAP50 is more "
    "than the margin (onnx_int8_model config, default 0.01 = 1 point) below the FP32 model's; edge_release then "
    "ships the FP32 model without the INT8 one.",
)
def int8_accuracy(context: AssetCheckExecutionContext, lake: Lake) -> AssetCheckResult:
    int8 = latest_record(context, "onnx_int8_model", lake, "int8_record_key")
    verdict = int8["verdict"]
    consequence = "INT8 ships" if verdict["accepted"] else "INT8 refused: the release ships the FP32 model only"
    context.log.info(f"{verdict['why']}: {consequence}")
    return AssetCheckResult(
        passed=verdict["accepted"],
        severity=AssetCheckSeverity.WARN,
        metadata={
            "map50_fp32": verdict["map50_fp32"],
            "map50_int8": verdict["map50_int8"],
            "map50_drop": verdict["map50_drop"],
            "margin": verdict["margin"],
            "in_release": verdict["accepted"],
            "why": MetadataValue.text(f"{verdict['why']}: {consequence}"),
        },
    )


# -- tensorrt_engine -------------------------------------------------------------------------------
@asset(
    deps=[onnx_int8_model],
    group_name=GROUP,
    owners=["team:ml-platform"],
    kinds={"tensorrt"},
    description="FP16 and INT8 TensorRT engines with their latency where tensorrt and a CUDA device are present; "
    "everywhere, the on-device build plan (trtexec commands, precision flags, calibration image set, engine "
    "cache key <trt_version>-<gpu_name>-<precision>) and, when no engine was built, why.",
)
def tensorrt_engine(
    context: AssetExecutionContext, config: TensorRTEngineConfig, lake: Lake, pipeline_settings: PipelineSettings
) -> MaterializeResult:
    from alumi_edge.model_info import read_model_info
    from alumi_pipelines.lib.export import tensorrt_plan

    record = latest_record(context, "onnx_model", lake, "export_key")
    int8 = latest_record(context, "onnx_int8_model", lake, "int8_record_key")
    version = record["model_version"]
    trt, cuda, reason = tensorrt_plan.tensorrt_guard()
    report = None
    with pipeline_settings.scratch(context.run.run_id, "tensorrt_engine") as work:
        onnx_path = fetch_file(lake, record["onnx_key"], work / "model.onnx")
        info = read_model_info(onnx_path)
        if trt is not None:
            cal_dir = work / "calibration"
            images = [
                fetch_file(lake, c["path"], cal_dir / f"{i:05d}{Path(c['path']).suffix}")
                for i, c in enumerate(int8["calibration"])
            ]
            try:
                report = tensorrt_plan.build_engines(
                    onnx_path,
                    work / "engines",
                    images,
                    info.input_hw,
                    record["sha256"],
                    latency_runs=config.latency_runs,
                    workspace_bytes=config.workspace_mib << 20,
                    modules=(trt, cuda),
                )
            except tensorrt_plan.EngineBuildError as exc:
                raise Failure(f"TensorRT engine build failed for model v{version}: {exc}") from exc
            for engine in report.engines:
                lake.put_file(engine.path, lake_keys.engine_key(version, engine.path.name))
                if engine.calibration_cache is not None:
                    cache = engine.calibration_cache
                    lake.put_file(cache, lake_keys.engine_key(version, cache.name))
            reason = f"engines built here with TensorRT {report.trt_version} on {report.gpu_name}"
    plan = tensorrt_plan.build_plan(
        onnx_file="model.onnx",
        onnx_sha256=record["sha256"],
        input_name="images",
        input_shape=[1, 3, *info.input_hw],
        calibration_images=int8["calibration"],
        model_version=version,
        reason=reason,
        int8_onnx_file="model_int8.onnx" if int8["verdict"]["accepted"] else None,
        workspace_mib=config.workspace_mib,
    )
    if report is not None:
        plan["built_here"] = True
        plan["build_report"] = report.as_dict()
    key = lake.write_json(lake_keys.plan_key(version), plan)
    metadata: dict[str, Any] = {
        "plan_key": key,
        "model_version": version,
        "engine_built": report is not None,
        "reason": MetadataValue.text(reason),
        "engine_cache_key_format": tensorrt_plan.ENGINE_KEY_FORMAT,
        "calibration_images": len(int8["calibration"]),
        "fp16_command": MetadataValue.md(f"```\n{plan['builds']['fp16']['command']}\n```"),
        "int8_command": MetadataValue.md(f"```\n{plan['builds']['int8']['command']}\n```"),
    }
    if report is not None:
        for engine in report.engines:
            metadata[f"latency_ms_{engine.precision}"] = engine.latency_ms
            metadata[f"engine_{engine.precision}_key"] = lake_keys.engine_key(version, engine.path.name)
    else:
        context.log.info(f"no TensorRT engine built here: {reason}; the release carries the build plan")
    return MaterializeResult(metadata=metadata)
