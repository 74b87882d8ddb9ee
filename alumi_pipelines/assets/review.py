"""Review: what QA should look at, sent to Label Studio with the champion's boxes; reviewed labels come back.

``review_queue`` calls :func:`build_review_queue`: candidates from three sources — frames edge devices kept
for review (flagged by an operator, uncertain, rare class), lake images where the champion and the current
labels disagree most (missed boxes, extra boxes, class changes on train/val, the champion run on them once per
model version), and drift outliers against the champion's training set — cut to a per-run budget by
``lib.vision.review.select_queue``. ``label_studio_tasks`` calls :func:`send_to_label_studio`: one project
per class map, the queued images imported as tasks with the champion's boxes as pre-annotations, never an
image twice. ``review_sensor`` (sensors/review.py) calls :func:`pull_reviews`, which writes what reviewers
completed or changed into ``corrections/incoming/`` for label_corrections.
"""

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from alumi_pipelines.assets.gold import read_gold_pointer, read_version_labels, read_version_manifest
from alumi_pipelines.assets.metadata import counts_md
from alumi_pipelines.assets.processed import read_processed
from alumi_pipelines.resources import lake_keys
from alumi_pipelines.resources.label_studio import LabelStudio, LabelStudioError
from alumi_pipelines.resources.lake import Lake
from alumi_pipelines.resources.mlflow_registry import CHAMPION, MlflowRegistry
from alumi_pipelines.resources.pipeline_settings import PipelineSettings

GROUP = "review"


class ReviewQueueConfig(Config):
    budget: int = Field(default=50, ge=1, description="images queued per run")
    iou: float = Field(default=0.5, gt=0, le=1, description="IoU at which a champion box matches a label box")
    confidence: float = Field(default=0.25, ge=0, le=1, description="champion boxes below it are ignored")
    drift_z: float = Field(default=3.5, gt=0, description="robust z-score that makes an image a drift outlier")
    max_boxes: int = Field(default=30, ge=1, description="champion boxes kept per image (most confident first)")
    max_scored: int = Field(
        default=2000, ge=0, description="lake images the champion newly scores per run (the rest on later runs)"
    )


# -- review_queue ----------------------------------------------------------------------------------
@asset(
    deps=["processed_images", "processed_labels", "label_corrections", "gold_dataset", "champion_model"],
    group_name=GROUP,
    owners=["team:quality"],
    kinds={"parquet"},
    description="The images QA should review next, with the reason for each and a per-run budget: edge frames kept "
    "for review (flagged, uncertain, rare class), images held out of gold for rejected annotation records, "
    "train/val images where the champion and the labels disagree "
    "most, drift outliers. Images already sent to Label Studio are never queued again. review/queue.parquet.",
)
def review_queue(
    context: AssetExecutionContext,
    config: ReviewQueueConfig,
    lake: Lake,
    mlflow: MlflowRegistry,
    pipeline_settings: PipelineSettings,
) -> MaterializeResult:
    from alumi_pipelines.lib.vision.review import queue_markdown, reason_counts

    with pipeline_settings.scratch(context.run.run_id, "review_queue") as work:
        detector = champion_detector(lake, mlflow, pipeline_settings, work)
        if detector is not None:
            detector.log = context.log.info
        summary = build_review_queue(lake, pipeline_settings, config, detector, work)
    if detector is None:
        context.log.warning("no champion model yet: no disagreement candidates and no pre-annotations")
    return MaterializeResult(
        metadata={
            "queued": summary.queue.height,
            "budget": config.budget,
            "model_version": summary.model_version or "–",
            "candidates": MetadataValue.md(counts_md("source", summary.candidates, unit="images")),
            "by_reason": MetadataValue.md(counts_md("reason", reason_counts(summary.queue), unit="images")),
            "newly_scored": summary.newly_scored,
            "already_sent": summary.already_sent,
            "queue": MetadataValue.md(queue_markdown(summary.queue)),
            "path": MetadataValue.path(lake.uri(lake_keys.REVIEW_QUEUE)),
        }
    )


@dataclass
class ChampionDetector:
    """The champion, runnable on local image files: class-id boxes in the images' pixels."""

    version: str
    run: Callable[..., list[Any]]  # (image paths, conf=, max_det=) -> ImageDetections per image
    log: Callable[[str], Any] | None = None  # progress lines of the scoring loop


