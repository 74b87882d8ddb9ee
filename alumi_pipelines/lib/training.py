"""Detector training and evaluation: config profiles and validation, offline ultralytics runs, metrics.

Pure logic over local paths: nothing here imports dagster or touches the lake. ultralytics and torch are
imported inside the functions that run them, always after :func:`_offline_ultralytics`.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import math
import random
import re
import shutil
import statistics
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import yaml

PROFILES = ("ci", "cpu", "gpu")
SPLITS = ("train", "val", "test")
SWEEP_MODES = ("grid", "random")
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}

# Settings shared by every profile; each profile below overrides what makes it fast or thorough.
_COMMON = {
    "architecture": "yolo11n.yaml",
    "base_weights": None,
    "seed": 0,
    "optimizer": "auto",
    "lr0": 0.01,
    "cos_lr": False,
    "max_minutes": None,
    "cache": False,
    "mosaic": 1.0,
    "mixup": 0.0,
    "fliplr": 0.5,
    "flipud": 0.0,
    "hsv": True,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
}

PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    # seconds: a smoke test of the whole path on a handful of images
    "ci": {**_COMMON, "epochs": 2, "imgsz": 64, "batch": 8, "device": "cpu", "workers": 0, "patience": 0,
           "close_mosaic": 0},
    # minutes on a laptop CPU
    "cpu": {**_COMMON, "epochs": 30, "imgsz": 256, "batch": 16, "device": "cpu", "workers": 2, "patience": 10,
            "close_mosaic": 5},
    # a full run on one GPU
    "gpu": {**_COMMON, "architecture": "yolo11s.yaml", "epochs": 150, "imgsz": 640, "batch": 32, "device": "0",
            "workers": 8, "patience": 30, "close_mosaic": 10, "cache": "ram"},
}

TRAINING_KEYS = tuple(PROFILE_DEFAULTS["cpu"])
# Keys a sweep may vary (everything that changes the model, not where or how fast it runs).
SWEEPABLE_KEYS = tuple(k for k in TRAINING_KEYS if k not in ("device", "workers", "cache", "base_weights"))

_HSV_ON = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4}
_HSV_OFF = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}

# ultralytics metric names -> names MLflow accepts (no parentheses) and people read.
_METRIC_NAMES = {
    "metrics/precision(B)": "val/precision",
    "metrics/recall(B)": "val/recall",
    "metrics/mAP50(B)": "val/mAP50",
    "metrics/mAP50-95(B)": "val/mAP50-95",
}


class TrainingConfigError(ValueError):
    """A training config key or value that breaks a rule."""


class DatasetError(ValueError):
    """A YOLO dataset that cannot be trained on (missing/empty split, class without examples, bad label)."""


class WeightsError(ValueError):
    """Base weights that are missing or not a YOLO checkpoint."""


# -- config --------------------------------------------------------------------------------------
def profile_defaults(profile: str) -> dict[str, Any]:
    """A copy of the named profile's defaults."""
    if profile not in PROFILE_DEFAULTS:
        raise TrainingConfigError(f"profile {profile!r}: not one of {', '.join(PROFILES)}")
    return dict(PROFILE_DEFAULTS[profile])


