"""Operator feedback, queued durably in SQLite (WAL, synchronous=FULL) before the API answers.

Each record gets a ``feedback_id`` (its idempotency key downstream). Sync takes records in batches;
a batch's membership and file name are fixed in the database before anything is uploaded, so a
retry after an outage or a crash re-sends the same records under the same name and never mixes
them into another file.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

KINDS = ("false_positive", "missed_defect", "corrected_box")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    feedback_id TEXT NOT NULL UNIQUE,
    client_key TEXT UNIQUE,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL,
    batch TEXT,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS feedback_pending ON feedback (sent_at, batch, seq);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def device_slug(device_id: str) -> str:
    """Device id made safe for file names."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", device_id).strip("-.")
    return slug or "device"


@dataclass(frozen=True)
class Queued:
    """Result of adding feedback: its id, its sequence number and whether it was already queued."""

    feedback_id: str
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class Batch:
    """Records assigned to one sync file."""

    name: str
    seqs: tuple[int, ...]
    records: tuple[dict, ...]

    def jsonl(self) -> bytes:
        """The file content: one JSON object per line, keys sorted (same batch → same bytes)."""
        return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in self.records).encode("utf-8")


class FeedbackQueue:
    """SQLite-backed queue shared by the API (writes) and sync (reads, marks sent); thread-safe."""

    def __init__(self, path: str | Path, device_id: str):
        self.path = Path(path)
        self.device_id = device_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: dict, client_key: str | None = None) -> Queued:
        """Store a record durably (committed and fsynced when this returns); same client key → same id."""
        with self._lock:
            feedback_id = str(uuid.uuid4())
            created_at = _now()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if client_key:
                    row = self._db.execute(
                        "SELECT feedback_id, seq FROM feedback WHERE client_key = ?", (client_key,)
                    ).fetchone()
                    if row:
                        self._db.execute("COMMIT")
                        return Queued(row[0], row[1], True)
                cursor = self._db.execute(
                    "INSERT INTO feedback (feedback_id, client_key, created_at, record) VALUES (?, ?, ?, '{}')",
                    (feedback_id, client_key or None, created_at),
                )
                seq = cursor.lastrowid
                full = {
                    **record,
                    "feedback_id": feedback_id,
                    "seq": seq,
                    "device_id": self.device_id,
                    "created_at": created_at,
                }
                self._db.execute(
                    "UPDATE feedback SET record = ? WHERE seq = ?", (json.dumps(full, sort_keys=True), seq)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return Queued(feedback_id, seq, False)

    def get(self, feedback_id: str) -> dict | None:
        """The stored record with its sync state, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT record, batch, sent_at FROM feedback WHERE feedback_id = ?", (feedback_id,)
            ).fetchone()
        if row is None:
            return None
        return {**json.loads(row[0]), "sync": {"batch": row[1], "sent_at": row[2]}}

    def pending_count(self) -> int:
        """Records not yet confirmed sent."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM feedback WHERE sent_at IS NULL").fetchone()[0]

    def total_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]

    def next_batch(self, max_records: int = 500) -> Batch | None:
        """The oldest unsent batch; assigns the next unsent records to a new batch when none is open."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT batch FROM feedback WHERE sent_at IS NULL AND batch IS NOT NULL ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is None:
                    seqs = [
                        r[0]
                        for r in self._db.execute(
                            "SELECT seq FROM feedback WHERE sent_at IS NULL AND batch IS NULL ORDER BY seq LIMIT ?",
                            (max_records,),
                        )
                    ]
                    if not seqs:
                        self._db.execute("COMMIT")
                        return None
                    name = f"edge-{device_slug(self.device_id)}-{seqs[0]}-{seqs[-1]}.jsonl"
                    self._db.executemany("UPDATE feedback SET batch = ? WHERE seq = ?", [(name, s) for s in seqs])
                else:
                    name = row[0]
                rows = self._db.execute(
                    "SELECT seq, record FROM feedback WHERE batch = ? ORDER BY seq", (name,)
                ).fetchall()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return Batch(name=name, seqs=tuple(r[0] for r in rows), records=tuple(json.loads(r[1]) for r in rows))

    def mark_sent(self, batch: Batch) -> None:
        """Record that the batch's file is safely written at the target."""
        with self._lock:
            self._db.execute(
                "UPDATE feedback SET sent_at = ? WHERE batch = ? AND sent_at IS NULL", (_now(), batch.name)
            )
