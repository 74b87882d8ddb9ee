"""``detector_model``: a YOLO detector trained on the current gold dataset, logged and registered in MLflow.

The asset stages the gold folder (:func:`_stage_gold`), then ``lib.training`` validates the config and runs
ultralytics offline; each trial of a sweep is a nested MLflow run and the best one is registered.
"""

from pathlib import Path
from typing import Any, Optional

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from alumi_pipelines.assets.gold import read_gold_pointer, read_version_manifest, stage_gold
from alumi_pipelines.lib import training
from alumi_pipelines.lib.progress import EpochClock
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


class DetectorTrainingConfig(Config):
    """Training config: a profile's defaults, with every field set here taking precedence."""

    profile: Optional[str] = Field(
        default=None, description="ci | cpu | gpu; default: the pipeline_settings profile (ALUMI_PROFILE)"
    )
    architecture: Optional[str] = Field(default=None, description="model yaml, e.g. yolo11n.yaml or yolo11s.yaml")
    base_weights: Optional[str] = Field(
        default=None, description="YOLO .pt to start from: local path, file://, models:/name@alias or runs:/ URI"
    )
    epochs: Optional[int] = None
    imgsz: Optional[int] = Field(
        default=None, description="training image size (multiple of 32); default: the profile's, cpu/gpu: from the data"
    )
    imgsz_max: Optional[int] = Field(default=None, description="largest image size the data-aware choice may pick")
    batch: Optional[int] = Field(default=None, description="default: the profile's, cpu: from available memory")
    threads: Optional[int] = Field(default=None, description="torch threads on a CPU (0 = every core)")
    warm_start: Optional[bool] = Field(
        default=None, description="start from the champion's weights when its classes are the dataset's (retrains)"
    )
    device: Optional[str] = Field(default=None, description="cpu, 0, 0,1 or mps")
    seed: Optional[int] = None
    patience: Optional[int] = Field(default=None, description="epochs without improvement before stopping (0 = off)")
    workers: Optional[int] = Field(default=None, description="dataloader workers")
    optimizer: Optional[str] = None
    lr0: Optional[float] = None
    cos_lr: Optional[bool] = None
    max_minutes: Optional[float] = Field(default=None, description="wall-clock budget; overrides epochs")
    cache: Optional[str] = Field(default=None, description="false | ram | disk")
    mosaic: Optional[float] = None
    mixup: Optional[float] = None
    fliplr: Optional[float] = None
    flipud: Optional[float] = None
    hsv: Optional[bool] = Field(default=None, description="hue/saturation/value augmentation on or off")
    degrees: Optional[float] = None
    translate: Optional[float] = None
    scale: Optional[float] = None
    close_mosaic: Optional[int] = None
    sweep: Optional[dict[str, list[Any]]] = Field(
        default=None, description="hyper-parameter search space {param: [values]}; each trial is a nested MLflow run"
    )
    sweep_mode: str = Field(default="grid", description="grid | random")
    n_trials: Optional[int] = Field(default=None, description="trials to run (grid: the first n; random: n draws)")

    def overrides(self) -> dict[str, Any]:
        """The explicitly set training keys."""
        skip = {"profile", "sweep", "sweep_mode", "n_trials"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


def resolve_base_weights(uri: str | None, registry: MlflowRegistry, work: Path) -> Path | None:
    """A local, checked YOLO checkpoint for a base-weights path or URI (None when not given)."""
    if not uri:
        return None
    if uri.startswith(("models:/", "runs:/")):
        try:
            local = registry.download_uri(uri, work / "base_weights")
        except Exception as exc:
            raise training.WeightsError(f"base weights {uri}: cannot be fetched from MLflow ({exc})") from exc
        return training.check_base_weights(local)
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise training.WeightsError(
            f"base weights {uri}: unsupported URI scheme (use a local path, file://, models:/ or runs:/)"
        )
    return training.check_base_weights(uri)


def warm_start_weights(
    registry: MlflowRegistry, classes: list[str], work: Path, config_dir: Path
) -> tuple[Path | None, str]:
    """The champion's weights when its classes are the dataset's, and what training starts from."""
    version = registry.alias_version("champion")
    if version is None:
        return None, "scratch (no champion yet)"
    tagged = registry.version(version).tags.get("classes")
    theirs = tagged.split(",") if tagged is not None else None
    weights = None
    if theirs is None:  # versions registered before the tag existed: the checkpoint's own names
        weights = registry.download_weights(version, work / "champion")
        theirs = training.checkpoint_classes(weights, config_dir=config_dir)
    if theirs != list(classes):
        return None, f"scratch (champion v{version} knows classes {theirs}, the dataset has {list(classes)})"
    weights = weights or registry.download_weights(version, work / "champion")
    return weights, f"champion v{version}"


def gold_long_sides(lake: Lake, pointer: dict) -> list[int]:
    """The long side in pixels of each train image of the gold version (for the data-aware image size)."""
    import polars as pl

    manifest = read_version_manifest(lake, pointer["prefix"])
    if not {"width", "height", "split"} <= set(manifest.columns):
        return []
    train = manifest.filter(pl.col("split") == "train")
    return train.select(pl.max_horizontal("width", "height")).to_series().to_list()


def _stage_gold(lake: Lake, work: Path, settings: PipelineSettings, log) -> tuple[dict, training.DatasetSummary]:
    """The current gold dataset as a local YOLO folder (staged in the cache), mirrored under ``work`` and checked
    before any training."""
    pointer = read_gold_pointer(lake)
    try:
        local = stage_gold(lake, pointer["prefix"], work, cache=settings.cache(), log=log)
    except FileNotFoundError as exc:
        raise training.DatasetError(f"{exc} (named by {lake_keys.GOLD_POINTER})") from exc
    training.link_yolo_dataset(local, work / "dataset")
    return pointer, training.check_yolo_dataset(work / "dataset")


def _dataset_input(lake: Lake, pointer: dict, summary: training.DatasetSummary) -> dict[str, Any]:
    """The gold version as an MLflow dataset input: its hash, the URI of its manifest, its counts."""
    return {
        "name": f"gold-{pointer['dataset_hash'][:12]}",
        "digest": pointer["dataset_hash"],
        "source_uri": lake.uri(lake_keys.gold_manifest_key(pointer["prefix"])),
        "profile": {
            "dataset_hash": pointer["dataset_hash"],
            "classes": summary.classes,
            **{f"{s}_images": n for s, n in summary.images.items()},
        },
    }


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    keys = (
        "train/box_loss",
        "train/cls_loss",
        "train/dfl_loss",
        "val/precision",
        "val/recall",
        "val/mAP50",
        "val/mAP50-95",
    )
    shown = " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)
    return f"epoch {epoch}/{epochs} {shown}"


def _point(trial: dict[str, Any], sweep: dict[str, list] | None) -> dict[str, Any]:
    """The swept values of a trial."""
    return {k: trial[k] for k in sorted(sweep or {})}


def _history_md(history: list[dict[str, float]]) -> str:
    keys = ["train/box_loss", "train/cls_loss", "val/mAP50", "val/mAP50-95"]
    lines = ["| epoch | " + " | ".join(keys) + " |", "| ---: |" + " ---: |" * len(keys)]
    for i, row in enumerate(history, start=1):
        lines.append(f"| {i} | " + " | ".join(f"{row.get(k, float('nan')):.4f}" for k in keys) + " |")
    return "\n".join(lines)


def _train_trial(context, run, args, summary, work, base_weights, config_dir, name):
    """One training run logged to ``run``: params, per-epoch metrics (also to the run log), artifacts."""
    run.log_params({**args, **training.ultralytics_train_kwargs(args)})
    timing = EpochClock()  # time per epoch and time left, in each epoch's line

    def on_epoch(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        context.log.info(f"[{name}] " + _epoch_line(epoch, epochs, metrics) + f"; {timing(epoch, epochs)}")
        run.log_metrics(metrics, step=epoch)

    outcome = training.train_detector(
        summary.data_yaml,
        args,
        work / "runs",
        config_dir=config_dir,
        name=name,
        base_weights=base_weights,
        on_epoch=on_epoch,
    )
    run.log_params({"cpu_threads": outcome.threads, "dataloader_workers": outcome.workers})
    run.log_metrics({f"best/{k}": v for k, v in outcome.final_metrics.items()}, step=outcome.epochs_run)
    run.log_metrics(
        {
            "train_seconds": outcome.train_seconds,
            "images_per_second": outcome.images_per_second,
            "cpu_utilisation": outcome.cpu_utilisation,
        },
        step=outcome.epochs_run,
    )
    run.log_artifact(outcome.best_weights, "weights")
    run.log_artifacts(outcome.plots, "plots")
    run.log_artifacts(
        [p for p in (outcome.save_dir / "results.csv", outcome.save_dir / "args.yaml") if p.is_file()], "training"
    )
    return outcome


@asset(
    deps=[AssetKey("gold_dataset")],
    group_name="training",
    owners=["team:data-science"],
    kinds={"pytorch", "mlflow"},
    description="A YOLO detector trained offline on the current gold dataset (train/val splits); params, "
    "per-epoch metrics, weights and plots in MLflow; registered as a new version of the detector model.",
)
def detector_model(
    context: AssetExecutionContext,
    config: DetectorTrainingConfig,
    lake: Lake,
    mlflow: MlflowRegistry,
    pipeline_settings: PipelineSettings,
) -> MaterializeResult:
    profile = config.profile or pipeline_settings.profile
    # Fail fast, before any data is staged or a model is built.
    args = training.resolve_training_args(profile, config.overrides())
    trials = training.sweep_trials(
        args, config.sweep, mode=config.sweep_mode, n_trials=config.n_trials, seed=args["seed"]
    )
    config_dir = pipeline_settings.ultralytics_dir
    with pipeline_settings.scratch(context.run_id, "detector_model") as work:
        base_weights = resolve_base_weights(args["base_weights"], mlflow, work)
        pointer, summary = _stage_gold(lake, work, pipeline_settings, context.log.info)
        context.log.info(
            f"gold {pointer['dataset_hash']}: images {summary.images}, train boxes {summary.boxes['train']}"
        )
        started_from = f"base weights {args['base_weights']}" if base_weights else "scratch"
        if base_weights is None and args["warm_start"]:
            base_weights, started_from = warm_start_weights(mlflow, summary.classes, work, config_dir)
        context.log.info(f"training starts from {started_from}")
        long_sides = gold_long_sides(lake, pointer)
        resolved = []
        for trial in trials:
            trial, choice = training.resolve_auto(trial, long_sides)
            resolved.append(trial)
        trials = resolved
        context.log.info(
            f"imgsz {choice.imgsz} ({choice.reasons['imgsz']}), batch {choice.batch} ({choice.reasons['batch']}), "
            f"{choice.threads} threads"
        )
        code = training.code_version()
        tags = {
            "dagster_run_id": context.run_id,
            "dataset_hash": pointer["dataset_hash"],
            "alumi.profile": profile,
            "git_commit": code["git_commit"],
            "code_version": code["code_version"],
        }
        dataset_params = {
            "dataset_hash": pointer["dataset_hash"],
            "classes": ",".join(summary.classes),
            **{f"{s}_images": n for s, n in summary.images.items()},
            "profile": profile,
            "code_version": code["code_version"],
            "started_from": started_from,
            **{f"auto/{k}": v for k, v in choice.reasons.items()},
        }
        dataset_input = _dataset_input(lake, pointer, summary)
        with mlflow.run(f"detector-{context.run_id[:8]}", tags=tags) as parent:
            parent.log_params(dataset_params)
            parent.log_input(**dataset_input)
            if len(trials) == 1:
                outcome = _train_trial(context, parent, trials[0], summary, work, base_weights, config_dir, "train")
                best_run, best_args, trial_rows = parent, trials[0], []
            else:
                parent.log_params({"sweep": config.sweep, "sweep_mode": config.sweep_mode, "n_trials": len(trials)})
                outcomes, runs = [], []
                for i, trial in enumerate(trials):
                    context.log.info(f"sweep trial {i + 1}/{len(trials)}: {_point(trial, config.sweep)}")
                    with mlflow.run(
                        f"trial-{i + 1}", tags={**tags, "alumi.trial": str(i + 1)}, parent_run_id=parent.run_id
                    ) as child:
                        child.log_params(dataset_params)
                        child.log_input(**dataset_input)
                        outcomes.append(
                            _train_trial(
                                context, child, trial, summary, work, base_weights, config_dir, f"trial-{i + 1}"
                            )
                        )
                        runs.append(child)
                best = training.best_trial([o.final_metrics for o in outcomes])
                outcome, best_run, best_args = outcomes[best], runs[best], trials[best]
                trial_rows = [
                    {"trial": i + 1, **_point(t, config.sweep), "val/mAP50-95": o.final_metrics.get("val/mAP50-95")}
                    for i, (t, o) in enumerate(zip(trials, outcomes))
                ]
                parent.set_tags({"alumi.best_trial": best + 1, "alumi.best_run_id": best_run.run_id})
                parent.log_metrics({f"best/{k}": v for k, v in outcome.final_metrics.items()})
                context.log.info(f"sweep: kept trial {best + 1} ({trial_rows[best]})")
            val = outcome.final_metrics
            version = mlflow.register_weights(
                best_run,
                tags={
                    **tags,
                    "mlflow_run_id": best_run.run_id,
                    "architecture": best_args["architecture"],
                    "imgsz": best_args["imgsz"],
                    "classes": ",".join(summary.classes),
                    "started_from": started_from,
                    "epochs_run": outcome.epochs_run,
                    "metrics.val.mAP50": val.get("val/mAP50", ""),
                    "metrics.val.mAP50-95": val.get("val/mAP50-95", ""),
                },
                description=f"trained on gold {pointer['dataset_hash']} with profile {profile}",
            )
            parent.set_tags({"alumi.model_version": version})
        context.log.info(f"registered {mlflow.model_name} version {version} (run {best_run.run_id})")
    metadata = {
        "model_name": mlflow.model_name,
        "model_version": version,
        "mlflow_run_id": best_run.run_id,
        "dataset_hash": pointer["dataset_hash"],
        "profile": profile,
        "architecture": best_args["architecture"],
        "imgsz": best_args["imgsz"],
        "imgsz_reason": choice.reasons["imgsz"],
        "batch": best_args["batch"],
        "batch_reason": choice.reasons["batch"],
        "cpu_threads": outcome.threads,
        "dataloader_workers": outcome.workers,
        "started_from": started_from,
        "epochs_run": outcome.epochs_run,
        "train_seconds": round(outcome.train_seconds, 2),
        "images_per_second": round(outcome.images_per_second, 2),
        "cpu_utilisation": round(outcome.cpu_utilisation, 3),
        "val_mAP50": float(val.get("val/mAP50", 0.0)),
        "val_mAP50_95": float(val.get("val/mAP50-95", 0.0)),
        "code_version": code["code_version"],
        "epochs": MetadataValue.md(_history_md(outcome.history)),
    }
    if trial_rows:
        metadata["sweep"] = MetadataValue.json(trial_rows)
    return MaterializeResult(metadata=metadata)
