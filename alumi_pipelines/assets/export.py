"""Export stage: the champion as ONNX, INT8 ONNX, TensorRT engines (or their on-device plan) and a signed edge release.

``onnx_model → onnx_int8_model → tensorrt_engine → edge_release`` below ``champion_model``; blocking checks
``onnx_parity`` (ONNX vs PyTorch on the test split) and ``int8_accuracy`` (mAP50 drop within a margin) stop
the chain. Each asset keeps a JSON record under ``models/onnx/<model_version>/`` and names it in its
metadata; the next asset reads the record of the latest materialisation. Logic lives in
``lib/onnx_export``, ``lib/tensorrt_plan`` and ``lib/release``; lake I/O goes through the ``lake`` resource.

Exports ``EXPORT_ASSETS``, ``EXPORT_CHECKS`` and ``EXPORT_JOBS`` for the code location.
"""

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
    asset_check,
    define_asset_job,
)
from pydantic import Field

from alumi_pipelines.lib import training
from alumi_pipelines.resources import lake_layout
from alumi_pipelines.resources.lake_layout import (
    engine_key,
    export_record_key,
    int8_record_key,
    onnx_prefix,
    parity_record_key,
    plan_key,
)
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry, VersionInfo
from alumi_pipelines.settings import Settings

GROUP = "export"
RELEASE_KEY_ENV = "ALUMI_RELEASE_KEY"
DEV_KEY_NAME = "release-dev.key"
EDGE_SOURCE = Path(__file__).resolve().parents[2] / "edge_export"


def release_version(model_version: str, dataset_hash: str) -> str:
    """Deterministic release name: ``<model_version>-<dataset_hash[:8]>``."""
    return f"{model_version}-{(dataset_hash or 'nodata')[:8]}"


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


class Int8AccuracyConfig(Config):
    margin: float = Field(default=0.01, description="largest allowed mAP50 drop of INT8 vs FP32 (0.01 = 1 point)")


class TensorRTEngineConfig(Config):
    workspace_mib: int = Field(default=1024, description="TensorRT builder workspace")
    latency_runs: int = Field(default=50, description="timed inferences per engine")


class EdgeReleaseConfig(Config):
    channels: list[str] = Field(default_factory=lambda: ["stable"], description="channel pointers to move")
    signing_key: Optional[str] = Field(
        default=None, description=f"Ed25519 private key PEM path; default ${RELEASE_KEY_ENV}, else a development "
        f"key under $ALUMI_HOME/keys/{DEV_KEY_NAME}"
    )
    sample_conf: float = Field(default=0.25, description="confidence threshold of the bundled self-test")


# -- helpers ---------------------------------------------------------------------------------------
def _champion_weights(mlflow: MlflowRegistry, tmpdir: Path) -> tuple[Path, VersionInfo]:
    """best.pt of the registry's ``champion`` version, downloaded into ``tmpdir``, and the version's info."""
    version = mlflow.alias_version(CHAMPION)
    if version is None:
        raise Failure(f"model {mlflow.model_name!r} has no {CHAMPION!r} alias: materialise champion_model first")
    info = mlflow.version(version)
    return mlflow.download_weights(version, Path(tmpdir) / "champion"), info


def _latest_record(context, asset_name: str, lake: Lake, metadata_key: str) -> dict:
    """The JSON record named by the latest materialisation of ``asset_name``."""
    event = context.instance.get_latest_materialization_event(AssetKey(asset_name))
    if event is None or event.asset_materialization is None:
        raise Failure(f"{asset_name} has never been materialised: nothing to work on")
    entry = event.asset_materialization.metadata.get(metadata_key)
    if entry is None:
        raise Failure(f"the latest {asset_name} materialisation has no {metadata_key!r} metadata")
    return lake.read_json(entry.value)


def _scratch(context, name: str):
    return training.scratch_dir(Settings.from_env().home, "work", context.run.run_id, name)


def _gold_prefix(lake: Lake, dataset_hash: str) -> str:
    """The champion's own gold dataset when it is still in the lake, else the current one."""
    own = lake_layout.gold_prefix(dataset_hash) if dataset_hash else None
    if own and lake.exists(f"{own}/data.yaml"):
        return own
    return lake_layout.read_gold_pointer(lake)["prefix"]


