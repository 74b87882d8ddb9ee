"""Every lake key, for every zone of both branches and the releases: the only module that spells one.

Vision branch::

    meta/classes.json                                the lake's class map (first import that names classes)
    meta/splits.json                                 the lake's train/val/test fractions (first gold build)
    landing/<batch>/...                              files as a camera station or `alumi import` dropped them
    raw/images/ab/<sha>.<ext>, raw/manifests|labels/<batch>.parquet
    quarantine/<batch>/rejections.parquet, quarantine/<batch>/files/...
    processed/images/ab/<sha>.jpg, processed/features|labels/<batch>.parquet
    corrections/incoming/ -> validated/ -> applied/
    gold/datasets/<hash>/..., gold/current.json
    models/evaluations/, models/onnx/<version>/, models/tensorrt/<version>/, models/champion.json
    releases/<version>/..., releases/channels/<channel>.json
    reports/drift/<id>.html|json, reports/drift/latest.json
    review/queue.parquet, review/sent.parquet        the review queue and every image sent to Label Studio
    review/predictions/<model>-c<conf>-n<max>.parquet  the champion's boxes on lake images (scored once per version)

Plant branch (casting and rolling sensor data; one folder per production day, ``YYYY-MM-DD``)::

    landing/plant/<day>/historian_<line>.csv, production_plan.csv, outcomes.csv
    raw/plant/<day>.parquet                          clean samples, canonical units, UTC
    quarantine/plant/<day>/rejects|file_errors|flagged_parts.parquet, files/...
    quarantine/plant/outcomes/...                    outcome files that could not be read
    processed/plant_features/<day>.parquet           windowed statistics per part
    gold/plant/dataset.parquet, split.json, unmatched.parquet
    models/risk/versions/<version>/risk_model.json, models/risk/evaluations/, models/risk/champion/
    reports/plant_drift/<id>.html|json, reports/plant_drift/latest.json

Edge predictions (what the deployed detector answered; one folder per device and UTC day)::

    predictions/<device>/<day>/<YYYY-MM-DDTHH>.parquet   hourly prediction logs uploaded by `alumi-edge sync`
    processed/predictions/<day>.parquet              every device's predictions of the day, one row per box
    reports/prediction_drift/<id>.html|json, reports/prediction_drift/latest.json
"""

from __future__ import annotations

import datetime as dt
import re

from alumi_pipelines.lib.vision.formats import BATCH_MARKER

# -- the lake's own records ------------------------------------------------------------------------
CLASS_MAP = "meta/classes.json"  # the lake's class map: {"classes": [...], "source": ..., "updated_at": ...}
SPLIT_SETTINGS = "meta/splits.json"  # the lake's split fractions: {"fractions": [train, val, test], "source": ...}

# -- landing ---------------------------------------------------------------------------------------
LANDING = "landing"


def landing_prefix(batch: str) -> str:
    return f"{LANDING}/{batch}"


def landing_key(batch: str, path: str) -> str:
    return f"{landing_prefix(batch)}/{path}"


def batch_marker_key(batch: str) -> str:
    return landing_key(batch, BATCH_MARKER)


# -- raw -------------------------------------------------------------------------------------------
RAW_MANIFESTS = "raw/manifests"
RAW_IMAGES = "raw/images"


def raw_image_key(image_id: str, ext: str) -> str:
    return f"{RAW_IMAGES}/{image_id[:2]}/{image_id}{ext}"


def raw_manifest_key(batch: str) -> str:
    return f"{RAW_MANIFESTS}/{batch}.parquet"


def raw_labels_key(batch: str) -> str:
    return f"raw/labels/{batch}.parquet"


# -- quarantine ------------------------------------------------------------------------------------
def quarantine_table_key(batch: str) -> str:
    return f"quarantine/{batch}/rejections.parquet"


def quarantine_file_key(batch: str, path: str) -> str:
    return f"quarantine/{batch}/files/{path}"


# -- processed -------------------------------------------------------------------------------------
PROCESSED_FEATURES = "processed/features"
PROCESSED_LABELS = "processed/labels"


PROCESSED_IMAGES = "processed/images"


def processed_image_key(image_id: str) -> str:
    return f"{PROCESSED_IMAGES}/{image_id[:2]}/{image_id}.jpg"


def processed_features_key(batch: str) -> str:
    return f"{PROCESSED_FEATURES}/{batch}.parquet"


def processed_labels_key(batch: str) -> str:
    return f"{PROCESSED_LABELS}/{batch}.parquet"


