"""All I/O lives here: the lake, MLflow, the release registry."""

from __future__ import annotations

from alumi_pipelines.settings import Settings


def build_resources(settings: Settings | None = None) -> dict:
    """The resources of the code location, from settings (env vars)."""
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    settings = settings or Settings.from_env()
    return {
        "lake": Lake(base_uri=settings.lake_uri),
        "pipeline_settings": PipelineSettings.from_settings(settings),
        "mlflow": MlflowRegistry.from_settings(settings),
    }