def _stage_gold(lake: Lake, prefix: str, splits: tuple[str, ...], work: Path, only: set[str] | None = None) -> Path:
    """A local YOLO folder with the given splits (the lake folder itself when the lake is local)."""
    local = lake.local_path(prefix)
    if local is not None and local.is_dir():
        return local
    root = work / "gold"
    for split in splits:
        for f in lake.list_files(f"{prefix}/images/{split}"):
            rel = f.key[len(prefix) + 1 :]
            if only is not None and rel not in only:
                continue
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(lake.read_bytes(f.key))
            label_rel = Path(rel).relative_to(f"images/{split}").with_suffix(".txt").as_posix()
            label_key = f"{prefix}/labels/{split}/{label_rel}"
            if lake.exists(label_key):
                label = root / label_key[len(prefix) + 1 :]
                label.parent.mkdir(parents=True, exist_ok=True)
                label.write_bytes(lake.read_bytes(label_key))
    return root


def _image_keys(lake: Lake, prefix: str, split: str) -> list[str]:
    """Gold-relative paths (``images/<split>/...``) of a split's images."""
    suffixes = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
    return [f.key[len(prefix) + 1 :] for f in lake.list_files(f"{prefix}/images/{split}")
            if f.key.lower().endswith(suffixes)]


def _fetch(lake: Lake, key: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(lake.read_bytes(key))
    return dest


def _check_classes(record: dict, pointer_classes: list[str] | None) -> None:
    if pointer_classes and list(pointer_classes) != list(record["names"]):
        raise Failure(f"model classes {record['names']} differ from the gold dataset's {pointer_classes}")


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
def onnx_model(context: AssetExecutionContext, config: OnnxExportConfig, lake: Lake,
               mlflow: MlflowRegistry) -> MaterializeResult:
    from alumi_pipelines.lib import onnx_export

    settings = Settings.from_env()
    config_dir = settings.home / "ultralytics"
    with _scratch(context, "onnx_model") as work:
        weights, info = _champion_weights(mlflow, work)
        dataset_hash = info.tags.get("dataset_hash", "")
        imgsz = config.imgsz or int(info.tags.get("imgsz") or 0) or onnx_export.checkpoint_imgsz(weights, config_dir)
        result = onnx_export.export_onnx(
            weights, work / "export", config_dir=config_dir, imgsz=imgsz, opset=config.opset, simplify=config.simplify,
            metadata={"model_version": info.version, "dataset_hash": dataset_hash,
                      "mlflow_run_id": info.run_id or "", "model_name": mlflow.model_name},
        )
        key = lake.put_file(result.path, f"{onnx_prefix(info.version)}/model.onnx")
    if result.simplify_error:
        context.log.warning(f"onnxslim failed, the plain export is kept: {result.simplify_error}")
    record = {
        "model_name": mlflow.model_name, "model_version": info.version, "dataset_hash": dataset_hash,
        "mlflow_run_id": info.run_id, "imgsz": imgsz, "names": result.names, "opset": result.opset,
        "simplified": result.simplified, "onnx_key": key, "sha256": result.sha256, "size_bytes": result.size_bytes,
        "metadata_props": {k: v for k, v in result.metadata.items() if k != "args"},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(), "dagster_run_id": context.run_id,
    }
    record_key = lake.write_json(export_record_key(info.version), record)
    context.log.info(f"exported {mlflow.model_name} v{info.version} to {key} ({result.size_bytes} bytes)")
    return MaterializeResult(metadata={
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
    })


@asset_check(
    asset=onnx_model,
    name="onnx_parity",
    blocking=True,
    description="The ONNX (through the edge package's ONNX Runtime pipeline) and the PyTorch champion agree on the "
    "gold test split: |mAP50 difference| ≤ 0.002 and, per image, the same boxes (same count, same classes, "
    "IoU ≥ 0.9 matched greedily).",
)
def onnx_parity(context: AssetCheckExecutionContext, config: OnnxParityConfig, lake: Lake,
                mlflow: MlflowRegistry) -> AssetCheckResult:
    from alumi_pipelines.lib import onnx_export

    record = _latest_record(context, "onnx_model", lake, "export_key")
    settings = Settings.from_env()
    with _scratch(context, "onnx_parity") as work:
        weights = mlflow.download_weights(record["model_version"], work / "champion")
        onnx_path = _fetch(lake, record["onnx_key"], work / "model.onnx")
        prefix = _gold_prefix(lake, record["dataset_hash"])
        root = _stage_gold(lake, prefix, ("test",), work)
        images = onnx_export.read_yolo_split(root, "test", len(record["names"]))
        report = onnx_export.parity(weights, onnx_path, images, config_dir=settings.home / "ultralytics",
                                    imgsz=record["imgsz"], num_classes=len(record["names"]), box_conf=config.box_conf,
                                    max_map50_diff=config.max_map50_diff, iou_min=config.iou_min)
    result = {**report.as_dict(), "model_version": record["model_version"], "gold_prefix": prefix}
    lake.write_json(parity_record_key(record["model_version"]), result)
    context.log.info(f"parity v{record['model_version']}: mAP50 torch {report.map50_torch:.4f} onnx "
                     f"{report.map50_onnx:.4f}; {report.images_matching}/{report.images} images match")
    return AssetCheckResult(passed=report.passed, metadata={
        "images": report.images,
        "map50_torch": round(report.map50_torch, 6),
        "map50_onnx": round(report.map50_onnx, 6),
        "map50_diff": round(report.map50_diff, 6),
        "max_map50_diff": config.max_map50_diff,
        "box_conf": config.box_conf,
        "boxes_torch": report.boxes_torch,
        "boxes_onnx": report.boxes_onnx,
        "images_matching": report.images_matching,
        "mismatches": MetadataValue.md("\n".join(f"- {m}" for m in report.mismatches[:20]) or "_none_"),
    })


# -- onnx_int8_model -------------------------------------------------------------------------------
@asset(
    deps=[onnx_model],
    group_name=GROUP,
    owners=["team:ml-platform"],
    kinds={"onnx"},
    description="Static INT8 quantisation (ONNX Runtime QDQ, per-channel QInt8 weights) calibrated on gold train+val "
    "images, with the Detect head's box decoding left in float; size, CPU latency and test mAP50 against FP32.",
)
def onnx_int8_model(context: AssetExecutionContext, config: OnnxInt8Config, lake: Lake) -> MaterializeResult:
    from alumi_pipelines.lib import onnx_export

    record = _latest_record(context, "onnx_model", lake, "export_key")
    version = record["model_version"]
    with _scratch(context, "onnx_int8_model") as work:
        fp32 = _fetch(lake, record["onnx_key"], work / "model.onnx")
        prefix = _gold_prefix(lake, record["dataset_hash"])
        candidates = _image_keys(lake, prefix, "train") + _image_keys(lake, prefix, "val")
        chosen = onnx_export.select_calibration_images(candidates, config.calibration_images)
        test_keys = _image_keys(lake, prefix, "test")
        root = _stage_gold(lake, prefix, ("train", "val", "test"), work, only=set(chosen) | set(test_keys))
        calibration = [root / rel for rel in chosen]
        quant = onnx_export.quantize_int8(fp32, work / "model_int8.onnx", calibration, per_channel=config.per_channel,
                                          activation_type=config.activation_type)
        test = onnx_export.read_yolo_split(root, "test", len(record["names"]))
        paths = [t.path for t in test]
        nc = len(record["names"])
        map_fp32, _ = onnx_export.map50(onnx_export.predict_onnx(fp32, paths, conf=onnx_export.EVAL_CONF), test, nc)
        map_int8, _ = onnx_export.map50(onnx_export.predict_onnx(quant.path, paths, conf=onnx_export.EVAL_CONF), test, nc)
        lat_fp32 = onnx_export.session_latency(fp32, paths, runs=config.latency_runs)
        lat_int8 = onnx_export.session_latency(quant.path, paths, runs=config.latency_runs)
        key = lake.put_file(quant.path, f"{onnx_prefix(version)}/model_int8.onnx")
        int8_sha = onnx_export.file_sha256(quant.path)
        cal_list = [{"path": f"{prefix}/{rel}", "sha256": onnx_export.file_sha256(root / rel)} for rel in chosen]
    speedup = lat_fp32.median_ms / lat_int8.median_ms if lat_int8.median_ms > 0 else 0.0
    int8 = {
        "model_version": version, "int8_key": key, "sha256": int8_sha, "fp32_key": record["onnx_key"],
        "size_bytes_fp32": record["size_bytes"], "size_bytes_int8": quant.size_bytes,
        "activation_type": quant.activation_type, "per_channel": quant.per_channel,
        "excluded_nodes": quant.excluded_nodes, "preprocessed": quant.preprocessed,
        "float_nodes": quant.float_nodes, "shared_concat_scales": quant.shared_concat_scales,
        "input_format": quant.input_format,
        "calibration": cal_list, "test_images": len(test),
        "map50_fp32": round(map_fp32, 6), "map50_int8": round(map_int8, 6), "map50_drop": round(map_fp32 - map_int8, 6),
        "latency_fp32": lat_fp32.as_dict(), "latency_int8": lat_int8.as_dict(), "speedup": round(speedup, 3),
        "dagster_run_id": context.run_id,
    }
    record_key = lake.write_json(int8_record_key(version), int8)
    context.log.info(f"INT8 v{version}: mAP50 {map_fp32:.4f} → {map_int8:.4f}, latency {lat_fp32.median_ms:.2f} → "
                     f"{lat_int8.median_ms:.2f} ms ({speedup:.2f}×), {len(cal_list)} calibration images")
    return MaterializeResult(metadata={
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
        "map50_fp32": round(map_fp32, 6),
        "map50_int8": round(map_int8, 6),
        "map50_drop": round(map_fp32 - map_int8, 6),
        "summary": MetadataValue.md(_table([
            ("size (bytes) FP32 / INT8", f"{record['size_bytes']} / {quant.size_bytes}"),
            (f"CPU latency, median of {config.latency_runs} (ms) FP32 / INT8",
             f"{lat_fp32.median_ms} / {lat_int8.median_ms}"),
            ("speed-up", f"{speedup:.2f}×"),
            (f"test mAP50 FP32 / INT8 ({len(test)} images)", f"{map_fp32:.4f} / {map_int8:.4f}"),
        ])),
    })


@asset_check(
    asset=onnx_int8_model,
    name="int8_accuracy",
    blocking=True,
    description="Refuses the INT8 model when its test mAP50 is more than the margin (default 0.01 = 1 point) below "
    "the FP32 model's.",
)
def int8_accuracy(context: AssetCheckExecutionContext, config: Int8AccuracyConfig, lake: Lake) -> AssetCheckResult:
    int8 = _latest_record(context, "onnx_int8_model", lake, "int8_record_key")
    drop = int8["map50_fp32"] - int8["map50_int8"]
    passed = drop <= config.margin
    why = (f"mAP50 FP32 {int8['map50_fp32']:.4f} vs INT8 {int8['map50_int8']:.4f}: drop {drop:+.4f} "
           f"{'within' if passed else 'exceeds'} the margin {config.margin}")
    context.log.info(why)
    return AssetCheckResult(passed=passed, metadata={
        "map50_fp32": int8["map50_fp32"], "map50_int8": int8["map50_int8"], "map50_drop": round(drop, 6),
        "margin": config.margin, "why": MetadataValue.text(why),
    })


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
def tensorrt_engine(context: AssetExecutionContext, config: TensorRTEngineConfig, lake: Lake) -> MaterializeResult:
    from alumi_edge.model_info import read_model_info

    from alumi_pipelines.lib import tensorrt_plan

    record = _latest_record(context, "onnx_model", lake, "export_key")
    int8 = _latest_record(context, "onnx_int8_model", lake, "int8_record_key")
    version = record["model_version"]
    trt, cuda, reason = tensorrt_plan.tensorrt_guard()
    report = None
    with _scratch(context, "tensorrt_engine") as work:
        onnx_path = _fetch(lake, record["onnx_key"], work / "model.onnx")
        info = read_model_info(onnx_path)
        if trt is not None:
            cal_dir = work / "calibration"
            images = [_fetch(lake, c["path"], cal_dir / f"{i:05d}{Path(c['path']).suffix}")
                      for i, c in enumerate(int8["calibration"])]
            try:
                report = tensorrt_plan.build_engines(onnx_path, work / "engines", images, info.input_hw, record["sha256"],
                                                     latency_runs=config.latency_runs,
                                                     workspace_bytes=config.workspace_mib << 20, modules=(trt, cuda))
            except tensorrt_plan.EngineBuildError as exc:
                raise Failure(f"TensorRT engine build failed for model v{version}: {exc}") from exc
            for engine in report.engines:
                lake.put_file(engine.path, engine_key(version, engine.path.name))
                if engine.calibration_cache is not None:
                    lake.put_file(engine.calibration_cache, engine_key(version, engine.calibration_cache.name))
            reason = f"engines built here with TensorRT {report.trt_version} on {report.gpu_name}"
    plan = tensorrt_plan.build_plan(
        onnx_file="model.onnx", onnx_sha256=record["sha256"], input_name="images",
        input_shape=[1, 3, *info.input_hw], calibration_images=int8["calibration"], model_version=version,
        reason=reason, int8_onnx_file="model_int8.onnx", workspace_mib=config.workspace_mib,
    )
    if report is not None:
        plan["built_here"] = True
        plan["build_report"] = report.as_dict()
    key = lake.write_json(plan_key(version), plan)
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
            metadata[f"engine_{engine.precision}_key"] = engine_key(version, engine.path.name)
    else:
        context.log.info(f"no TensorRT engine built here: {reason}; the release carries the build plan")
    return MaterializeResult(metadata=metadata)


# -- edge_release ----------------------------------------------------------------------------------
def _build_edge_wheel(source: Path, out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of the alumi-edge sources, offline, from a clean copy (the tree stays untouched)."""
    if not (source / "pyproject.toml").is_file():
        raise Failure(f"alumi-edge sources not found at {source} (expected edge_export/pyproject.toml)")
    copy = out_dir / "src"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*"))
    wheels = out_dir / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         str(copy), "-w", str(wheels)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    found = sorted(wheels.glob("alumi_edge-*.whl"))
    if proc.returncode != 0 or len(found) != 1:
        raise Failure(f"building the alumi-edge wheel failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return found[0]


def signing_key_path(configured: str | None, home: Path) -> tuple[Path, bool]:
    """(key path, is the development key): config, then $ALUMI_RELEASE_KEY, else ALUMI_HOME/keys/release-dev.key."""
    chosen = configured or os.environ.get(RELEASE_KEY_ENV, "").strip()
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            source = "config signing_key" if configured else RELEASE_KEY_ENV
            raise Failure(f"{source}={chosen!r}: no such file (the release signing key must exist; "
                          "unset it to sign with a development key)")
        return path, False
    return home / "keys" / DEV_KEY_NAME, True


@asset(
    deps=[tensorrt_engine],
    group_name=GROUP,
    owners=["team:ml-platform"],
    kinds={"python"},
    description="A signed edge release at releases/<version>/: the alumi-edge wheel, model.onnx, model_int8.onnx, "
    "the TensorRT build plan, a sample image with its expected detections, manifest.json and its Ed25519 "
    "signature; then the channel pointer (releases/channels/stable.json) moves to it.",
)
def edge_release(context: AssetExecutionContext, config: EdgeReleaseConfig, lake: Lake) -> MaterializeResult:
    from alumi_pipelines.lib import onnx_export, release

    settings = Settings.from_env()
    record = _latest_record(context, "onnx_model", lake, "export_key")
    int8 = _latest_record(context, "onnx_int8_model", lake, "int8_record_key")
    version = record["model_version"]
    name = release_version(version, record["dataset_hash"])
    key_path, dev_key = signing_key_path(config.signing_key, settings.home)
    private_pem, public_pem = release.load_or_create_signing_key(key_path)
    if dev_key:
        context.log.warning(f"signing with the development key {key_path}; set {RELEASE_KEY_ENV} for production")
    manifest_key = f"releases/{name}/{release.MANIFEST_NAME}"
    reused = lake.exists(manifest_key)
    if reused:
        context.log.info(f"release {name} already published; releases are immutable, moving the channels only")
        manifest = lake.read_json(manifest_key)
        for channel in config.channels:
            lake.write_bytes(f"releases/channels/{channel}.json", release.channel_pointer(name))
        keys = [f"releases/channels/{c}.json" for c in config.channels]
    else:
        with _scratch(context, "edge_release") as work:
            model = _fetch(lake, record["onnx_key"], work / "in" / "model.onnx")
            model_int8 = _fetch(lake, int8["int8_key"], work / "in" / "model_int8.onnx")
            plan = _fetch(lake, plan_key(version), work / "in" / "tensorrt_plan.json")
            wheel = _build_edge_wheel(EDGE_SOURCE, work / "wheel")
            prefix = _gold_prefix(lake, record["dataset_hash"])
            root = _stage_gold(lake, prefix, ("test",), work)
            test = [t.path for t in onnx_export.read_yolo_split(root, "test", len(record["names"]))]
            sample, found = onnx_export.pick_sample_image(model, test, conf=config.sample_conf)
            expected = release.expected_detections(
                found.boxes.tolist(), found.confidences.tolist(), found.class_ids.tolist(), record["names"],
                conf=config.sample_conf, iou=onnx_export.NMS_IOU)
            # The INT8 model's own boxes on the same image: a device self-tests whichever model it serves.
            found_int8 = onnx_export.predict_onnx(model_int8, [sample], conf=config.sample_conf)[0]
            expected["roles"] = {"model_int8": {"boxes": release.expected_detections(
                found_int8.boxes.tolist(), found_int8.confidences.tolist(), found_int8.class_ids.tolist(),
                record["names"], conf=config.sample_conf, iou=onnx_export.NMS_IOU)["boxes"]}}
            expected_path = work / "in" / "sample_expected.json"
            expected_path.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
            parity = lake.read_json(parity_record_key(version)) if lake.exists(parity_record_key(version)) else {}
            metrics = {
                "test_map50_fp32": int8["map50_fp32"], "test_map50_int8": int8["map50_int8"],
                "cpu_latency_ms_fp32": int8["latency_fp32"]["median_ms"],
                "cpu_latency_ms_int8": int8["latency_int8"]["median_ms"],
                **({"parity_map50_diff": parity["map50_diff"]} if "map50_diff" in parity else {}),
            }
            files = [
                release.ReleaseInput(model, "model.onnx", "model"),
                release.ReleaseInput(model_int8, "model_int8.onnx", "model_int8"),
                release.ReleaseInput(wheel, wheel.name, "wheel"),
                release.ReleaseInput(plan, "tensorrt_plan.json", "build_plan"),
                release.ReleaseInput(sample, f"sample/sample{sample.suffix.lower()}", "sample_image"),
                release.ReleaseInput(expected_path, "sample/expected.json", "sample_expected"),
            ]
            from alumi_pipelines.resources.process_layout import RISK_CHAMPION_KEY

            if lake.exists(RISK_CHAMPION_KEY):  # the process branch's champion risk model serves /v1/risk
                files.append(release.ReleaseInput(_fetch(lake, RISK_CHAMPION_KEY, work / "in" / "risk_model.json"),
                                                  "risk_model.json", "risk_model"))
            manifest = release.write_release(
                work / "release", files, version=name, classes=record["names"], imgsz=record["imgsz"],
                private_key_pem=private_pem, metrics=metrics,
                source={"mlflow_run_id": record["mlflow_run_id"], "model_name": record["model_name"],
                        "model_version": version, "dataset_hash": record["dataset_hash"]},
            )
            keys = release.publish_release(work / "release", lake.write_bytes, channels=config.channels)
    context.log.info(f"release {name}: channels {', '.join(config.channels)} → {name}")
    return MaterializeResult(metadata={
        "release_version": name,
        "release_prefix": f"releases/{name}",
        "manifest_key": manifest_key,
        "manifest_path": MetadataValue.path(lake.uri(manifest_key)),
        "channels": MetadataValue.json(list(config.channels)),
        "reused": reused,
        "model_version": version,
        "files": MetadataValue.md("\n".join(
            ["| file | role | bytes | sha256 |", "| --- | --- | ---: | --- |"]
            + [f"| {f['path']} | {f['role']} | {f['size']} | `{f['sha256'][:16]}…` |" for f in manifest["files"]])),
        "keys_written": len(keys),
        "signing_key": "development key" if dev_key else str(key_path),
        "public_key": MetadataValue.text(public_pem.decode("ascii")),
    })


export_job = define_asset_job(
    "export_job",
    selection=AssetSelection.groups(GROUP),
    description="The champion → ONNX (parity-checked) → INT8 ONNX (accuracy-checked) → TensorRT engines or their "
    "on-device plan → signed edge release and the stable channel pointer.",
)

EXPORT_ASSETS = [onnx_model, onnx_int8_model, tensorrt_engine, edge_release]
EXPORT_CHECKS = [onnx_parity, int8_accuracy]
EXPORT_JOBS = [export_job]
