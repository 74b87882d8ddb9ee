"""A content-addressed cache on local disk: the images a gold dataset version needs, fetched once per machine.

Layout under ``root`` (``ALUMI_CACHE_DIR``, default ``$ALUMI_HOME/cache``)::

    objects/ab/<sha256>          one file per image, named by the sha256 of its bytes
    datasets/<dataset hash>/     a staged YOLO folder of a gold version: hard links to objects/, label files
    leases/<dataset hash>.<id>   one file per process staging or reading a dataset folder, locked while it does

A fetched object is checked against its sha256 and written under a temporary name, then linked into place
(``lib.files.write_if_absent``): a killed fetch leaves no file under an object's name, only a ``.tmp-`` file
that ``prune`` removes. Objects and dataset folders are evicted least recently used first once the cache
holds more than ``max_bytes`` (the dataset being used now is never evicted, nor an object it links).

Several processes (pods sharing one volume on Kubernetes) may use one cache at once. Every file is created
whole under a temporary name, then linked (or renamed) into place, so two processes staging the same dataset
both end with the same complete folder. A process staging or reading a dataset folder holds a lease
(``lease``): an advisory lock on a file of its own under ``leases/``, released by the kernel (or the NFS
server) if the process dies. ``prune`` never evicts a leased folder, nor an unlinked object used since the
oldest live lease began (fetched for a folder not yet linked); leases are taken under the cache's lock, so a
prune sees all of them. A file a process has already linked keeps its bytes whatever a prune removes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alumi_pipelines.lib.files import TMP_PREFIX, sha256_hex, write_if_absent
from alumi_pipelines.lib.progress import Progress

USED_STAMP = ".used"  # touched whenever a dataset folder is staged or reused: its last use, for eviction
STALE_TMP_S = 3600.0  # temporary files older than this belong to a killed fetch
LEASES = "leases"

_logger = logging.getLogger(__name__)
_process_lock = threading.Lock()  # POSIX locks (flock on NFS) do not exclude threads of one process
_held_leases: set[Path] = set()  # this process's leases: never opened by its own prune (closing would free them)


class CacheError(RuntimeError):
    """An object whose bytes do not match its sha256 (a corrupt or truncated transfer)."""


@dataclass
class FetchStats:
    wanted: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    evicted: list[str] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return self.wanted - self.fetched


class ContentCache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = int(max_bytes)

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    def object_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise CacheError(f"{sha256!r} is not a sha256")
        return self.objects / sha256[:2] / sha256

    def dataset_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise CacheError(f"dataset name {name!r}: must be a plain folder name")
        return self.root / "datasets" / name

    def touch(self, path: Path) -> None:
        """Mark an object or a dataset folder as used now (its mtime is its last use)."""
        target = path / USED_STAMP if path.is_dir() else path
        if path.is_dir():
            target.touch()
        else:
            os.utime(target)

    # -- bytes a step already holds ----------------------------------------------------------
    def put(self, sha256: str, data: bytes) -> bool:
        """Keep ``data`` as object ``sha256`` (checked); returns whether it was new."""
        if sha256_hex(data) != sha256:
            raise CacheError(f"bytes of sha256 {sha256_hex(data)} offered as {sha256}")
        path = self.object_path(sha256)
        return False if path.exists() else write_if_absent(path, data, fsync=False)

    def get(self, sha256: str) -> bytes | None:
        """Object ``sha256``'s bytes (marked used), or None when the cache does not hold it."""
        path = self.object_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return data

    def discard(self, sha256: str) -> None:
        self.object_path(sha256).unlink(missing_ok=True)

    # -- fetching ----------------------------------------------------------------------------
    def fetch(
        self,
        wanted: dict[str, str],
        read: Callable[[str], bytes],
        map_fn: Callable[[Callable[[str], None], list[str]], object] = lambda fn, xs: [fn(x) for x in xs],
        progress: Progress | None = None,
    ) -> FetchStats:
        """Make every object of ``wanted`` ({sha256: source key}) present; only missing ones are read (through
        ``map_fn``, e.g. the lake's bounded pool), each checked against its sha256 before it gets its name.
        ``progress`` counts the objects read (its total: how many were missing)."""
        stats = FetchStats(wanted=len(wanted))
        missing = []
        with self._lock():  # marked used with no prune in between: under a lease, no prune evicts them after
            for sha in wanted:
                try:
                    os.utime(self.object_path(sha))
                except FileNotFoundError:
                    missing.append(sha)
        sizes: list[int] = []

        def one(sha: str) -> None:
            data = read(wanted[sha])
            actual = sha256_hex(data)
            if actual != sha:
                raise CacheError(
                    f"{wanted[sha]}: the bytes read have sha256 {actual}, not {sha} as the dataset manifest says "
                    "(a truncated transfer, or the object changed in the lake)"
                )
            write_if_absent(self.object_path(sha), data, fsync=False)
            sizes.append(len(data))
            if progress is not None:
                progress.advance(1, len(data))

        if progress is not None:
            progress.total = len(missing)
        map_fn(one, missing)
        if progress is not None and missing:
            progress.finish()
        stats.fetched, stats.fetched_bytes = len(sizes), sum(sizes)
        return stats

    # -- leases ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, name: str) -> Iterator[Path]:
        """Hold dataset folder ``name`` while staging or reading it: no prune, by any process, evicts it (nor an
        object used since the lease began). Yields the folder's path."""
        import fcntl

        folder = self.dataset_dir(name)
        with self._lock():  # a prune in progress finishes first; the next one sees this lease
            path = self.root / LEASES / f"{name}.{os.getpid()}-{uuid.uuid4().hex[:12]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "w")
            fcntl.flock(fh, fcntl.LOCK_EX)
            _held_leases.add(path)
        try:
            yield folder
        finally:
            _held_leases.discard(path)
            path.unlink(missing_ok=True)
            fh.close()

    def _live_leases(self) -> dict[str, float]:
        """Dataset names leased by a live process → the earliest start of their leases; a dead process's lease
        file (its lock released) is removed. Call under ``_lock``."""
        import fcntl

        live: dict[str, float] = {}
        folder = self.root / LEASES
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.startswith(TMP_PREFIX):
                continue
            try:
                started = path.stat().st_mtime
            except FileNotFoundError:
                continue
            held = path in _held_leases
            if not held:
                with open(path, "a") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        held = True
                    if not held:
                        path.unlink(missing_ok=True)
            if held:
                name = path.name.rsplit(".", 1)[0]
                live[name] = min(started, live.get(name, started))
        return live

    # -- size bound --------------------------------------------------------------------------
    def _files(self, folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = Path(dirpath) / name
                try:
                    yield path, path.lstat()
                except FileNotFoundError:
                    continue

    def size(self) -> int:
        """Bytes the cache holds: objects, plus dataset files that are no link to an object (labels, lists)."""
        return sum(st.st_size for _, st in self._usage())

    def _usage(self) -> Iterator[tuple[Path, os.stat_result]]:
        yield from self._files(self.objects)
        yield from ((p, st) for p, st in self._files(self.root / "datasets") if st.st_nlink == 1)

    def prune(self, keep: Iterable[str] = ()) -> list[str]:
        """Evict least recently used dataset folders (except ``keep`` and leased ones), then unlinked objects not
        used since the oldest live lease began, until the cache holds at most ``max_bytes``; stale temporary files
        and dead processes' leases go first. Returns what was removed."""
        keep = set(keep)
        removed: list[str] = []
        with self._lock():
            leases = self._live_leases()
            keep |= set(leases)
            in_use_since = min(leases.values(), default=float("inf"))
            now = time.time()
            for path, st in list(self._files(self.root)):
                if path.name.startswith(TMP_PREFIX) and now - st.st_mtime > STALE_TMP_S:
                    path.unlink(missing_ok=True)
                    removed.append(str(path.relative_to(self.root)))
            total = self.size()
            if total <= self.max_bytes:
                return removed
            datasets = self.root / "datasets"
            folders = sorted(
                (d for d in (datasets.iterdir() if datasets.is_dir() else []) if d.is_dir() and d.name not in keep),
                key=_last_used,
            )
            for folder in folders:
                if total <= self.max_bytes:
                    break
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(f"datasets/{folder.name}")
                total = self.size()
            unlinked = sorted(
                ((p, st) for p, st in self._files(self.objects) if st.st_nlink == 1 and st.st_mtime < in_use_since),
                key=lambda x: x[1].st_mtime,
            )
            for path, st in unlinked:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                removed.append(f"objects/{path.name}")
                total -= st.st_size
        return removed

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with _process_lock, open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _last_used(folder: Path) -> float:
    stamp = folder / USED_STAMP
    return stamp.stat().st_mtime if stamp.exists() else folder.stat().st_mtime


NO_LINK_ERRNOS = frozenset(
    {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
)  # another filesystem, or one without (or refusing) hard links: SMB shares, some FUSE mounts
_copy_reported: set[tuple[int, int, object]] = set()  # (source filesystem, target filesystem, log) said once


def link_or_copy(source: Path, target: Path, log: Callable[[str], object] | None = None) -> None:
    """``target`` as a hard link to ``source``, or a copy where the filesystem refuses the link (across
    filesystems, or on one without hard links), said once per pair of filesystems and ``log`` (default: this
    module's logger). An existing target is kept."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return
    except FileExistsError:
        return
    except OSError as exc:
        if exc.errno not in NO_LINK_ERRNOS:
            raise
        reason = exc
    said = (os.stat(source).st_dev, os.stat(target.parent).st_dev, log)
    if said not in _copy_reported:
        _copy_reported.add(said)
        code = errno.errorcode.get(reason.errno, str(reason.errno))
        (log or _logger.warning)(
            f"cache: hard links from {source.parent} to {target.parent} are refused ({code}: {reason.strerror}); "
            "copying files instead, so each staged image takes its own space (an NFS volume, or the cache and a "
            "local lake on one filesystem, keep links)"
        )
    write_if_absent(target, source.read_bytes(), fsync=False)
