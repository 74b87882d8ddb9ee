"""Content hashes and crash-safe local writes, used by every stage that touches a local file."""

from __future__ import annotations

import hashlib
import os
import uuid
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


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> str:
    """Write ``data`` to ``path`` under a temporary name in the same folder, then rename it into place.

    A reader sees the old file or the whole new one, never a half-written file, even if the process dies.
    The temporary name is unique per call, so threads may write the same path at once. Returns the path.
    """
    full = os.fspath(path)
    parent = os.path.dirname(full) or "."
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(full)}")
    try:
        try:
            fh = open(tmp, "wb")
        except FileNotFoundError:  # first write into this folder
            os.makedirs(parent, exist_ok=True)
            fh = open(tmp, "wb")
        with fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, full)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return full
