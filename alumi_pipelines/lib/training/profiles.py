"""Training profiles and their config: defaults per profile, overrides validated, sweeps."""

from __future__ import annotations

import difflib
import itertools
import math
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROFILES = ("ci", "cpu", "gpu")


SWEEP_MODES = ("grid", "random")


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
    # every core the process may use (0); ultralytics alone trains on cpu_count - 1 threads
    "threads": 0,
    # a retrain starts from the champion's weights when the class map is unchanged
    "warm_start": True,
    # "auto" imgsz: the dataset's median long side, rounded up to a multiple of 32, at most this
    "imgsz_max": 640,
}


PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    # seconds: a smoke test of the whole path on a handful of images
    "ci": {
        **_COMMON,
        "epochs": 2,
        "imgsz": 64,
        "batch": 8,
        "device": "cpu",
        "workers": 0,
        "patience": 0,
        "close_mosaic": 0,
        "warm_start": False,  # every smoke run is independent of the one before
    },
    # minutes on a CPU box: ultralytics' own defaults except where the quality benchmark shows a gain
    # (benchmarks/bench_quality.py): every core, decoded images cached in RAM, the size from the data
    "cpu": {
        **_COMMON,
        "epochs": 30,
        "imgsz": "auto",
        "imgsz_max": 320,
        "batch": "auto",
        "device": "cpu",
        "workers": 0,  # dataloader processes compete with the training threads for the cores (bench_quality)
        "patience": 100,
        "close_mosaic": 10,
        "cache": "ram",
    },
    # a full run on one GPU
    "gpu": {
        **_COMMON,
        "architecture": "yolo11s.yaml",
        "epochs": 150,
        "imgsz": "auto",
        "imgsz_max": 1280,
        "batch": 32,
        "device": "0",
        "workers": 8,
        "patience": 30,
        "close_mosaic": 10,
        "cache": "ram",
    },
}


TRAINING_KEYS = tuple(PROFILE_DEFAULTS["cpu"])


SWEEPABLE_KEYS = tuple(
    k for k in TRAINING_KEYS if k not in ("device", "workers", "cache", "base_weights", "threads", "warm_start")
)


AUTO = "auto"


# Not ultralytics arguments: the pipeline applies them itself.
PIPELINE_KEYS = ("architecture", "base_weights", "hsv", "max_minutes", "threads", "warm_start", "imgsz_max")


_HSV_ON = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4}


_HSV_OFF = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}


class TrainingConfigError(ValueError):
    """A training config key or value that breaks a rule."""


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
    _check(
        isinstance(arch, str) and arch.endswith((".yaml", ".yml")),
        "architecture",
        arch,
        "must be a model yaml such as 'yolo11n.yaml' (pretrained .pt files go in base_weights)",
    )
    _check(
        model_yaml_exists(arch),
        "architecture",
        arch,
        "is neither a local yaml file nor a model yaml shipped with ultralytics",
    )
    for key in ("epochs", "workers", "patience", "seed", "close_mosaic", "threads", "imgsz_max"):
        value = args[key]
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
    for key in ("imgsz", "batch"):
        value = args[key]
        _check(
            value == AUTO or (isinstance(value, int) and not isinstance(value, bool)),
            key,
            value,
            "must be an integer or 'auto' (chosen from the dataset and the machine)",
        )
    _check(args["epochs"] >= 1, "epochs", args["epochs"], "must be at least 1")
    for key in ("imgsz", "imgsz_max"):
        _check(
            args[key] == AUTO or (32 <= args[key] <= 4096 and args[key] % 32 == 0),
            key,
            args[key],
            "must be a multiple of 32 between 32 and 4096",
        )
    _check(
        args["batch"] == AUTO or args["batch"] >= 1 or args["batch"] == -1,
        "batch",
        args["batch"],
        "must be >= 1, 'auto', or -1 for ultralytics' GPU auto-batch",
    )
    _check(not (args["batch"] == -1 and str(args["device"]) == "cpu"), "batch", -1, "auto batch needs a GPU device")
    for key in ("workers", "patience", "seed", "close_mosaic", "threads"):
        _check(args[key] >= 0, key, args[key], "must be >= 0")
    _check(
        isinstance(args["device"], (str, int)) and str(args["device"]).strip() != "",
        "device",
        args["device"],
        "must be 'cpu', a CUDA index such as '0' or '0,1', or 'mps'",
    )
    for key in ("mosaic", "mixup", "fliplr", "flipud", "translate", "scale"):
        _check(_is_number(args[key]) and 0.0 <= args[key] <= 1.0, key, args[key], "must be a number in [0, 1]")
    _check(
        _is_number(args["degrees"]) and 0.0 <= args["degrees"] <= 180.0,
        "degrees",
        args["degrees"],
        "must be a number in [0, 180]",
    )
    _check(_is_number(args["lr0"]) and 0.0 < args["lr0"] < 1.0, "lr0", args["lr0"], "must be in (0, 1)")
    for key in ("hsv", "cos_lr", "warm_start"):
        _check(isinstance(args[key], bool), key, args[key], "must be true or false")
    _check(args["cache"] in (False, True, "ram", "disk"), "cache", args["cache"], "must be false, 'ram' or 'disk'")
    _check(
        args["max_minutes"] is None or (_is_number(args["max_minutes"]) and args["max_minutes"] > 0),
        "max_minutes",
        args["max_minutes"],
        "must be a positive number of minutes",
    )
    optimizers = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")
    _check(args["optimizer"] in optimizers, "optimizer", args["optimizer"], f"must be one of {', '.join(optimizers)}")
    _check(
        args["base_weights"] is None or isinstance(args["base_weights"], str),
        "base_weights",
        args["base_weights"],
        "must be a path or URI string",
    )


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
    """The keyword arguments for ``YOLO.train`` that a resolved config stands for (``imgsz`` and ``batch``
    resolved, see :func:`alumi_pipelines.lib.training.autoconf.resolve_auto`)."""
    for key in ("imgsz", "batch"):
        if args[key] == AUTO:
            raise TrainingConfigError(f"training config {key}='auto': resolve it from the dataset before training")
    out = {k: v for k, v in args.items() if k not in PIPELINE_KEYS}
    out.update(_HSV_ON if args["hsv"] else _HSV_OFF)
    if args.get("max_minutes"):
        out["time"] = float(args["max_minutes"]) / 60.0
    out["device"] = str(args["device"])
    return out


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
                raise TrainingConfigError(
                    f"sweep key {key!r}: cannot be swept (sweepable: {', '.join(SWEEPABLE_KEYS)})"
                )
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
