"""What the edge keeps for the lake: recent frames, frames kept for learning, and a log of every prediction.

Layout in the device home (``<home>/capture/``)::

    capture.sqlite3                one row per captured frame (WAL, synchronous=FULL) + synced prediction logs
    frames/<id>.<ext>              the request's original bytes (so the lake's image id is the same sha256)
    predictions/<YYYY-MM-DDTHH>.jsonl   one line per request: time, model version, image sha256, boxes, timings

Every request's frame is written as a *recent* frame (what the operator page shows). A frame is *kept* for the
lake when a rule samples it (uncertain, rare class, random fraction; at most ``per_hour_cap`` an hour) or when an
operator flags it. The store is bounded by ``max_bytes``: the oldest frames go first, but a kept frame only once it
is synced. Writing happens on one background thread fed by a bounded queue, never on the request path; when the
queue is full a frame is dropped and counted, the request is never slowed.

Sync (``alumi_edge.sync``) takes kept frames in batches whose membership and name are fixed in the database before
anything is uploaded, so a retry after an outage or a crash re-sends the same files under the same names.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alumi_edge.files import TMP_PREFIX, write_atomic

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    ext TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    model_version TEXT,
    width INTEGER,
    height INTEGER,
    prediction TEXT NOT NULL,
    reasons TEXT NOT NULL DEFAULT '[]',
    kept INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0,
    batch TEXT,
    synced_at TEXT
);
CREATE INDEX IF NOT EXISTS frames_created ON frames (created_at);
CREATE INDEX IF NOT EXISTS frames_order ON frames (created_at, id);
CREATE INDEX IF NOT EXISTS frames_removable ON frames (created_at, id) WHERE kept = 0 OR synced_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS frames_pending ON frames (kept, synced_at, batch);
CREATE TABLE IF NOT EXISTS prediction_logs (
    name TEXT PRIMARY KEY,
    synced_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sampled_hours (
    hour TEXT PRIMARY KEY,
    frames INTEGER NOT NULL
);
"""

REASONS = ("flagged", "uploaded", "uncertain", "rare_class", "random")
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "tiff": ".tif", "webp": ".webp"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def image_extension(data: bytes) -> str:
    """The file extension the bytes' signature names (``.bin`` when unknown)."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:2] == b"BM":
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


@dataclass(frozen=True)
class CaptureRules:
    """Which frames are kept for active learning, besides the flagged ones."""

    uncertain_low: float = 0.25  # a frame whose highest confidence lies in [low, high) is uncertain
    uncertain_high: float = 0.5
    rare_classes: tuple[str, ...] = ()  # any detection of one of these keeps the frame
    random_fraction: float = 0.0  # and this share of all other frames, at random
    per_hour_cap: int = 60  # sampled frames per hour at most (flagged ones are not counted)

    def reasons(self, boxes: Sequence[dict], draw: float) -> list[str]:
        """The sampling reasons that apply to a frame with ``boxes`` (``draw`` a uniform number in [0, 1))."""
        reasons = []
        top = max((float(b.get("confidence", 0.0)) for b in boxes), default=None)
        if top is not None and self.uncertain_low <= top < self.uncertain_high:
            reasons.append("uncertain")
        if self.rare_classes and any(b.get("class_name") in self.rare_classes for b in boxes):
            reasons.append("rare_class")
        if draw < self.random_fraction:
            reasons.append("random")
        return reasons


@dataclass
class Frame:
    """One request's frame and prediction, handed to the store on the request path."""

    id: str
    data: bytes
    model_version: str | None
    prediction: dict  # {"boxes": [...], "image": {"width", "height", "sha256"}, "timing_ms": {...}}
    created_at: str = field(default_factory=now_iso)


@dataclass(frozen=True)
class FrameBatch:
    """Kept frames assigned to one sync upload."""

    name: str
    ids: tuple[str, ...]