def champion_detector(lake: Lake, mlflow: MlflowRegistry, settings: PipelineSettings, work: Path):
    """The registry's champion: its exported ONNX model through the edge runtime when the lake has it, else its
    weights through ultralytics; None without a champion."""
    from alumi_pipelines.lib.export.predict import predict_onnx, predict_torch

    version = mlflow.alias_version(CHAMPION)
    if version is None:
        return None
    onnx_key = lake_keys.onnx_model_key(version, "model.onnx")
    if lake.exists(onnx_key):
        path = work / "champion.onnx"
        path.write_bytes(lake.read_bytes(onnx_key))
        return ChampionDetector(version, lambda images, **kw: predict_onnx(path, images, **kw))
    from alumi_pipelines.lib.export.onnx_export import checkpoint_imgsz

    weights = mlflow.download_weights(version, work / "champion")
    info = mlflow.version(version)
    imgsz = int(info.tags.get("imgsz") or 0) or checkpoint_imgsz(weights, settings.ultralytics_dir)
    return ChampionDetector(
        version,
        lambda images, **kw: predict_torch(weights, images, config_dir=settings.ultralytics_dir, imgsz=imgsz, **kw),
    )


@dataclass
class ReviewQueueSummary:
    queue: Any
    model_version: str | None
    candidates: dict[str, int] = field(default_factory=dict)
    newly_scored: int = 0
    already_sent: int = 0


def build_review_queue(
    lake: Lake, settings: PipelineSettings, config: ReviewQueueConfig, detector: ChampionDetector | None, work: Path
) -> ReviewQueueSummary:
    """Candidates of every source, cut to the budget; the queue (with each image's pre-annotation) written."""
    import polars as pl

    from alumi_pipelines.lib.vision import review
    from alumi_pipelines.lib.vision.imaging import FEATURE_COLUMNS

    features, _ = read_processed(lake)
    images = features.unique("image_id", keep="first", maintain_order=True)
    sent = read_sent(lake)
    sent_ids = set(sent["image_id"].to_list())
    pointer = read_gold_pointer(lake) if lake.exists(lake_keys.GOLD_POINTER) else None
    manifest = read_version_manifest(lake, pointer["prefix"]) if pointer else None
    in_gold = set(manifest["image_id"].to_list()) if manifest is not None else set()

    # edge frames kept for review, and images held out of gold for rejected annotations, not labelled since
    unlabelled = images.filter(~pl.col("labelled") & ~pl.col("image_id").is_in(list(in_gold | sent_ids)))
    if "held_out" not in unlabelled.columns:  # features written before images were held out
        unlabelled = unlabelled.with_columns(pl.lit("").alias("held_out"))
    held = review.held_out_candidates(unlabelled)
    frames = unlabelled.filter(pl.col("held_out").fill_null("") == "")
    edge = review.edge_candidates(edge_frames(lake, frames["image_id"].to_list()))

    # disagreement of the champion with the current labels (gold train/val)
    predictions, newly = None, 0
    disagree = pl.DataFrame(schema=review.CANDIDATE_SCHEMA)
    if detector is not None and manifest is not None:
        trainval = manifest.filter(pl.col("split").is_in(["train", "val"]) & ~pl.col("image_id").is_in(list(sent_ids)))
        ids = trainval["image_id"].to_list()
        predictions, newly = scored_predictions(lake, detector, images, ids, settings, config, work)
        scored = set(predictions["image_id"].to_list())
        ids = [i for i in ids if i in scored]
        labels = read_version_labels(lake, pointer["prefix"], manifest)
        table = review.disagreements(
            labels.filter(pl.col("image_id").is_in(ids)),
            predictions.drop_nulls("class_name"),
            ids,
            iou=config.iou,
            min_confidence=config.confidence,
        )
        disagree = review.disagreement_candidates(table)

    # drift outliers against the training set of the current gold
    drift = pl.DataFrame(schema=review.CANDIDATE_SCHEMA)
    if manifest is not None:
        train_ids = manifest.filter(pl.col("split") == "train")["image_id"].to_list()
        reference = images.filter(pl.col("image_id").is_in(train_ids))
        current = images.filter(~pl.col("image_id").is_in(list(sent_ids)))
        columns = [c for c in FEATURE_COLUMNS if c in images.columns]
        drift = review.drift_outliers(current, reference, columns, threshold=config.drift_z)

    queue = review.select_queue(pl.concat([edge, held, disagree, drift]), config.budget, exclude=sent_ids)
    queue = with_pre_annotations(lake, queue, images, detector, predictions, settings, work, config)
    lake.write_table(lake_keys.REVIEW_QUEUE, queue)
    return ReviewQueueSummary(
        queue=queue,
        model_version=detector.version if detector else None,
        candidates={
            "edge": edge.height,
            "held_out": held.height,
            "disagreement": disagree.height,
            "drift": drift.height,
        },
        newly_scored=newly,
        already_sent=len(sent_ids),
    )


