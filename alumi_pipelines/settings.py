"""One settings object for the whole code location, read from ``ALUMI_*`` environment variables.

Every other module receives settings (or resources built from them); nothing reads the environment
deep inside logic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from alumi_pipelines.lib.training.profiles import PROFILES

# The synthetic aluminium defect classes: the class map of a lake no import has named classes for yet.
DEFAULT_CLASSES = ("scratch", "dent", "pit", "crack", "stain")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


@dataclass(frozen=True)
class Settings:
    """Paths, URIs and thresholds, each with its env var (see README, "Configuration")."""

    home: Path = field(metadata={"env": "ALUMI_HOME", "doc": "root of everything local"})
    lake_uri: str = field(metadata={"env": "ALUMI_LAKE_URI", "doc": "base URI of the lake"})
    mlflow_uri: str = field(metadata={"env": "ALUMI_MLFLOW_URI", "doc": "MLflow tracking + registry URI"})
    mlflow_artifacts_uri: str = field(
        metadata={"env": "ALUMI_MLFLOW_ARTIFACTS", "doc": "MLflow artifact root for new experiments"}
    )
    mlflow_ui_url: str = field(
        metadata={
            "env": "ALUMI_MLFLOW_UI_URL",
            "doc": "MLflow UI that asset metadata links runs to; empty: the tracking URI when it is http(s)",
        }
    )
    profile: str = field(metadata={"env": "ALUMI_PROFILE", "doc": "ci | cpu | gpu"})
    classes: tuple[str, ...] = field(
        metadata={
            "env": "ALUMI_CLASSES",
            "doc": "override of the lake's class map: comma-separated names, or a path to a classes.txt",
        }
    )
    image_size: int = field(metadata={"env": "ALUMI_IMAGE_SIZE", "doc": "longest side of processed images"})
    min_image_side: int = field(metadata={"env": "ALUMI_MIN_IMAGE_SIDE", "doc": "smaller images are quarantined"})
    max_image_pixels: int = field(
        metadata={"env": "ALUMI_MAX_IMAGE_PIXELS", "doc": "images whose header declares more pixels are quarantined"}
    )
    max_decoded_bytes: int = field(
        metadata={
            "env": "ALUMI_MAX_DECODED_BYTES",
            "doc": "images whose header declares a larger decoded buffer (bytes) are quarantined",
        }
    )
    split_seed: int = field(metadata={"env": "ALUMI_SPLIT_SEED", "doc": "seed of the train/val/test split"})
    split_fractions: tuple[float, float, float] | None = field(
        metadata={
            "env": "ALUMI_SPLIT_FRACTIONS",
            "doc": "train,val,test fractions, recorded with the lake (meta/splits.json); empty: the lake's record, "
            "else 0.8,0.1,0.1 for a new lake",
        }
    )
    model_name: str = field(metadata={"env": "ALUMI_MODEL_NAME", "doc": "registered detector model name"})
    workers: int = field(metadata={"env": "ALUMI_WORKERS", "doc": "threads for image work (0 = every core)"})
    gate_floor: float | None = field(
        metadata={"env": "ALUMI_GATE_FLOOR", "doc": "mAP50-95 a first champion must reach (default: per profile)"}
    )
    drift_share: float = field(metadata={"env": "ALUMI_DRIFT_SHARE", "doc": "drift check fails at this share"})
    retrain_corrections: int = field(
        metadata={"env": "ALUMI_RETRAIN_CORRECTIONS", "doc": "validated corrections that trigger retraining"}
    )
    release_key: str = field(
        metadata={"env": "ALUMI_RELEASE_KEY", "doc": "Ed25519 private key (PEM) that signs releases; empty: dev key"}
    )
    label_studio_url: str = field(
        metadata={"env": "ALUMI_LABEL_STUDIO_URL", "doc": "Label Studio server QA reviews in; empty: none"}
    )
    label_studio_files_root: str = field(
        metadata={
            "env": "ALUMI_LABEL_STUDIO_FILES_ROOT",
            "doc": "the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (local lake); empty: the lake folder",
        }
    )
    cache_dir: Path = field(
        metadata={"env": "ALUMI_CACHE_DIR", "doc": "local content-addressed cache of staged gold images"}
    )
    cache_max_gb: float = field(
        metadata={"env": "ALUMI_CACHE_MAX_GB", "doc": "size bound of the cache (least recently used evicted)"}
    )
    lake_concurrency: int = field(
        metadata={"env": "ALUMI_LAKE_CONCURRENCY", "doc": "storage requests in flight when a step moves many objects"}
    )
    progress_seconds: float = field(
        metadata={
            "env": "ALUMI_PROGRESS_SECONDS",
            "doc": "seconds between progress lines of long steps and commands (0: every item)",
        }
    )
    backfill_partitions_per_run: int = field(
        metadata={
            "env": "ALUMI_BACKFILL_PARTITIONS_PER_RUN",
            "doc": "landing batches (or plant days) one backfill run ingests; a backfill fans out into several runs",
        }
    )
    executor: str = field(
        metadata={"env": "ALUMI_EXECUTOR", "doc": "multiprocess (one machine) | k8s (one Kubernetes pod per step)"}
    )
    k8s_step_config: str = field(
        metadata={"env": "ALUMI_K8S_STEP_CONFIG", "doc": "JSON dagster-k8s/config of every step pod (executor k8s)"}
    )
    k8s_training_config: str = field(
        metadata={
            "env": "ALUMI_K8S_TRAINING_CONFIG",
            "doc": "JSON dagster-k8s/config added to the detector_model step's pod (GPU node pool)",
        }
    )

    class_source: str = field(
        default="ALUMI_CLASSES",
        metadata={"env": "", "doc": "where the class names came from: ALUMI_CLASSES, the lake, or the default"},
    )

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("ALUMI_HOME", ".alumi")).expanduser().resolve()
        classes, class_source = resolve_classes(_env("ALUMI_CLASSES", ""), _env("ALUMI_LAKE_URI", str(home / "lake")))
        return cls(
            home=home,
            lake_uri=_env("ALUMI_LAKE_URI", str(home / "lake")),
            mlflow_uri=_env("ALUMI_MLFLOW_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
            mlflow_artifacts_uri=_env("ALUMI_MLFLOW_ARTIFACTS", str(home / "mlflow" / "artifacts")),
            mlflow_ui_url=_http_url("ALUMI_MLFLOW_UI_URL", _env("ALUMI_MLFLOW_UI_URL", "")),
            profile=_profile(_env("ALUMI_PROFILE", "cpu")),
            classes=classes,
            class_source=class_source,
            image_size=_number("ALUMI_IMAGE_SIZE", "640", int),
            min_image_side=_number("ALUMI_MIN_IMAGE_SIDE", "32", int),
            max_image_pixels=_positive("ALUMI_MAX_IMAGE_PIXELS", "100000000"),
            max_decoded_bytes=_positive("ALUMI_MAX_DECODED_BYTES", str(1024**3)),
            split_seed=_number("ALUMI_SPLIT_SEED", "0", int),
            split_fractions=_fractions(_env("ALUMI_SPLIT_FRACTIONS", "")),
            model_name=_env("ALUMI_MODEL_NAME", "alumi-detector"),
            workers=_number("ALUMI_WORKERS", "0", int),
            gate_floor=_gate_floor(_env("ALUMI_GATE_FLOOR", "")),
            drift_share=_number("ALUMI_DRIFT_SHARE", "0.5", float),
            retrain_corrections=_number("ALUMI_RETRAIN_CORRECTIONS", "20", int),
            release_key=_env("ALUMI_RELEASE_KEY", "").strip(),
            label_studio_url=_env("ALUMI_LABEL_STUDIO_URL", "").strip(),
            label_studio_files_root=_env("ALUMI_LABEL_STUDIO_FILES_ROOT", "").strip(),
            cache_dir=Path(_env("ALUMI_CACHE_DIR", str(home / "cache"))).expanduser().resolve(),
            cache_max_gb=_number("ALUMI_CACHE_MAX_GB", "50", float),
            lake_concurrency=_number("ALUMI_LAKE_CONCURRENCY", "16", int),
            progress_seconds=_not_negative("ALUMI_PROGRESS_SECONDS", "10"),
            backfill_partitions_per_run=backfill_partitions_per_run(),
            executor=_executor(_env("ALUMI_EXECUTOR", "multiprocess")),
            k8s_step_config=_k8s_config("ALUMI_K8S_STEP_CONFIG", _env("ALUMI_K8S_STEP_CONFIG", "")),
            k8s_training_config=_k8s_config("ALUMI_K8S_TRAINING_CONFIG", _env("ALUMI_K8S_TRAINING_CONFIG", "")),
        )

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(env var, field, doc) for every setting; the README's configuration table lists them."""
        return [(f.metadata["env"], f.name, f.metadata["doc"]) for f in fields(cls) if f.metadata["env"]]


