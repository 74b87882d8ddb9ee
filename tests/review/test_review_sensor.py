"""review_sensor when Label Studio is missing, unreachable or refuses the key: a skip saying what to fix."""

from __future__ import annotations

from dagster import DagsterInstance, build_sensor_context
from label_studio_server import free_port

from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.label_studio import LabelStudio
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.sensors.review import review_sensor


def tick(lake, label_studio):
    context = build_sensor_context(
        instance=DagsterInstance.ephemeral(),
        resources={
            "lake": lake,
            "label_studio": label_studio,
            "pipeline_settings": PipelineSettings(classes=["scratch", "dent"]),
        },
    )
    return review_sensor(context)


def message(result) -> str:
    return (getattr(result, "skip_reason", None) or result).skip_message


def test_not_configured_skips_naming_the_setting(lake):
    assert message(tick(lake, LabelStudio())) == "Label Studio is not configured (ALUMI_LABEL_STUDIO_URL)"


def test_unreachable_server_skips_with_one_line(lake):
    text = message(tick(lake, LabelStudio(url=f"http://127.0.0.1:{free_port()}", api_key="legacy-token")))
    assert text.startswith("Label Studio at http://127.0.0.1:") and "unreachable" in text
    assert text.endswith("start it or fix ALUMI_LABEL_STUDIO_URL") and "\n" not in text


def test_a_refused_key_names_the_fix(lake, label_studio_server):
    url = label_studio_server.url
    forged = message(tick(lake, LabelStudio(url=url, api_key="eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2lnbmF0dXJl")))
    assert "refused the personal access token (401)" in forged and "ALUMI_LABEL_STUDIO_API_KEY" in forged
    legacy = message(tick(lake, LabelStudio(url=url, api_key="0123456789abcdef")))
    assert "refused the API key on GET /api/projects (401" in legacy and "ALUMI_LABEL_STUDIO_API_KEY" in legacy
    assert lake.list_files(lake_keys.CORRECTIONS_INCOMING) == []