def edge_frames(lake: Lake, image_ids: Sequence[str]):
    """image_id and capture_reasons of unlabelled frames, from the sidecars edge devices landed with them."""
    import polars as pl

    rows = []
    if image_ids:
        wanted = set(image_ids)
        manifests = [f.key for f in lake.list_files(lake_keys.RAW_MANIFESTS) if f.key.endswith(".parquet")]
        table = lake.read_tables(manifests)
        seen: set[str] = set()
        for batch, path, image_id in table.select("batch", "source_path", "image_id").iter_rows():
            if image_id not in wanted or image_id in seen:
                continue
            seen.add(image_id)
            sidecar = lake_keys.landing_key(batch, str(Path(path).with_suffix(".json")))
            reasons: list[str] = []
            if lake.exists(sidecar):
                try:
                    doc = json.loads(lake.read_bytes(sidecar))
                    reasons = [str(r) for r in doc.get("capture_reasons") or []]
                except (ValueError, AttributeError):
                    reasons = []
            rows.append({"image_id": image_id, "capture_reasons": reasons})
    return pl.DataFrame(rows, schema={"image_id": pl.Utf8, "capture_reasons": pl.List(pl.Utf8)})


def _prediction_schema():
    """The champion's boxes on lake images, normalised; an image scored without boxes is one row of nulls."""
    import polars as pl

    return {
        "image_id": pl.Utf8,
        "class_name": pl.Utf8,
        "confidence": pl.Float64,
        **{c: pl.Float64 for c in ("x_center", "y_center", "width", "height")},
    }


def detect(
    detector: ChampionDetector,
    lake: Lake,
    images,
    ids: Sequence[str],
    settings: PipelineSettings,
    work: Path,
    config: ReviewQueueConfig,
):
    """The champion's boxes (at the configured confidence, most confident first) on processed images, normalised;
    an image without boxes keeps one row of nulls."""
    import polars as pl

    from alumi_pipelines.lib.progress import Tracked

    sizes = {i: (w, h) for i, w, h in images.select("image_id", "width", "height").iter_rows()}
    paths = []
    for image_id in ids:
        key = lake_keys.processed_image_key(image_id)
        local = lake.local_path(key)
        if local is None:
            local = work / "images" / f"{image_id}.jpg"
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(lake.read_bytes(key))
        paths.append(local)
    if detector.log is not None:
        paths = Tracked(paths, settings.progress(f"review scoring (champion v{detector.version})", None, detector.log))
    rows = []
    for image_id, found in zip(
        ids, detector.run(paths, conf=config.confidence, max_det=config.max_boxes) if paths else []
    ):
        width, height = sizes[image_id]
        if len(found) == 0:
            rows.append({"image_id": image_id})
        for (x1, y1, x2, y2), conf, cls in zip(
            found.boxes.tolist(), found.confidences.tolist(), found.class_ids.tolist()
        ):
            name = settings.classes[int(cls)] if 0 <= int(cls) < len(settings.classes) else str(int(cls))
            rows.append(
                {
                    "image_id": image_id,
                    "class_name": name,
                    "confidence": round(float(conf), 4),
                    "x_center": round((x1 + x2) / 2 / width, 6),
                    "y_center": round((y1 + y2) / 2 / height, 6),
                    "width": round((x2 - x1) / width, 6),
                    "height": round((y2 - y1) / height, 6),
                }
            )
    return pl.DataFrame(rows, schema=_prediction_schema())


def scored_predictions(
    lake: Lake, detector: ChampionDetector, images, ids: Sequence[str], settings: PipelineSettings, config, work: Path
):
    """The champion's boxes on ``ids``: stored per model version and confidence, so each image is run once per
    champion; at most ``max_scored`` new images per call. Returns (predictions of the scored ids, how many were
    newly scored)."""
    import polars as pl

    key = lake_keys.review_predictions_key(f"{detector.version}-c{config.confidence:g}-n{config.max_boxes}")
    stored = lake.read_table(key) if lake.exists(key) else pl.DataFrame(schema=_prediction_schema())
    done = set(stored["image_id"].to_list())
    new = [i for i in ids if i not in done][: config.max_scored]
    if new:
        stored = pl.concat([stored, detect(detector, lake, images, new, settings, work, config)])
        lake.write_table(key, stored)
    return stored.filter(pl.col("image_id").is_in(list(ids))), len(new)