def _unknown_key_message(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown training config key {key!r}{hint}; known keys: {', '.join(known)}"


def resolve_training_args(profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Profile defaults with the explicitly set (non-None) overrides on top, validated."""
    args = profile_defaults(profile)
    for key, value in (overrides or {}).items():
        if key not in TRAINING_KEYS:
            raise TrainingConfigError(_unknown_key_message(key, TRAINING_KEYS))
        if value is not None:
            args[key] = value
    if isinstance(args["cache"], str) and args["cache"].lower() in ("false", "off", "none", ""):
        args["cache"] = False
    validate_training_args(args)
    return args


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise TrainingConfigError(f"training config {key}={value!r}: {rule}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_training_args(args: Mapping[str, Any]) -> None:
    """Raise TrainingConfigError naming the first key whose value breaks its rule."""
    for key in args:
        if key not in TRAINING_KEYS:
            raise TrainingConfigError(_unknown_key_message(key, TRAINING_KEYS))
    arch = args["architecture"]
    _check(isinstance(arch, str) and arch.endswith((".yaml", ".yml")), "architecture", arch,
           "must be a model yaml such as 'yolo11n.yaml' (pretrained .pt files go in base_weights)")
    _check(model_yaml_exists(arch), "architecture", arch,
           "is neither a local yaml file nor a model yaml shipped with ultralytics")
    for key in ("epochs", "imgsz", "batch", "workers", "patience", "seed", "close_mosaic"):
        value = args[key]
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
    _check(args["epochs"] >= 1, "epochs", args["epochs"], "must be at least 1")
    _check(32 <= args["imgsz"] <= 4096 and args["imgsz"] % 32 == 0, "imgsz", args["imgsz"],
           "must be a multiple of 32 between 32 and 4096")
    _check(args["batch"] >= 1 or args["batch"] == -1, "batch", args["batch"], "must be >= 1 (or -1 for auto on GPU)")
    _check(not (args["batch"] == -1 and str(args["device"]) == "cpu"), "batch", -1, "auto batch needs a GPU device")
    for key in ("workers", "patience", "seed", "close_mosaic"):
        _check(args[key] >= 0, key, args[key], "must be >= 0")
    _check(isinstance(args["device"], (str, int)) and str(args["device"]).strip() != "", "device", args["device"],
           "must be 'cpu', a CUDA index such as '0' or '0,1', or 'mps'")
    for key in ("mosaic", "mixup", "fliplr", "flipud", "translate", "scale"):
        _check(_is_number(args[key]) and 0.0 <= args[key] <= 1.0, key, args[key], "must be a number in [0, 1]")
    _check(_is_number(args["degrees"]) and 0.0 <= args["degrees"] <= 180.0, "degrees", args["degrees"],
           "must be a number in [0, 180]")
    _check(_is_number(args["lr0"]) and 0.0 < args["lr0"] < 1.0, "lr0", args["lr0"], "must be in (0, 1)")
    for key in ("hsv", "cos_lr"):
        _check(isinstance(args[key], bool), key, args[key], "must be true or false")
    _check(args["cache"] in (False, True, "ram", "disk"), "cache", args["cache"], "must be false, 'ram' or 'disk'")
    _check(args["max_minutes"] is None or (_is_number(args["max_minutes"]) and args["max_minutes"] > 0),
           "max_minutes", args["max_minutes"], "must be a positive number of minutes")
    optimizers = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")
    _check(args["optimizer"] in optimizers, "optimizer", args["optimizer"], f"must be one of {', '.join(optimizers)}")
    _check(args["base_weights"] is None or isinstance(args["base_weights"], str), "base_weights",
           args["base_weights"], "must be a path or URI string")


def model_yaml_exists(name: str) -> bool:
    """True for a local yaml file or a model yaml ultralytics ships (scale letters like the n in yolo11n)."""
    if Path(name).expanduser().is_file():
        return True
    import importlib.util

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return False
    models = Path(list(spec.submodule_search_locations)[0]) / "cfg" / "models"
    stem = Path(name).stem
    unscaled = re.sub(r"(\d+)([nslmx])(.*)$", r"\1\3", stem)
    return any(models.rglob(f"{stem}.yaml")) or any(models.rglob(f"{unscaled}.yaml"))


def ultralytics_train_kwargs(args: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``YOLO.train`` that a resolved config stands for."""
    out = {k: v for k, v in args.items() if k not in ("architecture", "base_weights", "hsv", "max_minutes")}
    out.update(_HSV_ON if args["hsv"] else _HSV_OFF)
    if args.get("max_minutes"):
        out["time"] = float(args["max_minutes"]) / 60.0
    out["device"] = str(args["device"])
    return out


# -- sweeps --------------------------------------------------------------------------------------
def sweep_trials(
    base: Mapping[str, Any],
    sweep: Mapping[str, list] | None,
    *,
    mode: str = "grid",
    n_trials: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every trial's full config: the grid (optionally its first n_trials) or n_trials random draws."""
    if not sweep:
        return [dict(base)]
    if mode not in SWEEP_MODES:
        raise TrainingConfigError(f"sweep_mode {mode!r}: must be one of {', '.join(SWEEP_MODES)}")
    for key, values in sweep.items():
        if key not in SWEEPABLE_KEYS:
            if key in TRAINING_KEYS:
                raise TrainingConfigError(f"sweep key {key!r}: cannot be swept (sweepable: {', '.join(SWEEPABLE_KEYS)})")
            raise TrainingConfigError("sweep: " + _unknown_key_message(key, SWEEPABLE_KEYS))
        if not isinstance(values, (list, tuple)) or not values:
            raise TrainingConfigError(f"sweep key {key!r}: needs a non-empty list of values, got {values!r}")
    if n_trials is not None and n_trials < 1:
        raise TrainingConfigError(f"n_trials={n_trials!r}: must be at least 1")
    keys = sorted(sweep)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(list(sweep[k]) for k in keys))]
    if mode == "grid":
        chosen = grid[:n_trials] if n_trials else grid
    else:
        count = min(n_trials or len(grid), len(grid))
        chosen = random.Random(seed).sample(grid, count)
    trials = []
    for point in chosen:
        trial = {**base, **point}
        try:
            validate_training_args(trial)
        except TrainingConfigError as exc:
            raise TrainingConfigError(f"sweep trial {point}: {exc}") from exc
        trials.append(trial)
    return trials


def best_trial(results: list[Mapping[str, float]]) -> int:
    """Index of the best trial: highest val mAP50-95, then mAP50, then the earliest."""
    if not results:
        raise ValueError("no trial results to choose from")

    def score(i: int) -> tuple[float, float, int]:
        m = results[i]
        return (_finite(m.get("val/mAP50-95")), _finite(m.get("val/mAP50")), -i)

    return max(range(len(results)), key=score)


def _finite(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return -1.0
    return value if math.isfinite(value) else -1.0


# -- dataset -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSummary:
    root: Path
    data_yaml: Path
    classes: list[str]
    images: dict[str, int]  # split -> image count
    boxes: dict[str, dict[str, int]]  # split -> class -> boxes


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _read_names(data_yaml: Path) -> list[str]:
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{data_yaml}: cannot read data.yaml ({exc})") from exc
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{data_yaml}: 'names' keys must be class ids 0..n-1") from exc
        if ids != list(range(len(ids))):
            raise DatasetError(f"{data_yaml}: 'names' ids must be 0..{len(ids) - 1}, got {ids}")
        names = [str(names[k] if k in names else names[str(k)]) for k in ids]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{data_yaml}: 'names' must list at least one class")
    return [str(n) for n in names]


def check_yolo_dataset(root: Path) -> DatasetSummary:
    """Check a YOLO folder (data.yaml, images/ and labels/ per split) can be trained and tested on.

    Fails naming the problem: a missing or empty split, a class with no box in train, a malformed label line.
    """
    root = Path(root)
    data_yaml = root / "data.yaml"
    if not data_yaml.is_file():
        raise DatasetError(f"{data_yaml}: missing (the gold dataset has no data.yaml)")
    classes = _read_names(data_yaml)
    images: dict[str, int] = {}
    boxes: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        folder = root / "images" / split
        files = _image_files(folder)
        if not folder.is_dir():
            raise DatasetError(f"split {split!r}: folder {folder} is missing")
        if not files:
            raise DatasetError(f"split {split!r}: no images in {folder}")
        images[split] = len(files)
        counts = {c: 0 for c in classes}
        for image in files:
            label = root / "labels" / split / image.relative_to(folder).with_suffix(".txt")
            if not label.is_file():
                continue  # an image without a label file is a background image
            for lineno, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 5:
                    raise DatasetError(f"{label}:{lineno}: expected 'class x y w h', got {line!r}")
                try:
                    class_id = int(parts[0])
                    coords = [float(v) for v in parts[1:]]
                except ValueError as exc:
                    raise DatasetError(f"{label}:{lineno}: not numbers: {line!r}") from exc
                if not 0 <= class_id < len(classes):
                    raise DatasetError(f"{label}:{lineno}: class id {class_id} is not in data.yaml names (0..{len(classes) - 1})")
                if not all(0.0 <= v <= 1.0 for v in coords):
                    raise DatasetError(f"{label}:{lineno}: coordinates must be normalised to [0, 1]: {line!r}")
                counts[classes[class_id]] += 1
        boxes[split] = counts
    missing = [c for c in classes if boxes["train"][c] == 0]
    if missing:
        raise DatasetError(f"class(es) {', '.join(repr(c) for c in missing)} have no examples in the train split "
                           f"of {root}: the model cannot learn them")
    return DatasetSummary(root=root, data_yaml=data_yaml, classes=classes, images=images, boxes=boxes)


def link_yolo_dataset(source: Path, dest: Path) -> Path:
    """Mirror a YOLO folder into ``dest`` (file symlinks, copies where links fail) with an absolute data.yaml.

    Training writes label caches next to the labels; linking per file keeps those writes in ``dest``
    and the source (e.g. the lake's gold folder) untouched. Returns the new data.yaml.
    """
    source, dest = Path(source).resolve(), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for kind in ("images", "labels"):
        for split in SPLITS:
            folder = source / kind / split
            if not folder.is_dir():
                continue
            (dest / kind / split).mkdir(parents=True, exist_ok=True)
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if path.suffix == ".cache":
                    continue
                target = dest / kind / split / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() or target.is_symlink():
                    target.unlink()
                try:
                    target.symlink_to(path)
                except OSError:
                    shutil.copyfile(path, target)
    data = yaml.safe_load((source / "data.yaml").read_text(encoding="utf-8")) if (source / "data.yaml").is_file() else {}
    data = dict(data or {})
    data["path"] = str(dest.resolve())
    for split in SPLITS:
        data[split] = f"images/{split}"
    data_yaml = dest / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return data_yaml


# -- base weights --------------------------------------------------------------------------------
def check_base_weights(path: str | Path) -> Path:
    """The path of a YOLO checkpoint, or WeightsError saying why it is not one (without unpickling it)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"base weights {path}: file does not exist")
    if not path.is_file():
        raise WeightsError(f"base weights {path}: is not a file")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"base weights {path}: not a YOLO checkpoint (not a PyTorch .pt archive)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pickles:
            raise WeightsError(f"base weights {path}: not a YOLO checkpoint (no pickled model in the archive)")
        payload = archive.read(pickles[0])
    if b"ultralytics.nn.tasks" not in payload:
        raise WeightsError(f"base weights {path}: a PyTorch file, but not a YOLO checkpoint (no ultralytics model inside)")
    return path.resolve()


# -- running ultralytics offline -----------------------------------------------------------------
def _offline_ultralytics(config_dir: str | Path):
    """Import ultralytics with every network path off (see lib/yolo_offline)."""
    from alumi_pipelines.lib import yolo_offline

    try:
        return yolo_offline.import_ultralytics(config_dir)
    except KeyError:
        # The settings list of yolo_offline names an integration this ultralytics version lacks:
        # switch off the ones it has.
        from ultralytics.utils import SETTINGS

        SETTINGS.update({k: v for k, v in yolo_offline._OFF_SETTINGS.items() if k in SETTINGS.defaults})
        import ultralytics

        return ultralytics


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
    _offline_ultralytics(config_dir)
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
    start = time.perf_counter()
    with _no_amp_download(kwargs["device"]):
        model.train(data=str(data_yaml), project=str(out_dir), name=name, exist_ok=True, verbose=False,
                    plots=True, val=True, **kwargs)
    seconds = time.perf_counter() - start
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
    )


# -- evaluation ----------------------------------------------------------------------------------
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

    Latency is the median wall time of single-image prediction (pre + inference + post) over up to
    ``latency_images`` images of the split, after one warm-up.
    """
    _offline_ultralytics(config_dir)
    from ultralytics import YOLO

    out_dir = Path(out_dir).resolve()
    model = YOLO(str(weights))
    model_classes = [str(model.names[i]) for i in sorted(model.names)]
    data_classes = _read_names(Path(data_yaml))
    if model_classes != data_classes:
        raise DatasetError(f"model {weights} predicts classes {model_classes}, the dataset has {data_classes}: "
                           "their scores are not comparable")
    metrics = model.val(data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, device=device,
                        project=str(out_dir), name="val", exist_ok=True, plots=True, verbose=False)
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
            per_class[cname] = {"instances": n, "precision": None, "recall": None, "f1": None,
                                "map50": None, "map50_95": None}
    matrix = getattr(metrics, "confusion_matrix", None)
    confusion = {
        "rows": "predicted",
        "cols": "true",
        "labels": names + ["background"],
        "matrix": [[int(round(v)) for v in row] for row in matrix.matrix.tolist()] if matrix is not None else [],
    }
    save_dir = Path(metrics.save_dir)
    split_dir = Path(yaml.safe_load(Path(data_yaml).read_text(encoding="utf-8"))["path"]) / "images" / split
    images = _image_files(split_dir)
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


# -- code version and scratch space ---------------------------------------------------------------
def code_version() -> dict[str, Any]:
    """git commit (and whether the tree has local changes) when available, plus the package version."""
    from importlib import metadata

    try:
        package = metadata.version("alumi-pipelines")
    except metadata.PackageNotFoundError:
        package = "unknown"
    repo = Path(__file__).resolve().parents[2]
    commit, dirty = None, None
    if (repo / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip() or None
            status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    version = f"{commit[:12]}{'-dirty' if dirty else ''}" if commit else package
    return {"git_commit": commit or "unknown", "git_dirty": dirty, "package_version": package, "code_version": version}


@contextlib.contextmanager
def scratch_dir(root: Path, *parts: str, keep_on_error: bool = True) -> Iterator[Path]:
    """A fresh folder ``root/parts...``, removed when the block succeeds (kept for inspection on error)."""
    folder = Path(root).joinpath(*parts)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        yield folder
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
