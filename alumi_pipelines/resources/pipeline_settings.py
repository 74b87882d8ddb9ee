"""The settings assets need at run time, as a Dagster resource (tests pass their own)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from alumi_pipelines.lib.labels import ClassMap
from alumi_pipelines.settings import Settings


class PipelineSettings(ConfigurableResource):
    """Class map, image size, split seed and worker count used by the data assets."""

    classes: list[str] = Field(description="class names; the index is the class id")
    image_size: int = Field(default=640, description="longest side of processed images")
    min_image_side: int = Field(default=32, description="images with a shorter side are quarantined")
    split_seed: int = Field(default=0, description="seed of the train/val/test split")
    workers: int = Field(default=0, description="threads for image work (0 = every core)")
    profile: str = Field(default="cpu", description="ci | cpu | gpu")

    @classmethod
    def from_settings(cls, settings: Settings) -> "PipelineSettings":
        return cls(
            classes=list(settings.classes),
            image_size=settings.image_size,
            min_image_side=settings.min_image_side,
            split_seed=settings.split_seed,
            workers=settings.workers,
            profile=settings.profile,
        )

    def class_map(self, source_names: list[str] | None = None) -> ClassMap:
        """The class map, with a batch's own numeric ids aliased when it names its classes."""
        cmap = ClassMap.of(self.classes)
        return cmap.with_id_aliases(source_names) if source_names else cmap
