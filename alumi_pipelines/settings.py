"""One settings object for the whole code location, read from ``ALUMI_*`` environment variables.

Every other module receives settings (or resources built from them); nothing reads the environment
deep inside logic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

PROFILES = ("ci", "cpu", "gpu")

# The synthetic aluminium defect classes; a user's own dataset sets ALUMI_CLASSES instead.
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
    profile: str = field(metadata={"env": "ALUMI_PROFILE", "doc": "ci | cpu | gpu"})
    classes: tuple[str, ...] = field(
        metadata={"env": "ALUMI_CLASSES", "doc": "comma-separated class names, or a path to a classes.txt"}
    )
    image_size: int = field(metadata={"env": "ALUMI_IMAGE_SIZE", "doc": "longest side of processed images"})
    min_image_side: int = field(metadata={"env": "ALUMI_MIN_IMAGE_SIDE", "doc": "smaller images are quarantined"})
    split_seed: int = field(metadata={"env": "ALUMI_SPLIT_SEED", "doc": "seed of the train/val/test split"})
    model_name: str = field(metadata={"env": "ALUMI_MODEL_NAME", "doc": "registered detector model name"})
    workers: int = field(metadata={"env": "ALUMI_WORKERS", "doc": "processes for image processing (0 = all cores)"})

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(_env("ALUMI_HOME", ".alumi")).expanduser().resolve()
        return cls(
            home=home,
            lake_uri=_env("ALUMI_LAKE_URI", str(home / "lake")),
            mlflow_uri=_env("ALUMI_MLFLOW_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"),
            mlflow_artifacts_uri=_env("ALUMI_MLFLOW_ARTIFACTS", str(home / "mlflow" / "artifacts")),
            profile=_profile(_env("ALUMI_PROFILE", "cpu")),
            classes=parse_classes(_env("ALUMI_CLASSES", ",".join(DEFAULT_CLASSES))),
            image_size=int(_env("ALUMI_IMAGE_SIZE", "640")),
            min_image_side=int(_env("ALUMI_MIN_IMAGE_SIDE", "32")),
            split_seed=int(_env("ALUMI_SPLIT_SEED", "0")),
            model_name=_env("ALUMI_MODEL_NAME", "alumi-detector"),
            workers=int(_env("ALUMI_WORKERS", "0")),
        )

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(env var, field, doc) for every setting; the README's configuration table lists them."""
        return [(f.metadata["env"], f.name, f.metadata["doc"]) for f in fields(cls)]


def _profile(value: str) -> str:
    if value not in PROFILES:
        raise ValueError(f"ALUMI_PROFILE={value!r} is not one of {', '.join(PROFILES)}")
    return value


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