def _number(name: str, default: str, kind: type):
    value = _env(name, default)
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: must be {'an integer' if kind is int else 'a number'}") from None


def _fractions(value: str) -> tuple[float, float, float] | None:
    if not value.strip():
        return None
    from alumi_pipelines.lib.vision.splits import parse_fractions

    return parse_fractions(value, where="ALUMI_SPLIT_FRACTIONS=")


def _positive(name: str, default: str) -> int:
    value = _number(name, default, int)
    if value <= 0:
        raise ValueError(f"{name}={value}: must be a positive integer")
    return value


def _not_negative(name: str, default: str) -> float:
    value = _number(name, default, float)
    if value < 0:
        raise ValueError(f"{name}={value:g}: must be 0 or more")
    return value


def _gate_floor(value: str) -> float | None:
    if not value.strip():
        return None
    try:
        floor = float(value)
    except ValueError:
        floor = -1.0
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"ALUMI_GATE_FLOOR={value!r}: must be a number in [0, 1]")
    return floor


def _k8s_config(name: str, value: str) -> str:
    """The JSON object of a dagster-k8s/config variable, normalised (sorted keys), or ''."""
    if not value.strip():
        return ""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{name}: must be a JSON object (a dagster-k8s/config)")
    return json.dumps(parsed, sort_keys=True)


