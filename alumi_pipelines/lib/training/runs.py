"""Detector training and evaluation runs: ultralytics offline, per-epoch metrics, the test-split scores.

ultralytics and torch are imported inside the functions that run them, always after
:func:`alumi_pipelines.lib.training.offline.import_ultralytics`."""

from __future__ import annotations

import contextlib
import math
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alumi_pipelines.lib.training.dataset import DatasetError, check_base_weights, image_files, read_names
from alumi_pipelines.lib.training.offline import import_ultralytics
from alumi_pipelines.lib.training.profiles import ultralytics_train_kwargs, validate_training_args

_METRIC_NAMES = {
    "metrics/precision(B)": "val/precision",
    "metrics/recall(B)": "val/recall",
    "metrics/mAP50(B)": "val/mAP50",
    "metrics/mAP50-95(B)": "val/mAP50-95",
}


@contextlib.contextmanager
def _no_amp_download(device: str) -> Iterator[None]:
    """On GPUs, ultralytics' AMP self-check downloads a model when none is cached: trust AMP instead."""
    if str(device) in ("cpu", "mps"):
        yield
        return
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import WEIGHTS_DIR

    if (WEIGHTS_DIR / "yolo26n.pt").is_file():
        yield
        return
    original = trainer_module.check_amp
    trainer_module.check_amp = lambda model: True
    try:
        yield
    finally:
        trainer_module.check_amp = original


def clean_metric_name(name: str) -> str:
    """An ultralytics metric name as MLflow accepts it ("metrics/mAP50(B)" -> "val/mAP50")."""
    return _METRIC_NAMES.get(name) or re.sub(r"[^\w\-./ :]", "_", name)


def _clean_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in raw.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[clean_metric_name(key)] = round(value, 6)
    return out


EpochCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainingOutcome:
    save_dir: Path
    best_weights: Path
    epochs_run: int
    history: list[dict[str, float]]  # one dict per epoch (train losses, val metrics, learning rates)
    final_metrics: dict[str, float]  # best.pt on the val split
    train_seconds: float
    train_images: int
    plots: list[Path] = field(default_factory=list)
    threads: int = 0  # torch threads the epochs ran on
    workers: int = 0  # dataloader worker processes
    cpu_seconds: float = 0.0  # CPU time of the training process and its dataloader workers

    @property
    def cpu_utilisation(self) -> float:
        """CPU time over wall time × the cores the process may use: 1.0 is every core busy throughout."""
        from alumi_pipelines.lib.training.autoconf import cpu_count

        return self.cpu_seconds / (self.train_seconds * cpu_count()) if self.train_seconds > 0 else 0.0

    @property
    def images_per_second(self) -> float:
        return self.train_images * self.epochs_run / self.train_seconds if self.train_seconds > 0 else 0.0


