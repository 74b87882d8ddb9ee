"""The lake: every zone addressed by key under one base URI, local folder or ``abfs://``.

No other module builds lake paths. Keys are POSIX-style and relative (``raw/images/ab/abcd.jpg``);
a key that tries to leave the lake (``..``, absolute, backslashes, NUL) is refused.
Every write is atomic: local writes go to a hidden temporary name and are renamed into place; object
stores receive a single PUT, which they commit atomically. Content-addressed objects are written with
``write_if_absent`` (a create-if-absent conditional write: a hard link of the finished temporary file locally,
``If-None-Match: *`` on an object store); work on many objects goes through ``map`` (at most ``concurrency``
requests in flight).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import fsspec
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from alumi_pipelines.lib.files import TMP_PREFIX, write_atomic, write_if_absent

T = TypeVar("T")
R = TypeVar("R")

ZONES = (
    "landing",
    "raw",
    "quarantine",
    "processed",
    "corrections",
    "gold",
    "models",
    "releases",
    "reports",
    "predictions",
)


class LakeKeyError(ValueError):
    """A key that is not a safe relative path inside the lake."""


def check_key(key: str) -> str:
    """Return the normalised key, or raise naming the rule it broke."""
    if not isinstance(key, str) or not key:
        raise LakeKeyError(f"lake key {key!r}: must be a non-empty string")
    if "\x00" in key or "\\" in key:
        raise LakeKeyError(f"lake key {key!r}: must not contain NUL or backslashes")
    parts = key.split("/")
    if ":" not in parts[0] and all(part and part != "." and part != ".." for part in parts):
        return key  # already normal (the common case, checked without pathlib: lake keys are hot)
    path = PurePosixPath(key)
    if path.is_absolute() or ":" in path.parts[0]:
        raise LakeKeyError(f"lake key {key!r}: must be relative to the lake")
    if any(part in ("..", "") for part in path.parts):
        raise LakeKeyError(f"lake key {key!r}: must not contain '..'")
    return path.as_posix()


@dataclass(frozen=True)
class _Location:
    """The resolved filesystem, root and locality: looked up once per call on the per-image paths."""

    fs: Any
    root: str
    local: bool

    def path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"


@dataclass(frozen=True)
class LakeFile:
    key: str
    size: int
    mtime: float


class Lake(ConfigurableResource):
    """Reads and writes the lake's zones; local folder by default, any fsspec URI otherwise."""

    base_uri: str = Field(description="Local folder or fsspec URI (abfs://container@account.dfs.core.windows.net/lake)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options (credentials)")
    durable: bool = Field(
        default=False,
        description="fsync every local write before the rename (survives power loss, not only killed runs)",
    )
    concurrency: int = Field(
        default=16, description="storage requests in flight at once when a step reads or writes many objects"
    )

    _fs: Any = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")
    _location: Any = PrivateAttr(default=None)

    # -- addressing ---------------------------------------------------------------------------
    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            fs, root = fsspec.core.url_to_fs(self.base_uri, **self.storage_options)
            if self.is_local:
                root = os.path.abspath(root)
            self._fs, self._root = fs, root.rstrip("/")
        return self._fs, self._root

    def _locate(self) -> _Location:
        location = self._location
        if location is None:
            fs, root = self._filesystem()
            location = self._location = _Location(fs, root, self.is_local)
        return location

    @property
    def is_local(self) -> bool:
        return "://" not in self.base_uri or self.base_uri.startswith("file://")

    def path(self, key: str) -> str:
        """Full path of a key in the underlying filesystem."""
        return self._locate().path(key)

    def uri(self, key: str) -> str:
        """A URI a user can open (a file:// URI locally, the fsspec URI remotely)."""
        full = self.path(key)
        return Path(full).as_uri() if self.is_local else f"{self.base_uri.split('://')[0]}://{full}"

    def local_path(self, key: str) -> Path | None:
        """The key as a local path when the lake is local, else None (stage it instead)."""
        return Path(self.path(key)) if self.is_local else None

    def share_url(self, key: str, hours: int) -> str | None:
        """An https URL that reads ``key`` for ``hours`` with no other credential; None for a lake on local disk
        (a local tool reads the file itself)."""
        return None

    # -- many objects at once -------------------------------------------------------------------
    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]`` with at most ``concurrency`` calls in flight, in order. The first error is
        raised once the calls already running have finished; calls not yet started then never start."""
        items = list(items)
        if len(items) <= 1 or self.concurrency <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    def gather(self, *calls: Callable[[], Any]) -> list[Any]:
        """A step's few independent requests at once (one round trip on an object store, not one each): the
        calls' results in order, errors as ``map``."""
        return self.map(lambda call: call(), calls)

    @contextlib.contextmanager
    def background(self) -> Iterator[Callable[..., None]]:
        """``submit(fn, *args)`` runs ``fn(*args)`` on a pool of ``concurrency`` threads, at most twice that many
        calls queued (a caller producing bytes faster than storage takes them waits); the block ends when every
        call has finished, raising the first error."""
        slots = threading.BoundedSemaphore(max(1, self.concurrency) * 2)
        futures: list[Future] = []
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:

            def submit(fn: Callable[..., Any], *args: Any) -> None:
                slots.acquire()
                future = pool.submit(fn, *args)
                future.add_done_callback(lambda _: slots.release())
                futures.append(future)

            yield submit
        for future in futures:
            future.result()

    def io_workers(self, cpu_workers: int) -> int:
        """Threads for per-image work that also reads or writes the lake: the CPU's share locally, enough to
        keep ``concurrency`` requests in flight on an object store (each waits on the network, not the CPU)."""
        cpu = cpu_workers or os.cpu_count() or 1
        return cpu if self.is_local else max(cpu, self.concurrency)

    def io_chunk(self) -> int:
        """Items per task in a thread pool's per-image work: batched locally (sub-millisecond work), one at a time
        on an object store (each waits on a request: batching would keep fewer requests in flight)."""
        return 16 if self.is_local else 1

    def absent_filter(self, prefix: str) -> Callable[[str], bool]:
        """``may_be_absent(key)`` for keys under ``prefix``: on an object store the prefix is listed once (a
        key listed now is skipped: no request); locally every key may be absent (the conditional write is
        the check, and costs no request)."""
        if self.is_local:
            return lambda key: True
        present = {f.key for f in self.list_files(prefix)}
        return lambda key: key not in present

    # -- reading ------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        location = self._locate()
        full = location.path(key)
        return os.path.exists(full) if location.local else location.fs.exists(full)

    def read_bytes(self, key: str) -> bytes:
        location = self._locate()
        full = location.path(key)
        try:
            if location.local:  # unbuffered plain open: fsspec's local layer costs more than a small image
                with open(full, "rb", buffering=0) as fh:
                    return fh.readall()
            return location.fs.cat_file(full)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"lake key {key!r} does not exist ({self.uri(key)})") from exc

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_table(self, key: str):
        """A Parquet table as a polars DataFrame."""
        import polars as pl

        return pl.read_parquet(io.BytesIO(self.read_bytes(key)))

    def read_tables(self, keys: list[str]):
        """Several Parquet tables (read at once) concatenated (diagonally: missing columns become null)."""
        import polars as pl

        frames = self.map(self.read_table, keys)
        return pl.concat(frames, how="diagonal_relaxed") if frames else None

    def list_files(self, prefix: str) -> list[LakeFile]:
        """Every file under a prefix (recursively), sorted by key; temporary files are skipped."""
        fs, root = self._filesystem()
        base = self.path(prefix)
        if not fs.exists(base):
            return []
        found = fs.find(base, detail=True, withdirs=False)
        out = []
        for full, info in found.items():
            rel = full[len(root) + 1 :] if full.startswith(root) else full
            name = rel.rsplit("/", 1)[-1]
            if name.startswith(TMP_PREFIX):
                continue
            mtime = info.get("mtime") or info.get("last_modified") or 0
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            out.append(LakeFile(key=rel, size=int(info.get("size") or 0), mtime=float(mtime)))
        return sorted(out, key=lambda f: f.key)

    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the folders directly under a prefix, sorted."""
        fs, _ = self._filesystem()
        base = self.path(prefix)
        if not fs.exists(base):
            return []
        names = []
        for entry in fs.ls(base, detail=True):
            if entry["type"] == "directory":
                names.append(entry["name"].rstrip("/").rsplit("/", 1)[-1])
        return sorted(names)

    # -- writing (atomic) ---------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Write a whole object atomically; returns its key."""
        location = self._locate()
        full = location.path(key)
        if location.local:
            write_atomic(full, data, fsync=self.durable)
        else:
            location.fs.pipe_file(full, data)
        return key

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_table(self, key: str, df) -> str:
        """Write a polars DataFrame as Parquet (zstd), atomically and byte-for-byte reproducibly."""
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd", statistics=True)
        return self.write_bytes(key, buf.getvalue())

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists (create-if-absent, atomic); returns whether it wrote.

        For content-addressed objects: an existing object already holds these bytes. Locally the finished
        temporary file is hard-linked to the key (``lib.files.write_if_absent``).
        """
        location = self._locate()
        full = location.path(key)
        if not location.local:
            try:
                location.fs.pipe_file(full, data, mode="create")  # fsspec: create-if-absent
            except FileExistsError:
                return False
            return True
        return write_if_absent(full, data, fsync=self.durable)

    def put_file(self, local: str | Path, key: str) -> str:
        """Copy a local file into the lake atomically."""
        if self.is_local:
            full = self.path(key)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = os.path.join(os.path.dirname(full), f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(full)}")
            try:
                shutil.copyfile(local, tmp)
                os.replace(tmp, full)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return key
        return self.write_bytes(key, Path(local).read_bytes())

    def copy(self, src: str, dst: str) -> bool:
        """Copy an object within the lake unless ``dst`` exists; returns whether it copied.

        Locally a hard link (objects are only ever replaced by rename, never rewritten in place, so a
        shared inode cannot change under a reader); remotely a server-side copy.
        """
        location = self._locate()
        fs, source, target = location.fs, location.path(src), location.path(dst)
        if not location.local:
            if fs.exists(target):
                return False
            fs.copy(source, target)
            return True
        for attempt in (1, 2):
            try:
                os.link(source, target)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                if attempt == 2 or not os.path.exists(source):
                    raise
                os.makedirs(os.path.dirname(target), exist_ok=True)
            except OSError:  # a filesystem without hard links
                if self.exists(dst):
                    return False
                self.write_bytes(dst, self.read_bytes(src))
                return True
        return False

    def put_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Publish every file of a local folder under a prefix (each file atomically)."""
        local_dir = Path(local_dir)
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            keys.append(self.put_file(path, f"{check_key(prefix)}/{path.relative_to(local_dir).as_posix()}"))
        return keys

    def get_dir(self, prefix: str, dest: str | Path) -> Path:
        """Stage every file under a prefix into a local folder (for tools that need local files), the prefix
        listed once and up to ``concurrency`` downloads in flight."""
        dest = Path(dest)
        start = len(check_key(prefix)) + 1

        def fetch(file: LakeFile) -> None:
            target = dest / file.key[start:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(file.key))

        self.map(fetch, self.list_files(prefix))
        return dest

    def delete(self, key: str) -> None:
        fs, _ = self._filesystem()
        full = self.path(key)
        if fs.exists(full):
            fs.rm(full, recursive=True)

    def iter_bytes(self, keys: list[str]) -> Iterator[tuple[str, bytes]]:
        for key in keys:
            yield key, self.read_bytes(key)

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """Several objects read at once (up to ``concurrency`` in flight): {key: bytes}."""
        keys = list(dict.fromkeys(keys))
        return dict(zip(keys, self.map(self.read_bytes, keys)))