class CaptureStore:
    """The capture folder of a device home; thread-safe; one writer thread."""

    def __init__(
        self,
        root: str | Path,
        *,
        max_bytes: int = 2 * 1024**3,
        recent_frames: int = 200,
        rules: CaptureRules | None = None,
        queue_size: int = 64,
        seed: int | None = None,
        remove_orphans: bool = True,
    ):
        """``remove_orphans=False`` when another process may be writing frames into the store right now (the
        server, while ``alumi-edge sync`` opens it): a frame file whose row is not committed yet is no orphan."""
        self.root = Path(root).expanduser()
        self.frames_dir = self.root / "frames"
        self.logs_dir = self.root / "predictions"
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.recent_frames = recent_frames
        self.rules = rules or CaptureRules()
        self.dropped = 0
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "capture.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if remove_orphans:
            self._remove_orphans()
        self._queue: queue.Queue[Frame | None] = queue.Queue(maxsize=queue_size)
        self._writer = threading.Thread(target=self._drain, name="alumi-edge-capture", daemon=True)
        self._writer.start()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One explicit transaction on the autocommit connection (the caller holds the lock)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- request path ------------------------------------------------------------------------------
    def submit(self, frame: Frame) -> bool:
        """Hand a frame to the writer thread; False (and counted in ``dropped``) when the queue is full."""
        try:
            self._queue.put_nowait(frame)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every submitted frame is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=10)
        with self._lock:
            self._db.close()

    # -- writer thread -----------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            frame = self._queue.get()
            try:
                if frame is None:
                    return
                self._write(frame)
            except Exception:  # a full disk must not kill the writer: the frame is lost, later ones are tried
                self.dropped += 1
            finally:
                self._queue.task_done()

    def _write(self, frame: Frame) -> None:
        ext = image_extension(frame.data)
        image = frame.prediction.get("image", {})
        boxes = frame.prediction.get("boxes", [])
        self._append_log(frame, image, boxes)
        write_atomic(self.frames_dir / f"{frame.id}{ext}", frame.data, fsync=False)
        hour = frame.created_at[:13]
        with self._lock:
            reasons = self.rules.reasons(boxes, self._random.random())
            if reasons and self._sampled_this_hour(hour) >= self.rules.per_hour_cap:
                reasons = []
            with self._transaction():  # one commit (one fsync) per frame: row, hour count, evictions
                self._db.execute(
                    "INSERT OR IGNORE INTO frames (id, sha256, ext, bytes, created_at, model_version, width, height,"
                    " prediction, reasons, kept) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        frame.id,
                        image.get("sha256", ""),
                        ext,
                        len(frame.data),
                        frame.created_at,
                        frame.model_version,
                        image.get("width"),
                        image.get("height"),
                        json.dumps(frame.prediction, separators=(",", ":")),
                        json.dumps(reasons),
                        1 if reasons else 0,
                    ),
                )
                if reasons:
                    self._db.execute(
                        "INSERT INTO sampled_hours (hour, frames) VALUES (?, 1)"
                        " ON CONFLICT (hour) DO UPDATE SET frames = frames + 1",
                        (hour,),
                    )
                doomed = self._evict_rows()
        self._unlink(doomed)

    def _append_log(self, frame: Frame, image: dict, boxes: list[dict]) -> None:
        line = {
            "time": frame.created_at,
            "request_id": frame.id,
            "model_version": frame.model_version,
            "image_sha256": image.get("sha256"),
            "width": image.get("width"),
            "height": image.get("height"),
            "boxes": boxes,
            "timing_ms": frame.prediction.get("timing_ms", {}),
        }
        path = self.logs_dir / f"{frame.created_at[:13]}.jsonl"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _sampled_this_hour(self, hour: str) -> int:
        """Frames the rules kept in this hour (``YYYY-MM-DDTHH``), evicted ones included."""
        row = self._db.execute("SELECT frames FROM sampled_hours WHERE hour = ?", (hour,)).fetchone()
        return int(row[0]) if row else 0

    def _evict_rows(self) -> list[tuple[str, str]]:
        """Delete the rows of the frames to evict, oldest first: frames beyond the recent window that are not kept,
        or kept and synced; then by size. Their (id, ext), whose files the caller removes after the commit."""
        total = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM frames").fetchone()[0]
        # the newest frame beyond the recent window (None while the store holds fewer frames): it and every older
        # frame are beyond the window. Both queries walk indexes, never every row: an offline device may hold
        # thousands of kept frames, which must not cost the writer a scan per frame.
        cutoff = self._db.execute(
            "SELECT created_at, id FROM frames ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
            (self.recent_frames,),
        ).fetchone()
        removable = self._db.execute(
            "SELECT id, ext, bytes, created_at FROM frames WHERE kept = 0 OR synced_at IS NOT NULL"
            " ORDER BY created_at, id"
        )
        doomed = []
        for frame_id, ext, size, created_at in removable:
            beyond_window = cutoff is not None and (created_at, frame_id) <= tuple(cutoff)
            if not beyond_window and total <= self.max_bytes:
                break  # every later row is newer still, and the total only shrinks
            doomed.append((frame_id, ext))
            total -= size
        removable.close()
        self._db.executemany("DELETE FROM frames WHERE id = ?", [(frame_id,) for frame_id, _ in doomed])
        return doomed

    def _unlink(self, doomed: list[tuple[str, str]]) -> None:
        """Remove evicted frame files (after their rows are gone: a crash in between leaves orphans, removed at
        the next start, never a row without its file)."""
        for frame_id, ext in doomed:
            (self.frames_dir / f"{frame_id}{ext}").unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Frame files without a row (a crash between file and row) and temporary files of unfinished writes."""
        known = {f"{i}{e}" for i, e in self._db.execute("SELECT id, ext FROM frames")}
        for path in self.frames_dir.iterdir():
            if path.name.startswith(TMP_PREFIX) or path.name not in known:
                path.unlink(missing_ok=True)

    # -- operators ---------------------------------------------------------------------------------
    def flag(self, frame_id: str) -> dict | None:
        """Keep a recent frame because an operator flagged it; its row, or None when it is no longer stored."""
        self.flush()
        with self._lock:
            row = self._row(frame_id)
            if row is None:
                return None
            reasons = row["reasons"] if "flagged" in row["reasons"] else [*row["reasons"], "flagged"]
            self._db.execute(
                "UPDATE frames SET kept = 1, flagged = 1, reasons = ? WHERE id = ?", (json.dumps(reasons), frame_id)
            )
            return self._row(frame_id)

    def keep_upload(self, data: bytes, *, model_version: str | None, prediction: dict | None = None) -> dict:
        """Keep a frame an operator uploaded with feedback; its row."""
        import hashlib

        frame_id = uuid.uuid4().hex
        sha = hashlib.sha256(data).hexdigest()
        ext = image_extension(data)
        write_atomic(self.frames_dir / f"{frame_id}{ext}", data)
        prediction = prediction or {"boxes": [], "image": {"sha256": sha}}
        image = prediction.setdefault("image", {})
        image.setdefault("sha256", sha)
        with self._lock:
            self._db.execute(
                "INSERT INTO frames (id, sha256, ext, bytes, created_at, model_version, width, height, prediction,"
                " reasons, kept, flagged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 1)",
                (
                    frame_id,
                    sha,
                    ext,
                    len(data),
                    now_iso(),
                    model_version,
                    image.get("width"),
                    image.get("height"),
                    json.dumps(prediction),
                    '["uploaded"]',
                ),
            )
            return self._row(frame_id)

    def recent(self, limit: int = 20) -> list[dict]:
        """The newest frames, newest first."""
        self.flush(timeout=1.0)
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute("SELECT id FROM frames ORDER BY created_at DESC, id DESC LIMIT ?", (limit,))
            ]
            return [self._row(i) for i in ids]

    def get(self, frame_id: str) -> dict | None:
        with self._lock:
            return self._row(frame_id)

    def frame_path(self, frame_id: str) -> Path | None:
        row = self.get(frame_id)
        if row is None:
            return None
        path = self.frames_dir / f"{frame_id}{row['ext']}"
        return path if path.is_file() else None

    def _row(self, frame_id: str) -> dict | None:
        cursor = self._db.execute("SELECT * FROM frames WHERE id = ?", (frame_id,))
        values = cursor.fetchone()
        if values is None:
            return None
        row = dict(zip([c[0] for c in cursor.description], values, strict=True))
        row["prediction"] = json.loads(row["prediction"])
        row["reasons"] = json.loads(row["reasons"])
        row["kept"], row["flagged"] = bool(row["kept"]), bool(row["flagged"])
        return row

    # -- sync --------------------------------------------------------------------------------------
    def next_batch(self, device: str, limit: int = 200) -> FrameBatch | None:
        """The batch to upload next: an unfinished one (same name, same frames), else a new one of kept frames."""
        with self._lock:
            open_batch = self._db.execute(
                "SELECT batch FROM frames WHERE batch IS NOT NULL AND synced_at IS NULL ORDER BY created_at LIMIT 1"
            ).fetchone()
            if open_batch is None:
                ids = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT id FROM frames WHERE kept = 1 AND synced_at IS NULL AND batch IS NULL"
                        " ORDER BY created_at, id LIMIT ?",
                        (limit,),
                    )
                ]
                if not ids:
                    return None
                first = self._row(ids[0])["created_at"]
                stamp = first.replace("-", "").replace(":", "").replace(".", "")[:15]
                name = f"edge-{device}-{stamp}-{ids[0][:8]}"
                with self._transaction():  # the batch's membership is fixed in one transaction
                    self._db.executemany("UPDATE frames SET batch = ? WHERE id = ?", [(name, i) for i in ids])
                return FrameBatch(name, tuple(ids))
            name = open_batch[0]
            ids = [
                r[0] for r in self._db.execute("SELECT id FROM frames WHERE batch = ? ORDER BY created_at, id", (name,))
            ]
            return FrameBatch(name, tuple(ids))

    def mark_batch_synced(self, name: str) -> None:
        with self._lock, self._transaction():
            self._db.execute("UPDATE frames SET synced_at = ? WHERE batch = ?", (now_iso(), name))
            doomed = self._evict_rows()
        self._unlink(doomed)

    def closed_prediction_logs(self, now: datetime | None = None) -> list[Path]:
        """Hourly prediction logs of past hours that are not synced yet, oldest first."""
        current = (now or datetime.now(UTC)).isoformat()[:13]
        with self._lock:
            done = {r[0] for r in self._db.execute("SELECT name FROM prediction_logs")}
        pending = []
        for path in sorted(self.logs_dir.glob("*.jsonl")):
            if path.name in done:  # synced, but the process died before it could delete the file
                path.unlink(missing_ok=True)
            elif path.stem < current:
                pending.append(path)
        return pending

    def mark_log_synced(self, path: Path) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO prediction_logs (name, synced_at) VALUES (?, ?)", (path.name, now_iso())
            )
        path.unlink(missing_ok=True)

    def counts(self) -> dict[str, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(kept), 0), COALESCE(SUM(flagged), 0),"
                " COALESCE(SUM(kept = 1 AND synced_at IS NULL), 0), COALESCE(SUM(bytes), 0) FROM frames"
            ).fetchone()
        return {
            "frames": row[0],
            "kept": row[1],
            "flagged": row[2],
            "unsynced": row[3],
            "bytes": row[4],
            "dropped": self.dropped,
        }


def read_prediction_log(path: Path) -> list[dict]:
    """The complete lines of a prediction log (a torn last line from a killed writer is skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