def train_detector(
    data_yaml: Path,
    args: Mapping[str, Any],
    out_dir: Path,
    *,
    config_dir: Path,
    name: str = "train",
    base_weights: Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainingOutcome:
    """Train a YOLO detector offline from its architecture yaml (plus optional base weights).

    Outputs go to ``out_dir/name`` only; ``on_epoch(epoch, epochs, metrics)`` is called after each epoch.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    validate_training_args(args)
    out_dir = Path(out_dir).resolve()
    model = YOLO(args["architecture"])
    if base_weights is not None:
        model.load(str(check_base_weights(base_weights)))
    history: list[dict[str, float]] = []
    final: dict[str, float] = {}
    state = {"trained": False}

    def epoch_trained(trainer) -> None:
        state["trained"] = True

    def fit_epoch_end(trainer) -> None:
        metrics = dict(trainer.metrics or {})
        if not state["trained"]:  # ultralytics' last call: best.pt validated after the loop
            final.update(_clean_metrics(metrics))
            return
        state["trained"] = False
        losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        record = _clean_metrics({**losses, **metrics, **(trainer.lr or {}), "fitness": trainer.fitness or 0.0})
        history.append(record)
        if on_epoch is not None:
            on_epoch(trainer.epoch + 1, trainer.epochs, record)

    model.add_callback("on_train_epoch_end", epoch_trained)
    model.add_callback("on_fit_epoch_end", fit_epoch_end)
    kwargs = ultralytics_train_kwargs(args)
    used = _use_every_core(model, threads=int(args.get("threads") or 0), workers=int(kwargs["workers"]))
    start, cpu_start = time.perf_counter(), cpu_time()
    with _no_amp_download(kwargs["device"]):
        model.train(
            data=str(data_yaml),
            project=str(out_dir),
            name=name,
            exist_ok=True,
            verbose=False,
            plots=True,
            val=True,
            **kwargs,
        )
    seconds, cpu_seconds = time.perf_counter() - start, cpu_time() - cpu_start
    trainer = model.trainer
    save_dir = Path(trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    if not best.is_file():
        best = save_dir / "weights" / "last.pt"
    train_images = len(getattr(trainer.train_loader, "dataset", []) or [])
    plots = sorted(p for p in save_dir.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    return TrainingOutcome(
        save_dir=save_dir,
        best_weights=best,
        epochs_run=len(history),
        history=history,
        final_metrics=final or (history[-1] if history else {}),
        train_seconds=seconds,
        train_images=train_images,
        plots=plots,
        threads=used["threads"],
        workers=used["workers"],
        cpu_seconds=cpu_seconds,
    )


def cpu_time() -> float:
    """CPU seconds of this process (every thread) and of its children that have ended (dataloader workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _use_every_core(model, *, threads: int, workers: int) -> dict[str, int]:
    """Callbacks that give training the CPU: ``threads`` torch threads and ``workers`` dataloader processes.

    ultralytics sets ``workers=0`` on a CPU and its device selection calls ``torch.set_num_threads(cpu_count - 1)``
    (one thread on two cores), at the start of training and again before the final validation; these callbacks
    run after each of those and put the configured values back. Returns what the epochs ran with."""
    import torch

    used = {"threads": torch.get_num_threads(), "workers": 0}

    def pretrain_start(trainer) -> None:
        if workers and trainer.device.type == "cpu":
            trainer.args.workers = workers

    def set_threads(_) -> None:
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        used["threads"] = torch.get_num_threads()

    def pretrain_end(trainer) -> None:
        set_threads(trainer)
        used["workers"] = int(getattr(trainer.train_loader, "num_workers", 0) or 0)

    model.add_callback("on_pretrain_routine_start", pretrain_start)
    model.add_callback("on_pretrain_routine_end", pretrain_end)
    model.add_callback("on_train_epoch_start", set_threads)
    model.add_callback("on_val_start", set_threads)
    return used


def checkpoint_classes(weights: Path, *, config_dir: Path) -> list[str]:
    """The class names a YOLO checkpoint predicts, in id order."""
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    names = YOLO(str(check_base_weights(weights))).names
    return [str(names[i]) for i in sorted(names)]


def evaluate_detector(
    weights: Path,
    data_yaml: Path,
    out_dir: Path,
    *,
    config_dir: Path,
    imgsz: int,
    split: str = "test",
    batch: int = 16,
    device: str = "cpu",
    latency_images: int = 20,
) -> dict[str, Any]:
    """mAP50, mAP50-95, per-class precision/recall/F1, confusion matrix and latency of a model on a split.

    Validation letterboxes every image into the square input the exported model takes (``rect=False``, not
    ultralytics' default rectangular batches), so the mAP is the one the export gates measure on the edge runtime.

    Latency is the median wall time of single-image prediction (pre + inference + post) over up to
    ``latency_images`` images of the split, after one warm-up.
    """
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    out_dir = Path(out_dir).resolve()
    model = YOLO(str(weights))
    model_classes = [str(model.names[i]) for i in sorted(model.names)]
    data_classes = read_names(Path(data_yaml))
    if model_classes != data_classes:
        raise DatasetError(
            f"model {weights} predicts classes {model_classes}, the dataset has {data_classes}: "
            "their scores are not comparable"
        )
    metrics = model.val(
        data=str(data_yaml),
        split=split,
        imgsz=imgsz,
        batch=batch,
        rect=False,
        device=device,
        project=str(out_dir),
        name="val",
        exist_ok=True,
        plots=True,
        verbose=False,
    )
    names = [str(metrics.names[i]) for i in sorted(metrics.names)]
    box = metrics.box
    present = [int(i) for i in box.ap_class_index]
    instances = [int(n) for n in getattr(metrics, "nt_per_class", [])] or [0] * len(names)
    per_class: dict[str, dict[str, Any]] = {}
    for cid, cname in enumerate(names):
        n = instances[cid] if cid < len(instances) else 0
        if cid in present and n > 0:
            i = present.index(cid)
            per_class[cname] = {
                "instances": n,
                "precision": round(float(box.p[i]), 6),
                "recall": round(float(box.r[i]), 6),
                "f1": round(float(box.f1[i]), 6),
                "map50": round(float(box.ap50[i]), 6),
                "map50_95": round(float(box.ap[i]), 6),
            }
        else:
            per_class[cname] = {
                "instances": n,
                "precision": None,
                "recall": None,
                "f1": None,
                "map50": None,
                "map50_95": None,
            }
    matrix = getattr(metrics, "confusion_matrix", None)
    confusion = {
        "rows": "predicted",
        "cols": "true",
        "labels": names + ["background"],
        "matrix": [[int(round(v)) for v in row] for row in matrix.matrix.tolist()] if matrix is not None else [],
    }
    save_dir = Path(metrics.save_dir)
    split_dir = Path(yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))["path"]) / "images" / split
    images = image_files(split_dir)
    latency = _latency_ms(model, images[:latency_images], imgsz=imgsz, device=device)
    return {
        "split": split,
        "images": len(images),
        "imgsz": imgsz,
        "map50": round(float(box.map50), 6),
        "map50_95": round(float(box.map), 6),
        "precision": round(float(box.mp), 6),
        "recall": round(float(box.mr), 6),
        "per_class": per_class,
        "confusion_matrix": confusion,
        "latency_ms": latency,
        "val_speed_ms": {k: round(float(v), 3) for k, v in (metrics.speed or {}).items()},
        "plots": {p.stem: str(p) for p in sorted(save_dir.glob("*.png"))},
    }


def _latency_ms(model, images: list[Path], *, imgsz: int, device: str) -> float | None:
    """Median ms per single-image predict call (decode excluded)."""
    if not images:
        return None
    import cv2

    frames = [cv2.imread(str(p)) for p in images]
    frames = [f for f in frames if f is not None]
    if not frames:
        return None
    model.predict(frames[0], imgsz=imgsz, device=device, verbose=False, save=False)  # warm-up
    times = []
    for frame in frames:
        start = time.perf_counter()
        model.predict(frame, imgsz=imgsz, device=device, verbose=False, save=False)
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 3)