EXECUTORS = ("multiprocess", "k8s")


def _http_url(name: str, value: str) -> str:
    value = value.strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"{name}={value!r}: must be an http:// or https:// URL (e.g. http://mlflow.example:5000)")
    return value


def _executor(value: str) -> str:
    if value not in EXECUTORS:
        raise ValueError(f"ALUMI_EXECUTOR={value!r} is not one of {', '.join(EXECUTORS)}")
    return value


def _profile(value: str) -> str:
    if value not in PROFILES:
        raise ValueError(f"ALUMI_PROFILE={value!r} is not one of {', '.join(PROFILES)}")
    return value


def lake_class_map(lake_uri: str) -> tuple[str, ...] | None:
    """The class map a local lake keeps (``meta/classes.json``, written by ``alumi import`` / ``alumi classes``);
    None without one, or for an object-store lake (set ALUMI_CLASSES there: definitions load without I/O)."""
    from alumi_pipelines.resources.lake_keys import CLASS_MAP

    if "://" in lake_uri and not lake_uri.startswith("file://"):
        return None
    path = Path(lake_uri.removeprefix("file://")).expanduser() / CLASS_MAP
    try:
        names = json.loads(path.read_text())["classes"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a class map ({exc}); fix it with `alumi classes --set a,b,c`") from None
    ok = isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)
    if not ok or len(set(names)) != len(names):
        raise ValueError(f"{path}: 'classes' must be a list of distinct names; fix it with `alumi classes --set a,b,c`")
    return tuple(names)