def with_pre_annotations(lake: Lake, queue, images, detector, predictions, settings: PipelineSettings, work, config):
    """The queue with each image's size, the champion's boxes (JSON) and its version."""
    import polars as pl

    sizes = images.select("image_id", "width", "height")
    queue = queue.join(sizes, on="image_id", how="left").sort("rank")
    if detector is None or queue.is_empty():
        return queue.with_columns(pl.lit(None, pl.Utf8).alias("boxes"), pl.lit(None, pl.Utf8).alias("model_version"))
    have = predictions if predictions is not None else pl.DataFrame(schema=_prediction_schema())
    scored = set(have["image_id"].to_list())
    missing = [i for i in queue["image_id"].to_list() if i not in scored]
    if missing:
        have = pl.concat([have, detect(detector, lake, images, missing, settings, work, config)])
    boxes = {}
    for row in have.drop_nulls("class_name").iter_rows(named=True):
        boxes.setdefault(row["image_id"], []).append(
            [row["class_name"], row["confidence"], row["x_center"], row["y_center"], row["width"], row["height"]]
        )
    return queue.with_columns(
        pl.col("image_id").map_elements(lambda i: json.dumps(boxes.get(i, [])), return_dtype=pl.Utf8).alias("boxes"),
        pl.lit(detector.version, pl.Utf8).alias("model_version"),
    )


# -- label_studio_tasks ----------------------------------------------------------------------------
@asset(
    deps=["review_queue"],
    group_name=GROUP,
    owners=["team:quality"],
    kinds={"labelstudio"},
    description="The review queue in Label Studio: one project per class map (rectangle labels generated from the "
    "class map, a 'no defect' choice), each queued image a task with the reason it was queued and the champion's "
    "boxes as a pre-annotation tagged with the model version. An image already in the project is never imported "
    "again. Every import is recorded in review/sent.parquet.",
)
def label_studio_tasks(
    context: AssetExecutionContext, lake: Lake, label_studio: LabelStudio, pipeline_settings: PipelineSettings
) -> MaterializeResult:
    try:
        result = send_to_label_studio(lake, label_studio, pipeline_settings)
    except LabelStudioError as exc:
        raise Failure(str(exc)) from None
    context.log.info(f"project {result.project_id} ({result.project_action}): {result.imported} tasks imported")
    return MaterializeResult(
        metadata={
            "project_id": result.project_id,
            "project": MetadataValue.url(f"{label_studio.url.rstrip('/')}/projects/{result.project_id}/data"),
            "project_title": result.title,
            "project_action": result.project_action,
            "imported": result.imported,
            "already_in_project": result.skipped,
            "sent_total": result.sent_total,
        }
    )


@dataclass
class SendResult:
    project_id: int
    title: str
    project_action: str
    imported: int
    skipped: int
    sent_total: int


def review_project(label_studio: LabelStudio, settings: PipelineSettings, *, create: bool):
    """The Label Studio project of the class map (created or updated when ``create``), or None."""
    from alumi_pipelines.lib.vision import labelstudio as ls

    title = ls.project_title(settings.classes)
    if create:
        project, action = label_studio.ensure_project(
            title, ls.review_config(settings.classes), ls.project_description(settings.classes)
        )
        return project, action
    return next((p for p in label_studio.projects() if p.get("title") == title), None), "found"


def image_url(lake: Lake, label_studio: LabelStudio, key: str) -> str:
    """How the Label Studio server reaches a lake image: a signed URL (object-store lake) or its local-files URL."""
    from urllib.parse import quote

    from alumi_pipelines.lib.vision.label_export import LOCAL_FILES_URL

    shared = lake.share_url(key, label_studio.link_hours)
    if shared is not None:
        return shared
    path, root = lake.local_path(key), files_root(lake, label_studio)
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        raise LabelStudioError(
            f"image {path} is not below Label Studio's document root {root}: set ALUMI_LABEL_STUDIO_FILES_ROOT to "
            "the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, a folder that holds the lake"
        ) from None
    return LOCAL_FILES_URL + quote(rel.as_posix(), safe="/")


def files_root(lake: Lake, label_studio: LabelStudio) -> Path:
    """The server's document root: configured, or the lake's own folder."""
    lake_root = lake.local_path(lake_keys.PROCESSED_IMAGES).parents[1]
    return Path(label_studio.files_root or lake_root).expanduser().resolve()