# -- corrections -----------------------------------------------------------------------------------
CORRECTIONS_INCOMING = "corrections/incoming"
CORRECTIONS_VALIDATED = "corrections/validated/corrections.parquet"
CORRECTIONS_OVERLAY = "corrections/applied/overlay.parquet"
CORRECTIONS_CHANGES = "corrections/applied/changes.parquet"
CORRECTIONS_REJECTIONS = "quarantine/corrections/rejections.parquet"


def corrections_incoming_key(name: str) -> str:
    return f"{CORRECTIONS_INCOMING}/{name}"


def labelstudio_incoming_name(project_id: int, until: str) -> str:
    """The file a Label Studio pull writes: its project and the newest task update it holds (compact UTC)."""
    stamp = re.sub(r"[^0-9]", "", until)[:20] or "0"
    return corrections_incoming_key(f"label-studio-p{int(project_id)}-{stamp}.json")


# -- review ----------------------------------------------------------------------------------------
REVIEW_QUEUE = "review/queue.parquet"  # the newest queue: image, reason, score, detail, pre-annotation
REVIEW_SENT = "review/sent.parquet"  # every image imported into Label Studio: project, task id, reason, time
REVIEW_PREDICTIONS = "review/predictions"


def review_predictions_key(scoring: str) -> str:
    """The champion's boxes on lake images for one scoring (model version, confidence, boxes per image)."""
    return f"{REVIEW_PREDICTIONS}/{scoring}.parquet"


# -- gold ------------------------------------------------------------------------------------------
GOLD_POINTER = "gold/current.json"
GOLD_DATASETS = "gold/datasets"  # one folder per dataset version, named by its content hash


def gold_prefix(dataset_hash: str) -> str:
    return f"{GOLD_DATASETS}/{dataset_hash}"


def gold_file_key(prefix: str, rel: str) -> str:
    """A file of a gold dataset folder (``data.yaml``, ``manifest.parquet``, ``images/train/...``)."""
    return f"{prefix}/{rel}"


def gold_manifest_key(prefix: str) -> str:
    return gold_file_key(prefix, "manifest.parquet")  # written last: its presence means complete


def gold_labels_key(prefix: str) -> str:
    """The dataset's canonical label table: one row per box, normalised coordinates, with its split."""
    return gold_file_key(prefix, "labels.parquet")


def gold_data_yaml_key(prefix: str) -> str:
    return gold_file_key(prefix, "data.yaml")


def gold_split_prefix(prefix: str, kind: str, split: str) -> str:
    """``<prefix>/images/<split>`` or ``<prefix>/labels/<split>``."""
    return gold_file_key(prefix, f"{kind}/{split}")


# -- models: evaluations, champion, exports ----------------------------------------------------------
CHAMPION_RECORD = "models/champion.json"  # {version, dataset_hash, promoted_at, trained_at}: read by sensors


def evaluation_key(version: str) -> str:
    return f"models/evaluations/{version}.json"


def gate_key(version: str) -> str:
    return f"models/evaluations/{version}.gate.json"


def plot_key(version: str, name: str) -> str:
    return f"models/evaluations/{version}/{name}"


def onnx_prefix(model_version: str) -> str:
    return f"models/onnx/{model_version}"


def onnx_model_key(model_version: str, file_name: str) -> str:
    return f"{onnx_prefix(model_version)}/{file_name}"


def export_record_key(model_version: str) -> str:
    return onnx_model_key(model_version, "export.json")


def parity_record_key(model_version: str) -> str:
    return onnx_model_key(model_version, "parity.json")


def int8_record_key(model_version: str) -> str:
    return onnx_model_key(model_version, "int8.json")


def plan_key(model_version: str) -> str:
    return onnx_model_key(model_version, "tensorrt_plan.json")


def engine_key(model_version: str, file_name: str) -> str:
    return f"models/tensorrt/{model_version}/{file_name}"


# -- releases --------------------------------------------------------------------------------------
RELEASES = "releases"


def release_prefix(version: str) -> str:
    return f"{RELEASES}/{version}"


def release_file_key(version: str, rel: str) -> str:
    return f"{release_prefix(version)}/{rel}"


def channel_key(channel: str) -> str:
    return f"{RELEASES}/channels/{channel}.json"


# -- reports ---------------------------------------------------------------------------------------
DRIFT_LATEST = "reports/drift/latest.json"


def drift_report_key(report_id: str, ext: str) -> str:
    return f"reports/drift/{report_id}.{ext}"


# -- plant branch ----------------------------------------------------------------------------------
PLANT_LANDING = "landing/plant"
PLANT_FEATURES = "processed/plant_features"
DAY_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
OUTCOMES_FILE = "outcomes.csv"
PLAN_FILE = "production_plan.csv"
RISK_MODEL_FILE = "risk_model.json"

