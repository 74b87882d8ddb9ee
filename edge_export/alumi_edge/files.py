"""Crash-safe local writes on the device: the one "write a temporary file, then rename it into place".

A reader sees the old file or the whole new one, never a half-written file, even if the device loses
power. (File hashes live in :func:`alumi_edge.manifest.file_sha256`, the hash releases are checked with.)
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"  # temporary files of unfinished writes


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True, fsync_parent: bool = False) -> Path:
    """Write ``data`` to ``path`` under a temporary name in the same folder, then rename it into place.

    Creates the folder when needed. ``fsync`` flushes the file before the rename; ``fsync_parent`` also
    flushes the folder afterwards, so the rename itself survives a power cut. The temporary name is unique
    per call and is removed when the write fails. Returns the path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{target.name}")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; left over only when the write failed
    if fsync_parent:
        fsync_dir(target.parent)
    return target
