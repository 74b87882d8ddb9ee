"""``alumi-edge sync``: push queued feedback to the lake's ``corrections/incoming/`` as JSONL files.

A batch is uploaded under its fixed name (``edge-<device>-<first seq>-<last seq>.jsonl``) with one
atomic write, and marked sent only afterwards: an outage leaves it queued, and a retry rewrites the
same name with the same bytes, so downstream sees every record exactly once. Targets sit behind
:class:`FeedbackTarget`; a local (or mounted) folder and an HTTP PUT target (Azure Blob SAS URL) exist.
"""

from __future__ import annotations

import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alumi_edge.feedback import FeedbackQueue
from alumi_edge.files import write_atomic

INCOMING_PREFIX = "corrections/incoming"


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

        path = f"{self._path}/{urllib.parse.quote(relpath)}"
        url = urllib.parse.urlunsplit((self._scheme, self._netloc, path, self._query, ""))
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/x-ndjson"}
        try:
            response = httpx.put(url, content=data, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise TargetUnavailable(f"PUT {self.describe()}/{relpath} failed: {exc}") from exc
        if response.status_code >= 300:
            raise TargetUnavailable(f"PUT {self.describe()}/{relpath} answered HTTP {response.status_code}")


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
        data = batch.jsonl()
        for attempt in range(1, attempts + 1):
            try:
                target.put_atomic(relpath, data)
                break
            except TargetUnavailable as exc:
                log(f"attempt {attempt}/{attempts} to write {relpath} failed: {exc}")
                if attempt == attempts:
                    result.error = str(exc)
                    result.pending = queue.pending_count()
                    return result
                sleep(min(backoff_s * 2 ** (attempt - 1), max_backoff_s))
        queue.mark_sent(batch)
        result.files.append(relpath)
        result.records += len(batch.records)
        log(f"wrote {len(batch.records)} records to {target.describe()}/{relpath}")
    result.pending = queue.pending_count()
    return result