RISK_DATASET_KEY = "gold/plant/dataset.parquet"
RISK_SPLIT_KEY = "gold/plant/split.json"
RISK_UNMATCHED_KEY = "gold/plant/unmatched.parquet"
OUTCOME_ERRORS_KEY = "quarantine/plant/outcomes/file_errors.parquet"
OUTCOME_FILES = "quarantine/plant/outcomes/files"
RISK_CHAMPION_KEY = "models/risk/champion/risk_model.json"
RISK_CHAMPION_POINTER = "models/risk/champion/champion.json"
PLANT_DRIFT_LATEST = "reports/plant_drift/latest.json"


def check_day(day: str) -> str:
    """The day key, or ValueError naming the rule (YYYY-MM-DD, a real date)."""
    if not isinstance(day, str) or not DAY_PATTERN.match(day):
        raise ValueError(f"plant day {day!r}: must be YYYY-MM-DD")
    dt.date.fromisoformat(day)
    return day


def plant_landing_prefix(day: str) -> str:
    return f"{PLANT_LANDING}/{check_day(day)}"


def plant_landing_key(day: str, name: str) -> str:
    return f"{plant_landing_prefix(day)}/{name}"


def historian_landing_name(line: str) -> str:
    return f"historian_{line}.csv"


def raw_plant_key(day: str) -> str:
    return f"raw/plant/{check_day(day)}.parquet"


def plant_quarantine_prefix(day: str) -> str:
    return f"quarantine/plant/{check_day(day)}"


def plant_rejects_key(day: str) -> str:
    return f"{plant_quarantine_prefix(day)}/rejects.parquet"


def plant_file_errors_key(day: str) -> str:
    return f"{plant_quarantine_prefix(day)}/file_errors.parquet"


def plant_flags_key(day: str) -> str:
    return f"{plant_quarantine_prefix(day)}/flagged_parts.parquet"


def plant_quarantine_files(day: str) -> str:
    return f"{plant_quarantine_prefix(day)}/files"


def plant_quarantine_file_key(day: str, name: str) -> str:
    return f"{plant_quarantine_files(day)}/{name}"


def outcome_quarantine_file_key(landing_key_: str) -> str:
    """Where a refused outcomes file is kept: its path below landing/plant/."""
    return f"{OUTCOME_FILES}/{landing_key_[len(PLANT_LANDING) + 1 :]}"


def plant_features_key(day: str) -> str:
    return f"{PLANT_FEATURES}/{check_day(day)}.parquet"


def risk_version_key(version: str) -> str:
    return f"models/risk/versions/{version}/{RISK_MODEL_FILE}"


def risk_evaluation_key(version: str) -> str:
    return f"models/risk/evaluations/{version}.json"


def risk_gate_key(version: str) -> str:
    return f"models/risk/evaluations/{version}.gate.json"


def risk_plot_key(version: str, name: str) -> str:
    return f"models/risk/evaluations/{version}/{name}.png"


def plant_drift_report_key(report_id: str, ext: str) -> str:
    return f"reports/plant_drift/{report_id}.{ext}"


# -- edge predictions ------------------------------------------------------------------------------
PREDICTIONS = "predictions"
PROCESSED_PREDICTIONS = "processed/predictions"
PREDICTION_DRIFT_LATEST = "reports/prediction_drift/latest.json"


def check_prediction_day(day: str) -> str:
    """The day key, or ValueError naming the rule (YYYY-MM-DD, a real date)."""
    if not isinstance(day, str) or not DAY_PATTERN.match(day):
        raise ValueError(f"prediction day {day!r}: must be YYYY-MM-DD")
    try:
        dt.date.fromisoformat(day)
    except ValueError as exc:
        raise ValueError(f"prediction day {day!r}: not a date ({exc})") from None
    return day


def predictions_device_prefix(device: str) -> str:
    """Every day folder of one device's prediction logs."""
    return f"{PREDICTIONS}/{device}"


def predictions_day_prefix(device: str, day: str) -> str:
    """One device's hourly prediction logs of one day: list this prefix."""
    return f"{predictions_device_prefix(device)}/{check_prediction_day(day)}"


def predictions_hour_key(device: str, day: str, hour: int) -> str:
    """``predictions/<device>/<day>/<day>T<HH>.parquet``, as the edge's sync writes it."""
    if not isinstance(hour, int) or not 0 <= hour <= 23:
        raise ValueError(f"hour {hour!r}: must be an integer 0..23")
    return f"{predictions_day_prefix(device, day)}/{day}T{hour:02d}.parquet"


def processed_predictions_key(day: str) -> str:
    return f"{PROCESSED_PREDICTIONS}/{check_prediction_day(day)}.parquet"


def prediction_drift_report_key(report_id: str, ext: str) -> str:
    return f"reports/prediction_drift/{report_id}.{ext}"