def send_to_label_studio(lake: Lake, label_studio: LabelStudio, settings: PipelineSettings) -> SendResult:
    import polars as pl

    from alumi_pipelines.lib.vision import labelstudio as ls

    if not lake.exists(lake_keys.REVIEW_QUEUE):
        raise Failure(f"{lake_keys.REVIEW_QUEUE}: no review queue yet; materialise review_queue first")
    queue = lake.read_table(lake_keys.REVIEW_QUEUE).sort("rank")
    project, action = review_project(label_studio, settings, create=True)
    pid = int(project["id"])
    if lake.is_local:
        label_studio.ensure_local_storage(pid, str(lake.local_path(lake_keys.PROCESSED_IMAGES).resolve()))
    present = label_studio.task_image_ids(pid)
    fresh = queue.filter(~pl.col("image_id").is_in(list(present)))
    tasks = []
    for row in fresh.iter_rows(named=True):
        boxes = [tuple(b) for b in json.loads(row["boxes"])] if row.get("boxes") else []
        tasks.append(
            ls.review_task(
                image_id=row["image_id"],
                image_url=image_url(lake, label_studio, lake_keys.processed_image_key(row["image_id"])),
                reason=row["reason"],
                detail=row["detail"] or "",
                width=row["width"],
                height=row["height"],
                boxes=boxes,
                model_version=row.get("model_version"),
            )
        )
    label_studio.import_tasks(pid, tasks)
    ids = {
        t["data"]["image_id"]: t["id"] for t in label_studio.tasks(pid, fields="task_only") if "image_id" in t["data"]
    }
    now = dt.datetime.now(dt.UTC).isoformat()
    sent = read_sent(lake)
    already = set(sent["image_id"].to_list())
    new_rows = pl.DataFrame(
        [
            {
                "image_id": r["image_id"],
                "project_id": pid,
                "task_id": ids.get(r["image_id"]),
                "reason": r["reason"],
                "model_version": r.get("model_version"),
                "sent_at": now,
            }
            for r in queue.iter_rows(named=True)
            if r["image_id"] in ids and r["image_id"] not in already
        ],
        schema=_sent_schema(),
    )
    if new_rows.height:
        lake.write_table(lake_keys.REVIEW_SENT, pl.concat([sent, new_rows]))
    return SendResult(
        pid, project["title"], action, len(tasks), queue.height - fresh.height, sent.height + new_rows.height
    )


def _sent_schema():
    import polars as pl

    return {
        "image_id": pl.Utf8,
        "project_id": pl.Int64,
        "task_id": pl.Int64,
        "reason": pl.Utf8,
        "model_version": pl.Utf8,
        "sent_at": pl.Utf8,
    }


def read_sent(lake: Lake):
    import polars as pl

    if lake.exists(lake_keys.REVIEW_SENT):
        return lake.read_table(lake_keys.REVIEW_SENT)
    return pl.DataFrame(schema=_sent_schema())


# -- Label Studio → corrections/incoming (used by review_sensor) -----------------------------------
@dataclass
class PullResult:
    project_id: int | None
    tasks: int
    annotations: int
    key: str | None
    newest: str | None


def pull_reviews(lake: Lake, label_studio: LabelStudio, settings: PipelineSettings, since: str | None) -> PullResult:
    """Tasks of the class map's project updated after ``since`` (Label Studio time) with their annotations, written
    as one file in corrections/incoming/ (Label Studio's JSON export layout, annotators as e-mail addresses)."""
    project, _ = review_project(label_studio, settings, create=False)
    if project is None:
        return PullResult(None, 0, 0, None, since)
    pid = int(project["id"])
    tasks = list(label_studio.tasks(pid, updated_after=since))
    newest = max((t["updated_at"] for t in tasks if t.get("updated_at")), default=since)
    reviewed = [t for t in tasks if t.get("annotations")]
    if not reviewed:
        return PullResult(pid, 0, 0, None, newest)
    emails = label_studio.user_emails()
    doc = []
    for task in reviewed:
        annotations = []
        for a in task["annotations"]:
            author = a.get("completed_by")
            if isinstance(author, dict):
                author = author.get("email") or author.get("id")
            annotations.append(
                {
                    "id": a.get("id"),
                    "completed_by": emails.get(author, author) if isinstance(author, int) else author,
                    "was_cancelled": bool(a.get("was_cancelled")),
                    "created_at": a.get("created_at"),
                    "updated_at": a.get("updated_at"),
                    "result": a.get("result") or [],
                }
            )
        doc.append(
            {
                "id": task["id"],
                "project": pid,
                "updated_at": task.get("updated_at"),
                "data": task.get("data") or {},
                "annotations": annotations,
            }
        )
    key = lake_keys.labelstudio_incoming_name(pid, newest)
    lake.write_json(key, doc)
    return PullResult(pid, len(doc), sum(len(t["annotations"]) for t in doc), key, newest)
