"""``detector_evaluation`` and its blocking check ``promotion_gate``: challenger vs champion on the frozen test split.

The evaluation record goes to ``models/evaluations/<version>.json``; the gate's verdict (``lib.training.gate``)
next to it, where ``champion_model`` reads it.
"""

import datetime as dt
from pathlib import Path
from typing import Any, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
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

from alumi_pipelines.assets.gold import read_gold_pointer, stage_gold
from alumi_pipelines.assets.metadata import png_md
from alumi_pipelines.assets.pictures import evaluation_errors
from alumi_pipelines.assets.records import latest_record
from alumi_pipelines.lib import training
from alumi_pipelines.lib.training import gate
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

SHOWN_PLOTS = ("confusion_matrix_normalized", "BoxPR_curve", "val_batch0_pred")


class DetectorEvaluationConfig(Config):
    version: Optional[str] = Field(default=None, description="challenger version; default: the newest version")
    batch: int = Field(default=16, description="validation batch size")
    device: Optional[str] = Field(default=None, description="cpu, 0 or mps; default: the profile's device")
    latency_images: int = Field(default=20, description="test images timed one at a time for latency")


class PromotionGateConfig(Config):
    tolerance: float = Field(
        default=0.01,
        description="challenger mAP50-95 may trail the champion by this much "
        "(negative: it must beat the champion by that much)",
    )
    recall_margin: float = Field(default=0.05, description="largest allowed recall drop of any class")
    floor: Optional[float] = Field(
        default=None,
        description="mAP50-95 needed when there is no champion; default: the pipeline_settings gate_floor "
        "(ALUMI_GATE_FLOOR), else "
        "the profile's floor (ci 0.0, cpu 0.1, gpu 0.25)",
    )


def gate_rule(config: PromotionGateConfig, settings: PipelineSettings) -> gate.GateRule:
    """The rule from config, then the settings' gate floor (ALUMI_GATE_FLOOR), then the profile's defaults."""
    floor = config.floor if config.floor is not None else settings.gate_floor
    return gate.rule_for_profile(
        settings.profile, floor=floor, tolerance=config.tolerance, recall_margin=config.recall_margin
    )


def _small_png(path: Path, max_side: int = 640) -> bytes:
    """A plot downscaled for inline display."""
    import cv2

    img = cv2.imread(str(path))
    if img is None:
        return path.read_bytes()
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".png", img)
    return data.tobytes() if ok else path.read_bytes()