def resolve_classes(override: str, lake_uri: str) -> tuple[tuple[str, ...], str]:
    """(class names, where they come from): ALUMI_CLASSES, else the lake's class map, else the demo classes."""
    if override.strip():
        return parse_classes(override), "ALUMI_CLASSES"
    found = lake_class_map(lake_uri)
    if found:
        return found, "the lake's class map"
    return DEFAULT_CLASSES, "the default (synthetic) classes"


def parse_classes(value: str) -> tuple[str, ...]:
    """Class names from 'a,b,c' or from a file with one name per line."""
    path = Path(value).expanduser()
    if "," not in value and path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [part.strip() for part in value.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"ALUMI_CLASSES={value!r} names no class")
    if len(set(names)) != len(names):
        raise ValueError(f"ALUMI_CLASSES={value!r} repeats a class name")
    return tuple(names)


LABEL_STUDIO_API_KEY = "ALUMI_LABEL_STUDIO_API_KEY"


def label_studio_api_key():
    """ALUMI_LABEL_STUDIO_API_KEY as a Dagster ``EnvVar`` (resolved in the run, never shown in the UI), or ''."""
    from dagster import EnvVar

    return EnvVar(LABEL_STUDIO_API_KEY) if _env(LABEL_STUDIO_API_KEY, "").strip() else ""


def training_run_tags(training_tag: str, base: dict[str, str]) -> dict[str, str]:
    """Tags of the jobs that train: ``training_tag`` (the run queue runs one such run at a time) and ``base``.

    The GPU is not a run tag: on Kubernetes only the training step's pod asks for it (see
    :func:`k8s_step_configs`), so the other steps of a training run stay on CPU nodes.
    """
    return {training_tag: "true", **base}


# Definition-time settings: partitions definitions, backfill policies and the executor are fixed when the code
# location loads, so the modules that define them call these functions (this module is the one that reads the
# environment).
def backfill_partitions_per_run() -> int:
    """ALUMI_BACKFILL_PARTITIONS_PER_RUN (default 3): the partitions one run of an ingestion backfill covers."""
    value = _number("ALUMI_BACKFILL_PARTITIONS_PER_RUN", "3", int)
    if value < 1:
        raise ValueError(f"ALUMI_BACKFILL_PARTITIONS_PER_RUN={value}: must be at least 1")
    return value


@dataclass(frozen=True)
class K8sStepConfigs:
    """What ALUMI_EXECUTOR=k8s runs with: the dagster-k8s/config of every step pod and of the training step."""

    every_step: dict
    training_step: dict


def k8s_step_configs() -> K8sStepConfigs | None:
    """None with ALUMI_EXECUTOR=multiprocess (the default); the step pod configs with ALUMI_EXECUTOR=k8s.

    ALUMI_K8S_STEP_CONFIG and ALUMI_K8S_TRAINING_CONFIG mean nothing without per-step pods, so setting either
    without ALUMI_EXECUTOR=k8s is an error rather than a silently ignored GPU request.
    """
    executor = _executor(_env("ALUMI_EXECUTOR", "multiprocess"))
    every_step = _k8s_config("ALUMI_K8S_STEP_CONFIG", _env("ALUMI_K8S_STEP_CONFIG", ""))
    training_step = _k8s_config("ALUMI_K8S_TRAINING_CONFIG", _env("ALUMI_K8S_TRAINING_CONFIG", ""))
    if executor != "k8s":
        if every_step or training_step:
            raise ValueError(
                "ALUMI_K8S_STEP_CONFIG / ALUMI_K8S_TRAINING_CONFIG configure step pods: set ALUMI_EXECUTOR=k8s too"
            )
        return None
    return K8sStepConfigs(json.loads(every_step or "{}"), json.loads(training_step or "{}"))
