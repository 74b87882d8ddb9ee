"""``alumi-edge sync``: push queued feedback, kept frames and closed prediction logs to the lake.

Feedback goes to ``corrections/incoming/`` as JSONL files. A batch is uploaded under its fixed name
(``edge-<device>-<first seq>-<last seq>.jsonl``) with one atomic write, and marked sent only afterwards:
an outage leaves it queued, and a retry rewrites the same name with the same bytes, so downstream sees
every record exactly once.

Kept frames (``alumi_edge.capture``) go to ``landing/<batch>/`` as a landing batch in the native "alumi"
format, unlabelled: ``<line>/<camera>/<frame id><ext>`` plus a ``<frame id>.json`` sidecar per frame
(``labelled: false``, empty ``boxes``, the model's boxes under ``predictions``), then ``_batch.json``
(``{"format": "alumi", "classes": null, "source": "alumi-edge", "device", "frames"}``) LAST, then the
batch is marked synced on the device. The batch's name and frames are fixed in the capture database before
the first upload, and every file is derived from the stored frame, so a retry after an outage or a
``kill -9`` rewrites the same names with the same bytes; the pipeline only takes a batch once its marker
is there, so it never sees half a batch. A frame whose file vanished (or no longer matches its sha256) is
skipped and reported, not uploaded.

Closed hourly prediction logs go to ``predictions/<device>/<YYYY-MM-DD>/<YYYY-MM-DDTHH>.parquet``, one
atomic write each (see :func:`predictions_schema`: one row per predicted box), then
the log is marked synced (and deleted) on the device.

Targets sit behind :class:`FeedbackTarget`; a local (or mounted) folder and an HTTP PUT target (Azure
Blob SAS URL) exist. Relative paths are relative to the lake root.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import re
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from alumi_edge.feedback import FeedbackQueue, device_slug
from alumi_edge.files import TMP_PREFIX, write_atomic

if TYPE_CHECKING:
    from alumi_edge.capture import CaptureStore

INCOMING_PREFIX = "corrections/incoming"
LANDING_PREFIX = "landing"
PREDICTIONS_PREFIX = "predictions"
BATCH_MARKER = "_batch.json"
DEFAULT_LINE = "edge"
LOG_GRACE_S = 300.0  # an hour's log counts as closed this long after the hour (late writes of the writer thread)
_HOUR = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}$")
_CONTENT_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
}


class TargetUnavailable(Exception):
    """The target could not be written now (retry later); nothing was marked sent."""


class FeedbackTarget(ABC):
    """Somewhere a batch file can be written atomically."""

    @abstractmethod
    def put_atomic(self, relpath: str, data: bytes) -> None:
        """Write ``data`` at ``relpath`` so readers see all of it or nothing; raise TargetUnavailable on failure."""

    @abstractmethod
    def describe(self) -> str:
        """Where the target is, for messages (no secrets)."""

    def remove_partial_writes(self, relprefix: str) -> None:
        """Remove what interrupted writes left under ``relprefix`` (nothing to do where writes are atomic)."""
        return None


class LocalFolderTarget(FeedbackTarget):
    """A lake root on a local or mounted filesystem. The root must already exist (an absent mount is an outage)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def describe(self) -> str:
        return str(self.root)

    def put_atomic(self, relpath: str, data: bytes) -> None:
        if not self.root.is_dir():
            raise TargetUnavailable(f"target folder {self.root} does not exist (share not mounted?)")
        target = self.root / relpath
        try:
            write_atomic(target, data, fsync_parent=True)
        except OSError as exc:
            raise TargetUnavailable(f"writing {target} failed: {exc}") from exc

    def remove_partial_writes(self, relprefix: str) -> None:
        """Temporary files of writes a killed sync left behind (lake listings skip them; this tidies up)."""
        folder = self.root / relprefix
        if folder.is_dir():
            for path in folder.rglob(f"{TMP_PREFIX}*"):
                path.unlink(missing_ok=True)