def _fmt(value: Any, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def comparison_md(challenger: dict, champion: dict | None) -> str:
    """Markdown table: overall and per-class metrics of the challenger next to the champion's."""
    head = f"| metric | challenger v{challenger['version']} |" + (
        f" champion v{champion['version']} | Δ |" if champion else ""
    )
    sep = "| --- | ---: |" + (" ---: | ---: |" if champion else "")
    lines = [head, sep]

    def row(label: str, new: Any, old: Any = None) -> None:
        if champion is None:
            lines.append(f"| {label} | {_fmt(new)} |")
        else:
            delta = new - old if isinstance(new, float) and isinstance(old, float) else None
            lines.append(
                f"| {label} | {_fmt(new)} | {_fmt(old)} | {_fmt(delta) if delta is None else f'{delta:+.4f}'} |"
            )

    c, o = challenger["metrics"], champion["metrics"] if champion else {}
    for key, label in (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("precision", "precision"), ("recall", "recall")):
        row(label, c.get(key), o.get(key))
    row("latency ms/image", c.get("latency_ms"), o.get("latency_ms"))
    for name, stats in c["per_class"].items():
        old = (o.get("per_class") or {}).get(name, {}) if champion else {}
        for key in ("precision", "recall", "f1"):
            row(f"{name} {key} (n={stats['instances']})", stats.get(key), old.get(key))
    return "\n".join(lines)


def confusion_md(confusion: dict) -> str:
    labels = confusion["labels"]
    lines = ["| predicted \\ true | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for label, row in zip(labels, confusion["matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _evaluate_version(
    registry: MlflowRegistry,
    version: str,
    data_yaml: Path,
    work: Path,
    config_dir: Path,
    config: DetectorEvaluationConfig,
    defaults: dict,
) -> dict:
    """One registered version on the test split, at the image size it was trained with."""
    info = registry.version(version)
    weights = registry.download_weights(version, work / f"v{version}" / "weights")
    imgsz = int(info.tags.get("imgsz") or defaults["imgsz"])
    metrics = training.evaluate_detector(
        weights,
        data_yaml,
        work / f"v{version}",
        config_dir=config_dir,
        imgsz=imgsz,
        batch=config.batch,
        device=config.device or defaults["device"],
        latency_images=config.latency_images,
    )
    return {
        "version": version,
        "run_id": info.run_id,
        "dataset_hash": info.tags.get("dataset_hash"),
        "metrics": metrics,
    }


def latest_evaluation(context, lake: Lake) -> dict:
    """The evaluation record written by the latest materialisation of detector_evaluation."""
    return latest_record(context, "detector_evaluation", lake, "evaluation_key")


@asset(
    deps=[AssetKey("detector_model")],
    group_name="training",
    owners=["team:data-science"],
    kinds={"pytorch", "mlflow"},
    description="The newest detector version (challenger) and the current champion evaluated on the frozen test "
    "split of the current gold dataset: mAP50, mAP50-95, per-class precision/recall/F1, confusion matrix, "
    "latency per image. The record is kept at models/evaluations/<version>.json.",
)
def detector_evaluation(
    context: AssetExecutionContext,
    config: DetectorEvaluationConfig,
    lake: Lake,
    mlflow: MlflowRegistry,
    pipeline_settings: PipelineSettings,
) -> MaterializeResult:
    challenger_info = mlflow.version(config.version) if config.version else mlflow.latest_version()
    if challenger_info is None:
        raise Failure(f"model {mlflow.model_name!r} has no registered version: materialise detector_model first")
    challenger_version = challenger_info.version
    champion_version = mlflow.alias_version("champion")
    defaults = training.profile_defaults(pipeline_settings.profile)
    with pipeline_settings.scratch(context.run_id, "detector_evaluation") as work:
        pointer = read_gold_pointer(lake)
        local = stage_gold(lake, pointer["prefix"], work, cache=pipeline_settings.cache(), log=context.log.info)
        data_yaml = training.link_yolo_dataset(local, work / "dataset")
        summary = training.check_yolo_dataset(work / "dataset")
        config_dir = pipeline_settings.ultralytics_dir
        challenger = _evaluate_version(mlflow, challenger_version, data_yaml, work, config_dir, config, defaults)
        pictures = evaluation_errors(
            mlflow.download_weights(challenger_version, work / f"v{challenger_version}" / "weights"),
            data_yaml.parent,
            summary.classes,
            imgsz=challenger["metrics"]["imgsz"],
            config_dir=config_dir,
        )
        champion, incomparable = None, None
        if champion_version is not None and champion_version != challenger_version:
            try:
                champion = _evaluate_version(mlflow, champion_version, data_yaml, work, config_dir, config, defaults)
            except training.DatasetError as exc:  # e.g. the class list changed since the champion was trained
                incomparable = f"champion v{champion_version} cannot be evaluated on this dataset: {exc}"
                context.log.warning(incomparable + "; the gate falls back to the absolute floor")
        plot_keys = {}
        for name in SHOWN_PLOTS:
            path = challenger["metrics"]["plots"].get(name)
            if path is None:
                path = next(iter(sorted((work / f"v{challenger_version}" / "val").glob(f"{name}.*"))), None)
            if path is not None and Path(path).is_file():
                key = lake_keys.plot_key(challenger_version, Path(path).name)
                lake.put_file(path, key)
                plot_keys[name] = (key, _small_png(Path(path)))
    for record in (challenger, champion):
        if record is not None:
            record["metrics"]["plots"] = {n: k for n, (k, _) in plot_keys.items()} if record is challenger else {}
    evaluation = {
        "model_name": mlflow.model_name,
        "dataset_hash": pointer["dataset_hash"],
        "split": "test",
        "test_images": summary.images["test"],
        "classes": summary.classes,
        "challenger": challenger,
        "champion": champion,
        "challenger_is_champion": champion_version == challenger_version,
        "champion_not_comparable": incomparable,
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(),
        "dagster_run_id": context.run_id,
    }
    key = lake.write_json(lake_keys.evaluation_key(challenger_version), evaluation)
    c = challenger["metrics"]
    mlflow.set_version_tags(
        challenger_version,
        {"metrics.test.mAP50": c["map50"], "metrics.test.mAP50-95": c["map50_95"], "evaluation_key": key},
    )
    if challenger["run_id"]:
        run = mlflow.tracked(challenger["run_id"])
        run.log_metrics(
            {"test/mAP50": c["map50"], "test/mAP50-95": c["map50_95"], "test/latency_ms": c["latency_ms"] or 0.0}
        )
        run.log_dict(evaluation, f"evaluation/{challenger_version}.json")
    context.log.info(
        f"challenger v{challenger_version}: test mAP50 {c['map50']:.4f} mAP50-95 {c['map50_95']:.4f}"
        + (f"; champion v{champion_version}: mAP50-95 {champion['metrics']['map50_95']:.4f}" if champion else "")
    )
    metadata: dict[str, Any] = {
        "evaluation_key": key,
        "challenger_version": challenger_version,
        "champion_version": champion_version or "none",
        "dataset_hash": pointer["dataset_hash"],
        "test_images": summary.images["test"],
        "challenger_mAP50": c["map50"],
        "challenger_mAP50_95": c["map50_95"],
        "challenger_latency_ms": c["latency_ms"] or 0.0,
        "comparison": MetadataValue.md(comparison_md(challenger, champion)),
        "confusion_matrix": MetadataValue.md(confusion_md(c["confusion_matrix"])),
    }
    if champion is not None:
        metadata["champion_mAP50_95"] = champion["metrics"]["map50_95"]
    if incomparable:
        metadata["champion_not_comparable"] = MetadataValue.text(incomparable)
    metadata.update(pictures)
    for name, (plot, data) in plot_keys.items():
        metadata[f"plot_{name}"] = MetadataValue.md(png_md(name, data))
        metadata[f"plot_{name}_path"] = MetadataValue.path(lake.uri(plot))
    return MaterializeResult(metadata=metadata)


@asset_check(
    asset=detector_evaluation,
    name="promotion_gate",
    blocking=True,
    description="The challenger may become champion: test mAP50-95 >= champion - tolerance and no class's recall "
    "drops by more than the margin; with no champion, mAP50-95 >= the floor. Failing keeps the champion.",
)
def promotion_gate(
    context: AssetCheckExecutionContext, config: PromotionGateConfig, lake: Lake, pipeline_settings: PipelineSettings
) -> AssetCheckResult:
    evaluation = latest_evaluation(context, lake)
    rule = gate_rule(config, pipeline_settings)
    challenger = evaluation["challenger"]
    champion = evaluation.get("champion")
    if evaluation.get("challenger_is_champion"):
        decision = gate.GateDecision(
            True,
            [],
            [
                {
                    "name": "already champion",
                    "passed": True,
                    "detail": f"version {challenger['version']} is already the champion",
                }
            ],
        )
    else:
        decision = gate.decide(challenger["metrics"], champion["metrics"] if champion else None, rule)
    verdict = {
        "version": challenger["version"],
        "champion_version": champion["version"] if champion else None,
        "evaluation_run_id": evaluation["dagster_run_id"],
        "rule": {"tolerance": rule.tolerance, "recall_margin": rule.recall_margin, "floor": rule.floor},
        "dataset_hash": evaluation["dataset_hash"],
        **decision.as_dict(),
    }
    lake.write_json(lake_keys.gate_key(challenger["version"]), verdict)
    context.log.info(f"promotion gate for v{challenger['version']}: {decision.summary()}")
    return AssetCheckResult(
        passed=decision.passed,
        metadata={
            "challenger_version": challenger["version"],
            "champion_version": champion["version"] if champion else "none",
            "why": MetadataValue.text(decision.summary()),
            "criteria": MetadataValue.md(decision.markdown()),
            "tolerance": rule.tolerance,
            "recall_margin": rule.recall_margin,
            "floor": rule.floor,
        },
    )
