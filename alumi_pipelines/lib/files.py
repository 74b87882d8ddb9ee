"""Content hashes and crash-safe local writes, used by every stage that touches a local file."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    """The sha256 of some bytes, as 64 hex digits (an image's id, a release file's digest)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


TMP_PREFIX = ".tmp-"  # temporary files of unfinished writes; readers and listings skip them


def _write_temp(full: str, data: bytes, fsync: bool) -> str:
    """``data`` written to a fresh temporary name beside ``full`` (its folder created if needed)."""
    parent = os.path.dirname(full) or "."
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(full)}")
    try:
        fh = open(tmp, "wb")
    except FileNotFoundError:  # first write into this folder
        os.makedirs(parent, exist_ok=True)
        fh = open(tmp, "wb")
    try:
        with fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> str:
    """Write ``data`` to ``path`` under a temporary name in the same folder, then rename it into place.

    A reader sees the old file or the whole new one, never a half-written file, even if the process dies.
    The temporary name is unique per call, so threads may write the same path at once. Returns the path.
    """
    full = os.fspath(path)
    tmp = _write_temp(full, data, fsync)
    try:
        os.replace(tmp, full)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return full


def write_if_absent(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> bool:
    """Create ``path`` with ``data`` unless it exists; returns whether it wrote.

    The whole file is written under a temporary name, then hard-linked to ``path`` (a link never replaces
    a file, so two writers cannot both win and a reader never sees a partial file); a filesystem without
    hard links falls back to exists-then-rename.
    """
    full = os.fspath(path)
    if os.path.exists(full):
        return False
    tmp = _write_temp(full, data, fsync)
    try:
        os.link(tmp, full)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this filesystem
        if os.path.exists(full):
            return False
        os.replace(tmp, full)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; when the block ends, rename it into place.

    Readers see no folder, the old one or the whole new one: if the block raises (or the process dies),
    ``path`` is untouched and the temporary folder is removed (or left under a ``.tmp-`` name). An existing
    ``path`` must be an empty folder unless ``replace``; the old folder is moved aside, then deleted.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-{target.name}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if target.exists() or target.is_symlink():
            if not target.is_dir() or target.is_symlink():
                raise FileExistsError(f"{target} exists and is not a folder")
            if not replace and any(target.iterdir()):
                raise FileExistsError(f"{target} is not empty")
            old = target.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}-old-{target.name}"
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)  # put the old folder back
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
