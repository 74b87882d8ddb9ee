"""A content-addressed cache on local disk: the images a gold dataset version needs, fetched once per machine.

Layout under ``root`` (``ALUMI_CACHE_DIR``, default ``$ALUMI_HOME/cache``)::

    objects/ab/<sha256>          one file per image, named by the sha256 of its bytes
    datasets/<dataset hash>/     a staged YOLO folder of a gold version: hard links to objects/, label files

A fetched object is checked against its sha256 and written under a temporary name, then linked into place
(``lib.files.write_if_absent``): a killed fetch leaves no file under an object's name, only a ``.tmp-`` file
that ``prune`` removes. Objects and dataset folders are evicted least recently used first once the cache
holds more than ``max_bytes`` (the dataset being used now is never evicted, nor an object it links).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alumi_pipelines.lib.files import TMP_PREFIX, sha256_hex, write_if_absent
from alumi_pipelines.lib.progress import Progress

USED_STAMP = ".used"  # touched whenever a dataset folder is staged or reused: its last use, for eviction
STALE_TMP_S = 3600.0  # temporary files older than this belong to a killed fetch


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
        for sha in wanted:
            path = self.object_path(sha)
            if path.exists():
                self.touch(path)
            else:
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
        """Evict least recently used dataset folders (except ``keep``), then unlinked objects, until the cache
        holds at most ``max_bytes``; stale temporary files go first. Returns what was removed."""
        keep = set(keep)
        removed: list[str] = []
        with self._lock():
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
                ((p, st) for p, st in self._files(self.objects) if st.st_nlink == 1), key=lambda x: x[1].st_mtime
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
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _last_used(folder: Path) -> float:
    stamp = folder / USED_STAMP
    return stamp.stat().st_mtime if stamp.exists() else folder.stat().st_mtime


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a copy across filesystems); an existing target is kept."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        return
    except OSError:
        write_if_absent(target, source.read_bytes(), fsync=False)
