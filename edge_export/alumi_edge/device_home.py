"""The device's release folder: ``versions/<version>/``, and ``current`` / ``previous`` symlinks.

Switching replaces a symlink with ``os.replace`` (atomic on POSIX), so a reader sees either the old
or the new version, never a mix. Downloads happen in ``versions/.partial-<version>`` and are renamed
into place only after every check passed; a pull killed midway leaves only that partial folder,
which the next pull removes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from alumi_edge.files import fsync_dir, write_atomic
from alumi_edge.manifest import MANIFEST_NAME, Manifest, check_version, parse_manifest

PARTIAL_PREFIX = ".partial-"


class HomeError(Exception):
    """The device folder is not in a state that allows the operation."""


class DeviceHome:
    """Layout and atomic switching of installed releases under one folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"
        self.rejected_file = self.root / "rolled_back.json"
        self.channels_dir = self.root / "channels"  # per channel: the newest pointer accepted, and the last check

    def ensure(self) -> DeviceHome:
        """Create the folders."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        return self

    @contextmanager
    def lock(self):
        """Exclusive lock so two pulls (or a pull and a rollback) never interleave."""
        self.ensure()
        with (self.root / ".lock").open("a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------------------
    def _link_version(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        name = Path(target).name
        return name if (self.versions_dir / name).is_dir() else None

    def current_version(self) -> str | None:
        """Version ``current`` points to, or None before the first install."""
        return self._link_version(self.current_link)

    def previous_version(self) -> str | None:
        """Version ``previous`` points to, or None."""
        return self._link_version(self.previous_link)

    def version_dir(self, version: str) -> Path:
        return self.versions_dir / check_version(version)

    def partial_dir(self, version: str) -> Path:
        return self.versions_dir / f"{PARTIAL_PREFIX}{check_version(version)}"

    def installed_versions(self) -> list[str]:
        """Fully installed versions, oldest first by install time."""
        if not self.versions_dir.is_dir():
            return []
        dirs = [p for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime)]

    def manifest(self, version: str | None = None) -> Manifest:
        """Manifest of an installed version (default: current)."""
        version = version or self.current_version()
        if version is None:
            raise HomeError(f"{self.root}: no release installed (run 'alumi-edge pull' first)")
        return parse_manifest((self.version_dir(version) / MANIFEST_NAME).read_bytes())

    def model_path(self, version: str | None = None, role: str = "model") -> Path:
        """Path of the model file of a version (default: current)."""
        version = version or self.current_version()
        manifest = self.manifest(version)
        entry = manifest.file_for_role(role)
        if entry is None:
            raise HomeError(f"release {manifest.version} has no file with role {role!r}")
        return self.version_dir(manifest.version) / entry.path

    # -- rolled-back versions are not re-installed by a routine pull ---------------------------
    def rolled_back_versions(self) -> set[str]:
        try:
            return set(json.loads(self.rejected_file.read_text()))
        except (FileNotFoundError, ValueError):
            return set()

    def _write_rolled_back(self, versions: set[str]) -> None:
        write_atomic(self.rejected_file, json.dumps(sorted(versions)).encode())

    def forget_rollback(self, version: str) -> None:
        versions = self.rolled_back_versions()
        if version in versions:
            versions.discard(version)
            self._write_rolled_back(versions)

    # -- channel pointers: the newest one accepted (its sequence is the floor) and the last check -----
    def accepted_pointer(self, channel: str):
        """The newest channel pointer this device accepted for ``channel`` (a ChannelPointer), or None."""
        from alumi_edge.channel import ChannelError, parse_pointer

        path = self.channels_dir / f"{check_version(channel, 'channel')}.json"
        try:
            return parse_pointer(path.read_bytes(), str(path), channel)[1]
        except FileNotFoundError:
            return None
        except ChannelError as exc:
            raise HomeError(f"{path}: the stored channel pointer is damaged ({exc}); restore it or remove it") from exc

    def accept_pointer(self, channel: str, raw: bytes) -> None:
        """Keep ``raw`` as the newest accepted pointer of ``channel``: later pointers must not be older."""
        self.channels_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.channels_dir / f"{check_version(channel, 'channel')}.json", raw)

    def record_check(self, channel: str, status: dict) -> None:
        """What the last pull found in ``channel``'s pointer (accepted or refused, and why), for ``info``."""
        self.channels_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.channels_dir / f"{check_version(channel, 'channel')}.last-check.json", json.dumps(status).encode()
        )

    def last_check(self, channel: str) -> dict | None:
        try:
            return json.loads((self.channels_dir / f"{check_version(channel, 'channel')}.last-check.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def channels(self) -> list[str]:
        """Channels this device has checked."""
        if not self.channels_dir.is_dir():
            return []
        names = set()
        for path in self.channels_dir.glob("*.json"):
            if not path.name.startswith("."):
                names.add(path.name.removesuffix(".json").removesuffix(".last-check"))
        return sorted(names)

    # -- changing ------------------------------------------------------------------------------
    def _point(self, link: Path, version: str) -> None:
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(Path("versions") / version, tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def switch(self, version: str) -> str | None:
        """Make ``version`` current and the old current previous; returns the old current."""
        if not self.version_dir(version).is_dir():
            raise HomeError(f"version {version} is not installed under {self.versions_dir}")
        old = self.current_version()
        if old == version:
            return old
        if old is not None:
            self._point(self.previous_link, old)
        self._point(self.current_link, version)
        return old

    def rollback(self) -> tuple[str, str]:
        """Swap current and previous; returns (from_version, to_version)."""
        current, previous = self.current_version(), self.previous_version()
        if previous is None or current is None:
            raise HomeError(f"{self.root}: no previous version to roll back to")
        self._point(self.current_link, previous)
        self._point(self.previous_link, current)
        self._write_rolled_back(self.rolled_back_versions() | {current})
        return current, previous

    def clean_partials(self) -> list[str]:
        """Remove folders left by interrupted pulls; returns their names."""
        removed = []
        if self.versions_dir.is_dir():
            for path in self.versions_dir.iterdir():
                if path.name.startswith(PARTIAL_PREFIX):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
        return removed

    def prune(self, keep: int = 3) -> list[str]:
        """Delete the oldest installed versions beyond ``keep``, never current or previous."""
        protected = {self.current_version(), self.previous_version()}
        installed = self.installed_versions()
        removable = [v for v in installed if v not in protected]
        excess = max(0, len(installed) - max(keep, 2))
        removed = removable[:excess]
        for version in removed:
            shutil.rmtree(self.version_dir(version), ignore_errors=True)
        return removed
