"""All I/O lives here: the lake, MLflow, the release registry, Label Studio."""

from __future__ import annotations

from alumi_pipelines.settings import Settings


def build_resources(settings: Settings | None = None) -> dict:
    """The resources of the code location, from settings (env vars)."""
    from alumi_pipelines.resources.label_studio import LabelStudio
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import label_studio_api_key

    settings = settings or Settings.from_env()
    return {
        "lake": lake_for(settings.lake_uri, concurrency=settings.lake_concurrency),
        "pipeline_settings": PipelineSettings.from_settings(settings),
        "mlflow": MlflowRegistry.from_settings(settings),
        "label_studio": LabelStudio(
            url=settings.label_studio_url,
            api_key=label_studio_api_key(),
            files_root=settings.label_studio_files_root,
        ),
    }


AZURE_SCHEMES = ("abfs://", "abfss://", "az://")


def lake_for(uri: str, *, deferred: bool = True, concurrency: int = 16):
    """The Lake of a base URI: a local folder, or Azure Data Lake / Blob (credentials from ALUMI_AZURE_*);
    ``concurrency`` bounds the requests in flight when a step moves many objects."""
    if uri.startswith(AZURE_SCHEMES):
        from alumi_pipelines.resources.azure import azure_lake  # dagster_azure is imported only when used

        return azure_lake(uri, deferred=deferred, concurrency=concurrency)
    from alumi_pipelines.resources.lake import Lake

    return Lake(base_uri=uri, concurrency=concurrency)
