"""The settings assets, checks and sensors need at run time, as a Dagster resource (tests pass their own).

Built from :class:`alumi_pipelines.settings.Settings` (the ``ALUMI_*`` environment) by ``build_resources``;
nothing below the code location reads the environment itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from dagster import ConfigurableResource
from pydantic import Field

from alumi_pipelines.lib.vision.labels import ClassMap
from alumi_pipelines.settings import Settings

if TYPE_CHECKING:
    from alumi_pipelines.lib.progress import Progress
    from alumi_pipelines.resources.cache import ContentCache


class PipelineSettings(ConfigurableResource):
    """Class map, image size, split seed, worker count, profile, local folders and the thresholds of the loop."""

    classes: list[str] = Field(description="class names; the index is the class id")
    image_size: int = Field(default=640, description="longest side of processed images")
    min_image_side: int = Field(default=32, description="images with a shorter side are quarantined")
    max_image_pixels: int = Field(
        default=100_000_000, description="images whose header declares more pixels are quarantined, never decoded"
    )
    max_decoded_bytes: int = Field(
        default=1024**3, description="images whose header declares a larger decoded buffer are quarantined"
    )
    split_seed: int = Field(default=0, description="seed of the train/val/test split")
    split_fractions: Optional[list[float]] = Field(
        default=None, description="train,val,test fractions overriding the lake's record (then recorded)"
    )
    workers: int = Field(default=0, description="threads for image work (0 = every core)")
    profile: str = Field(default="cpu", description="ci | cpu | gpu")
    home: str = Field(default=".alumi", description="ALUMI_HOME: scratch folders, ultralytics config, dev keys")
    gate_floor: Optional[float] = Field(
        default=None, description="mAP50-95 a first champion must reach (default: the profile's floor)"
    )
    drift_share: float = Field(default=0.5, description="the drift check fails at this share of drifted features")
    retrain_corrections: int = Field(
        default=20, description="validated corrections since the champion that trigger a retraining run"
    )
    release_key: str = Field(
        default="", description="path of the Ed25519 private key (PEM) that signs releases; empty: development key"
    )
    cache_dir: str = Field(default="", description="ALUMI_CACHE_DIR: staged gold images; empty: <home>/cache")
    cache_max_gb: float = Field(default=50.0, description="size bound of the cache, least recently used evicted")
    progress_seconds: float = Field(
        default=10.0, ge=0, description="seconds between the progress lines of a long step (0: every item)"
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineSettings:
        return cls(
            classes=list(settings.classes),
            image_size=settings.image_size,
            min_image_side=settings.min_image_side,
            max_image_pixels=settings.max_image_pixels,
            max_decoded_bytes=settings.max_decoded_bytes,
            split_seed=settings.split_seed,
            split_fractions=list(settings.split_fractions) if settings.split_fractions else None,
            workers=settings.workers,
            profile=settings.profile,
            home=str(settings.home),
            gate_floor=settings.gate_floor,
            drift_share=settings.drift_share,
            retrain_corrections=settings.retrain_corrections,
            release_key=settings.release_key,
            cache_dir=str(settings.cache_dir),
            cache_max_gb=settings.cache_max_gb,
            progress_seconds=settings.progress_seconds,
        )

    def progress(self, label: str, total: int | None, log: Callable[[str], object], unit: str = "images") -> Progress:
        """A progress reporter of a long step: a line through ``log`` at most every ``progress_seconds``."""
        from alumi_pipelines.lib.progress import Progress

        return Progress(label, total, unit=unit, emit=log, every_s=self.progress_seconds)

    def class_map(self, source_names: list[str] | None = None) -> ClassMap:
        """The class map, with a batch's own numeric ids aliased when it names its classes."""
        cmap = ClassMap.of(self.classes)
        return cmap.with_id_aliases(source_names) if source_names else cmap

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def ultralytics_dir(self) -> Path:
        """ultralytics' config folder (fonts, settings): inside ALUMI_HOME, never the user's home."""
        return self.home_path / "ultralytics"

    def cache(self) -> ContentCache:
        """The local content-addressed cache that gold staging fills (ALUMI_CACHE_DIR, ALUMI_CACHE_MAX_GB)."""
        from alumi_pipelines.resources.cache import ContentCache

        root = Path(self.cache_dir).expanduser() if self.cache_dir else self.home_path / "cache"
        return ContentCache(root, int(self.cache_max_gb * 1e9))

    def scratch(self, run_id: str, name: str) -> AbstractContextManager[Path]:
        """A scratch folder for one step of one run, removed when the step succeeds."""
        from alumi_pipelines.lib.training.provenance import scratch_dir

        return scratch_dir(self.home_path, "work", run_id, name)
