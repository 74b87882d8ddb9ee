"""review_sensor: what reviewers completed or changed in Label Studio → corrections/incoming/."""

import json

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from alumi_pipelines.assets.review import pull_reviews
from alumi_pipelines.resources.label_studio import LabelStudio, LabelStudioError
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.pipeline_settings import PipelineSettings


@sensor(
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus.STOPPED,
    description="Pulls the tasks of the class map's Label Studio project updated since the last tick and writes "
    "their annotations to corrections/incoming/label-studio-p<project>-<time>.json (QA relabels: annotator, "
    "time and task id as provenance; a skipped task or 'no defect' removes the image's boxes). corrections_sensor "
    "then validates and applies them and counts them towards retraining. The cursor is the newest task update "
    "seen per project, so nothing is pulled twice.",
)
def review_sensor(
    context: SensorEvaluationContext, lake: Lake, label_studio: LabelStudio, pipeline_settings: PipelineSettings
):
    if not label_studio.configured():
        return SkipReason("Label Studio is not configured (ALUMI_LABEL_STUDIO_URL)")
    cursor = json.loads(context.cursor) if context.cursor else {}
    try:
        from alumi_pipelines.lib.vision.labelstudio import class_map_id

        key = class_map_id(pipeline_settings.classes)
        result = pull_reviews(lake, label_studio, pipeline_settings, cursor.get(key))
    except LabelStudioError as exc:
        return SkipReason(str(exc))
    if result.project_id is None:
        return SkipReason("no review project in Label Studio yet: materialise label_studio_tasks first")
    if result.newest:
        cursor[key] = result.newest
    if result.key is None:
        message = f"no task of project {result.project_id} reviewed since {cursor.get(key) or 'the start'}"
    else:
        message = f"{result.annotations} annotations of {result.tasks} tasks written to {result.key}"
        context.log.info(message)
    return SensorResult(cursor=json.dumps(cursor, sort_keys=True), skip_reason=SkipReason(message))
