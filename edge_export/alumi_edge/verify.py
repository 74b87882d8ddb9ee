"""``alumi-edge verify``: re-hash the installed version against its signed manifest.

A pull verified the files once; an SD card that corrupts a block, or a hand that edits a file, changes them
afterwards. :func:`verify_installed` checks the manifest's signature against the pinned keys (when the device
has them: ``--pubkey`` / ``ALUMI_EDGE_PUBKEY``) and the size and sha256 of every file it lists. ``serve`` runs it
before loading a release (``/readyz`` then answers 503 naming the file), ``pull`` before answering "up-to-date".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alumi_edge.device_home import DeviceHome, HomeError
from alumi_edge.manifest import MANIFEST_NAME, ReleaseError, parse_manifest, verify_file, verify_release_dir


class InstalledVersionError(ReleaseError):
    """The installed version's files differ from its signed manifest."""


@dataclass(frozen=True)
class Verified:
    version: str
    files: int
    bytes: int
    signature_checked: bool

    def to_dict(self) -> dict:
        return {
            "status": "ok",
            "version": self.version,
            "files": self.files,
            "bytes": self.bytes,
            "signature_checked": self.signature_checked,
        }


def verify_installed(home: str | Path, public_key_pem: bytes | str | None = None, version: str | None = None):
    """Verify ``version`` (default: current) under the device home; InstalledVersionError names what differs."""
    device = DeviceHome(home)
    version = version or device.current_version()
    if version is None:
        raise HomeError(f"{device.root}: no release installed (run 'alumi-edge pull' first)")
    folder = device.version_dir(version)
    try:
        if public_key_pem:
            manifest = verify_release_dir(folder, public_key_pem)
        else:
            manifest = parse_manifest((folder / MANIFEST_NAME).read_bytes())
            for entry in manifest.files:
                verify_file(folder / entry.path, entry)
    except FileNotFoundError as exc:
        raise InstalledVersionError(f"installed version {version}: {exc.filename} is missing") from exc
    except ReleaseError as exc:
        raise InstalledVersionError(f"installed version {version} does not verify: {exc}") from exc
    return Verified(version, len(manifest.files), sum(f.size for f in manifest.files), bool(public_key_pem))