class HttpPutTarget(FeedbackTarget):
    """An HTTP(S) lake root taking one PUT per file (Azure Blob: a container URL with a SAS query)."""

    def __init__(self, url: str, timeout_s: float = 30.0):
        parts = urllib.parse.urlsplit(url)
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._path, self._query = parts.path.rstrip("/"), parts.query
        self.timeout_s = timeout_s

    def describe(self) -> str:
        return f"{self._scheme}://{self._netloc}{self._path}"

    def put_atomic(self, relpath: str, data: bytes) -> None:
        import httpx

        from alumi_edge.sources_azure import redact

        path = f"{self._path}/{urllib.parse.quote(relpath)}"
        url = urllib.parse.urlunsplit((self._scheme, self._netloc, path, self._query, ""))
        md5 = hashlib.md5(data, usedforsecurity=False).digest()  # Azure refuses a body that does not match it
        headers = {
            "x-ms-blob-type": "BlockBlob",
            "Content-Type": content_type(relpath),
            "Content-MD5": base64.b64encode(md5).decode("ascii"),
        }
        try:
            response = httpx.put(url, content=data, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise TargetUnavailable(f"PUT {self.describe()}/{relpath} failed: {redact(str(exc))}") from exc
        if response.status_code >= 300:
            code = response.headers.get("x-ms-error-code", "")
            raise TargetUnavailable(
                f"PUT {self.describe()}/{relpath} answered HTTP {response.status_code}" + (f" {code}" if code else "")
            )


def content_type(relpath: str) -> str:
    suffix = Path(relpath).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(relpath)[0] or "application/octet-stream"


def open_target(uri: str) -> FeedbackTarget:
    """A FeedbackTarget for a folder path, ``file://`` URI or ``http(s)://`` URL."""
    if uri.startswith(("http://", "https://")):
        return HttpPutTarget(uri)
    if uri.startswith("file://"):
        return LocalFolderTarget(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if "://" in uri:
        raise ValueError(f"sync target {uri!r}: expected a folder, file:// URI or http(s):// URL")
    return LocalFolderTarget(uri)


@dataclass
class SyncResult:
    """Files and records pushed by one sync, what remains queued, and the last error if it stopped early."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    pending: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {"files": self.files, "records": self.records, "pending": self.pending, "error": self.error}


def put_with_retries(
    target: FeedbackTarget,
    relpath: str,
    data: bytes,
    attempts: int,
    backoff_s: float,
    max_backoff_s: float,
    sleep: Callable[[float], None],
    log: Callable[[str], None],
) -> None:
    """One atomic write, tried ``attempts`` times with doubling delays; the last TargetUnavailable is raised."""
    for attempt in range(1, attempts + 1):
        try:
            target.put_atomic(relpath, data)
            return
        except TargetUnavailable as exc:
            log(f"attempt {attempt}/{attempts} to write {relpath} failed: {exc}")
            if attempt == attempts:
                raise
            sleep(min(backoff_s * 2 ** (attempt - 1), max_backoff_s))


def sync_feedback(
    queue: FeedbackQueue,
    target: FeedbackTarget,
    batch_size: int = 500,
    attempts: int = 4,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda message: None,
) -> SyncResult:
    """Upload every queued batch; stops at the first batch that still fails after ``attempts`` tries."""
    result = SyncResult()
    while True:
        batch = queue.next_batch(batch_size)
        if batch is None:
            break
        relpath = f"{INCOMING_PREFIX}/{batch.name}"
        try:
            put_with_retries(target, relpath, batch.jsonl(), attempts, backoff_s, max_backoff_s, sleep, log)
        except TargetUnavailable as exc:
            result.error = str(exc)
            result.pending = queue.pending_count()
            return result
        queue.mark_sent(batch)
        result.files.append(relpath)
        result.records += len(batch.records)
        log(f"wrote {len(batch.records)} records to {target.describe()}/{relpath}")
    result.pending = queue.pending_count()
    return result


# -- kept frames and prediction logs ----------------------------------------------------------------------


@dataclass
class CaptureSyncResult:
    """Frames, landing batches and prediction logs pushed by one sync, what remains, and the error if it stopped."""

    batches: list[str] = field(default_factory=list)
    frames: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"id", "batch", "reason"}: frames not uploaded, for good
    logs: list[str] = field(default_factory=list)  # parquet relpaths
    prediction_requests: int = 0
    pending_frames: int = 0
    pending_logs: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "batches": self.batches,
            "frames_skipped": self.skipped,
            "frames_pending": self.pending_frames,
            "prediction_logs": self.logs,
            "prediction_requests": self.prediction_requests,
            "prediction_logs_pending": self.pending_logs,
        }


@dataclass(frozen=True)
class _Retry:
    attempts: int
    backoff_s: float
    max_backoff_s: float
    sleep: Callable[[float], None]
    log: Callable[[str], None]

    def put(self, target: FeedbackTarget, relpath: str, data: bytes) -> None:
        put_with_retries(target, relpath, data, self.attempts, self.backoff_s, self.max_backoff_s, self.sleep, self.log)


def _json_bytes(document: dict) -> bytes:
    """Canonical JSON (sorted keys): the same document always gives the same bytes."""
    return (json.dumps(document, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _frame_files(
    store: CaptureStore, frame_id: str, *, line: str, camera: str, device_id: str
) -> tuple[str, bytes, str, bytes] | str:
    """(image name, image bytes, sidecar name, sidecar bytes) of a kept frame, or why it cannot be uploaded."""
    row = store.get(frame_id)
    if row is None:
        return "no longer in the capture store"
    stem = device_slug(frame_id)
    path = store.frames_dir / f"{frame_id}{row['ext']}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"frame file {path.name} vanished"
    if row["sha256"] and hashlib.sha256(data).hexdigest() != row["sha256"]:
        return f"frame file {path.name} no longer matches its sha256 (damaged)"
    width, height = row.get("width"), row.get("height")
    if not width or not height:  # an operator upload stored without its size
        from alumi_edge.imaging import decode_image

        try:
            height, width = decode_image(data).shape[:2]
        except ValueError as exc:
            return f"frame file {path.name} is not a readable image ({exc})"
    image_name = f"{stem}{row['ext']}"
    sidecar = {
        "image": image_name,
        "line_id": line,
        "camera_id": camera,
        "captured_at": row["created_at"],
        "width": int(width),
        "height": int(height),
        "boxes": [],
        "labelled": False,
        "predictions": row["prediction"].get("boxes", []),
        "model_version": row["model_version"],
        "device": device_id,
        "capture_reasons": row["reasons"],
        "detection_id": frame_id,
        "image_sha256": row["sha256"] or hashlib.sha256(data).hexdigest(),
    }
    return image_name, data, f"{stem}.json", _json_bytes(sidecar)


def sync_frames(
    store: CaptureStore,
    target: FeedbackTarget,
    device_id: str,
    line_id: str = DEFAULT_LINE,
    batch_size: int = 200,
    attempts: int = 4,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda message: None,
    result: CaptureSyncResult | None = None,
) -> CaptureSyncResult:
    """Upload every kept, unsynced frame as landing batches; stops at the first file that still fails.

    Per batch: each frame's image and sidecar under ``landing/<batch>/<line>/<camera>/``, then the
    ``_batch.json`` marker, then ``mark_batch_synced``. ``camera`` is the device id made safe for a folder name
    (the sidecar's ``camera_id`` must equal its folder); the raw id is the sidecar's ``device``.
    """
    result = result or CaptureSyncResult()
    retry = _Retry(attempts, backoff_s, max_backoff_s, sleep, log)
    device = device_slug(device_id)
    line = device_slug(line_id)
    while True:
        batch = store.next_batch(device, limit=batch_size)
        if batch is None:
            break
        prefix = f"{LANDING_PREFIX}/{batch.name}"
        uploaded = 0
        try:
            for frame_id in batch.ids:
                files = _frame_files(store, frame_id, line=line, camera=device, device_id=device_id)
                if isinstance(files, str):
                    result.skipped.append({"id": frame_id, "batch": batch.name, "reason": files})
                    log(f"skipped frame {frame_id} of {batch.name}: {files}")
                    continue
                image_name, image, sidecar_name, sidecar = files
                retry.put(target, f"{prefix}/{line}/{device}/{image_name}", image)
                retry.put(target, f"{prefix}/{line}/{device}/{sidecar_name}", sidecar)
                uploaded += 1
            if uploaded:
                target.remove_partial_writes(prefix)
                marker = {
                    "format": "alumi",
                    "classes": None,
                    "source": "alumi-edge",
                    "device": device_id,
                    "frames": uploaded,
                }
                retry.put(target, f"{prefix}/{BATCH_MARKER}", _json_bytes(marker))
        except TargetUnavailable as exc:
            result.error = str(exc)
            break
        store.mark_batch_synced(batch.name)
        result.batches.append(batch.name)
        result.frames += uploaded
        log(f"wrote landing batch {batch.name} ({uploaded} frames) to {target.describe()}/{prefix}")
    result.pending_frames = store.counts()["unsynced"]
    return result


PREDICTION_TIMINGS = ("decode", "preprocess", "inference", "postprocess", "total", "request")


def predictions_schema():
    """The Parquet schema of a synced prediction log: ONE ROW PER PREDICTED BOX.

    A request without a box is one row whose box columns (``box_index``, ``class_id``, ``class_name``,
    ``confidence``, ``box``) are null, so every request appears at least once (the pipeline's
    ``edge_predictions`` reads the files this way). Per request, repeated on each of its rows: ``device`` (the
    raw device id), ``time`` (UTC, ms), ``request_id`` (the detection id), ``model_version``, ``image_sha256``,
    ``width``, ``height``, ``n_boxes``, ``max_confidence`` (null without boxes) and ``timing_ms`` (struct of the
    stage timings; null where not measured). Per box: ``box_index`` (0.., the order the model answered),
    ``class_id``, ``class_name``, ``confidence``, ``box`` (struct of x1, y1, x2, y2 in original pixels). One row
    per request: the rows with ``box_index`` null or 0.
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("device", pa.string()),
            ("time", pa.timestamp("ms", tz="UTC")),
            ("request_id", pa.string()),
            ("model_version", pa.string()),
            ("image_sha256", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("n_boxes", pa.int32()),
            ("max_confidence", pa.float64()),
            ("box_index", pa.int32()),
            ("class_id", pa.int32()),
            ("class_name", pa.string()),
            ("confidence", pa.float64()),
            ("box", pa.struct([(name, pa.float64()) for name in ("x1", "y1", "x2", "y2")])),
            ("timing_ms", pa.struct([(name, pa.float64()) for name in PREDICTION_TIMINGS])),
        ]
    )


def _time(value) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def prediction_log_parquet(records: list[dict], device_id: str) -> bytes:
    """A prediction log's records as Parquet bytes (zstd); the same records always give the same bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for record in records:
        boxes = [b for b in record.get("boxes") or [] if isinstance(b, dict)]
        confidences = [c for c in (_number(b.get("confidence")) for b in boxes) if c is not None]
        timing = record.get("timing_ms") if isinstance(record.get("timing_ms"), dict) else {}
        request = {
            "device": device_id,
            "time": _time(record.get("time")),
            "request_id": record.get("request_id"),
            "model_version": record.get("model_version"),
            "image_sha256": record.get("image_sha256"),
            "width": _int(record.get("width")),
            "height": _int(record.get("height")),
            "n_boxes": len(boxes),
            "max_confidence": max(confidences, default=None),
            "timing_ms": {k: _number(timing.get(k)) for k in PREDICTION_TIMINGS},
        }
        for index, b in enumerate(boxes):
            rows.append(
                {
                    **request,
                    "box_index": index,
                    "class_id": _int(b.get("class_id")),
                    "class_name": b.get("class_name"),
                    "confidence": _number(b.get("confidence")),
                    "box": {k: _number(b.get(k)) for k in ("x1", "y1", "x2", "y2")},
                }
            )
        if not boxes:
            rows.append(request)
    table = pa.Table.from_pylist(rows, schema=predictions_schema())
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def prediction_log_relpath(device_id: str, hour: str) -> str:
    """``predictions/<device>/<YYYY-MM-DD>/<YYYY-MM-DDTHH>.parquet`` of an hourly log."""
    return f"{PREDICTIONS_PREFIX}/{device_slug(device_id)}/{hour[:10]}/{hour}.parquet"


def sync_prediction_logs(
    store: CaptureStore,
    target: FeedbackTarget,
    device_id: str,
    now: datetime | None = None,
    grace_s: float = LOG_GRACE_S,
    attempts: int = 4,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda message: None,
    result: CaptureSyncResult | None = None,
) -> CaptureSyncResult:
    """Upload every closed hourly prediction log as Parquet, then mark it synced; stops at the first failure.

    An hour's log is closed ``grace_s`` after the hour ends (the server's writer thread may still append a
    request of the last moments of the hour).
    """
    from alumi_edge.capture import read_prediction_log

    result = result or CaptureSyncResult()
    retry = _Retry(attempts, backoff_s, max_backoff_s, sleep, log)
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=grace_s)
    logs = [p for p in store.closed_prediction_logs(cutoff) if _HOUR.match(p.stem)]
    for number, path in enumerate(logs):
        records = read_prediction_log(path)
        relpath = prediction_log_relpath(device_id, path.stem)
        if records:
            try:
                retry.put(target, relpath, prediction_log_parquet(records, device_id))
            except TargetUnavailable as exc:
                result.error = str(exc)
                result.pending_logs = len(logs) - number
                return result
            result.logs.append(relpath)
            result.prediction_requests += len(records)
            log(f"wrote {len(records)} predictions to {target.describe()}/{relpath}")
        store.mark_log_synced(path)
    return result


def sync_capture(
    store: CaptureStore,
    target: FeedbackTarget,
    device_id: str,
    line_id: str = DEFAULT_LINE,
    frames: bool = True,
    predictions: bool = True,
    batch_size: int = 200,
    now: datetime | None = None,
    attempts: int = 4,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda message: None,
) -> CaptureSyncResult:
    """Kept frames (landing batches), then closed prediction logs (Parquet); stops at the first failure."""
    retry = {"attempts": attempts, "backoff_s": backoff_s, "max_backoff_s": max_backoff_s, "sleep": sleep, "log": log}
    result = CaptureSyncResult()
    if frames:
        sync_frames(store, target, device_id, line_id, batch_size=batch_size, result=result, **retry)
    else:
        result.pending_frames = store.counts()["unsynced"]
    if predictions and result.ok:
        sync_prediction_logs(store, target, device_id, now=now, result=result, **retry)
    else:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=LOG_GRACE_S)
        result.pending_logs = len(store.closed_prediction_logs(cutoff))
    return result
