"""``alumi-edge pull``: check the channel's signed pointer, fetch its release, verify it, self-test it, switch
``current`` atomically.

The pointer must be signed by a pinned key, unexpired and not older than the newest this device accepted
(:mod:`alumi_edge.channel`); the manifest it leads to must have the sha256 the pointer names. Every refusal leaves
``current`` as it was and is recorded for ``alumi-edge info``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alumi_edge.channel import ChannelError, ChannelPointer, verify_pointer
from alumi_edge.device_home import DeviceHome
from alumi_edge.files import fsync_dir
from alumi_edge.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    ChecksumError,
    Manifest,
    ManifestError,
    ReleaseError,
    ReleaseFile,
    check_version,
    load_public_keys,
    parse_manifest,
    verify_file,
    verify_release_dir,
    verify_signature,
)
from alumi_edge.selftest import run_self_test
from alumi_edge.sources import ReleaseSource, SourceError, open_source

MAX_POINTER_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass
class PullResult:
    """What a pull did: ``switched``, ``up-to-date`` or ``skipped-rolled-back``."""

    status: str
    version: str
    previous: str | None = None
    removed_partials: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    channel: dict = field(default_factory=dict)  # the accepted pointer: sequence, expiry, key id

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "version": self.version,
            "previous": self.previous,
            "removed_partials": self.removed_partials,
            "pruned": self.pruned,
            "channel": self.channel,
        }


def read_channel(
    source: ReleaseSource,
    channel: str,
    public_key_pem: bytes | str,
    newest_accepted: ChannelPointer | None = None,
    now: datetime | None = None,
) -> ChannelPointer:
    """The verified pointer of ``channels/<channel>.json`` (signature, expiry, sequence; see alumi_edge.channel)."""
    check_version(channel, "channel")
    relpath = f"channels/{channel}.json"
    data = source.read_bytes(relpath, MAX_POINTER_BYTES)
    return verify_pointer(
        data, public_key_pem, channel, where=source.describe(relpath), now=now, newest_accepted=newest_accepted
    )


def _check_manifest_digest(pointer: ChannelPointer, manifest_bytes: bytes, where: str) -> None:
    actual = hashlib.sha256(manifest_bytes).hexdigest()
    if actual != pointer.manifest_sha256:
        raise ChannelError(
            f"{where}: sha256 {actual} differs from the channel pointer's manifest_sha256 {pointer.manifest_sha256}"
        )


def download_file(source: ReleaseSource, relpath: str, dest: Path, entry: ReleaseFile) -> None:
    """Stream a file to ``dest`` checking size while reading and sha256 at the end."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as fh, source.open_chunks(relpath) as chunks:
        for chunk in chunks:
            size += len(chunk)
            if size > entry.size:
                raise ChecksumError(f"{entry.path}: larger than the manifest's {entry.size} bytes")
            digest.update(chunk)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    if size != entry.size:
        raise ChecksumError(f"{entry.path}: size {size} differs from the manifest's {entry.size}")
    if digest.hexdigest() != entry.sha256:
        raise ChecksumError(f"{entry.path}: sha256 {digest.hexdigest()} differs from the manifest's {entry.sha256}")


def _fsync_tree(folder: Path) -> None:
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(path)


def pull(
    source_uri: str,
    home: str | Path,
    public_key_pem: bytes | str,
    channel: str = "stable",
    keep: int = 3,
    force: bool = False,
    self_test: bool = True,
    log: Callable[[str], None] = lambda message: None,
    now: datetime | None = None,
) -> PullResult:
    """Install the release the channel points to; on any failure ``current`` is left as it was."""
    load_public_keys(public_key_pem)  # fail before any download when the pinned keys are unusable
    device = DeviceHome(home)
    source = open_source(source_uri)
    with device.lock():
        removed = device.clean_partials()
        if removed:
            log(f"removed partial downloads of an interrupted pull: {', '.join(removed)}")
        checked_at = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
        try:
            pointer = read_channel(source, channel, public_key_pem, device.accepted_pointer(channel), now)
        except ReleaseError as exc:
            device.record_check(channel, {"checked_at": checked_at, "status": "refused", "detail": str(exc)})
            raise
        try:
            result = _install(device, source, pointer, public_key_pem, force, self_test, log, removed)
        except ReleaseError as exc:
            device.record_check(channel, {"checked_at": checked_at, "status": "refused", "detail": str(exc)})
            raise
        device.accept_pointer(channel, pointer.raw)
        result.channel = pointer.summary(now)
        device.record_check(channel, {"checked_at": checked_at, "status": result.status, **result.channel})
        if result.status == "switched":
            result.pruned = device.prune(keep)
        return result


def _install(
    device: DeviceHome,
    source: ReleaseSource,
    pointer: ChannelPointer,
    public_key_pem: bytes | str,
    force: bool,
    self_test: bool,
    log: Callable[[str], None],
    removed: list[str],
) -> PullResult:
    version = pointer.version
    current = device.current_version()
    if version == current:
        from alumi_edge.verify import verify_installed

        verify_installed(device.root, public_key_pem, version)  # re-hash it: "up-to-date" only after a look
        _check_manifest_digest(pointer, (device.version_dir(version) / MANIFEST_NAME).read_bytes(), version)
        log(f"{version} is already current (verified)")
        return PullResult("up-to-date", version, device.previous_version(), removed)
    if version in device.rolled_back_versions() and not force:
        log(f"{version} was rolled back on this device; not installing it again without --force")
        return PullResult("skipped-rolled-back", version, current, removed)

    target = device.version_dir(version)
    if target.is_dir():
        log(f"{version} is already downloaded; re-verifying it")
        manifest = verify_release_dir(target, public_key_pem)
        _check_manifest_digest(pointer, (target / MANIFEST_NAME).read_bytes(), f"{version}/{MANIFEST_NAME}")
        if self_test:
            run_self_test(target, manifest)
    else:
        partial = device.partial_dir(version)
        partial.mkdir(parents=True)
        try:
            manifest = _download_release(source, pointer, partial, public_key_pem, log)
            if self_test:
                report = run_self_test(partial, manifest)
                log(
                    f"self-test passed: {report.matched}/{report.expected} expected boxes matched, "
                    f"{report.raw_compared} raw scores within tolerance ({', '.join(report.models)})"
                )
            _fsync_tree(partial)
            os.rename(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    previous = device.switch(version)
    device.forget_rollback(version)
    log(f"switched current to {version} (previous: {previous})")
    return PullResult("switched", version, previous, removed)


def _download_release(
    source: ReleaseSource,
    pointer: ChannelPointer,
    partial: Path,
    public_key_pem: bytes | str,
    log: Callable[[str], None],
) -> Manifest:
    version = pointer.version
    manifest_bytes = source.read_bytes(f"{version}/{MANIFEST_NAME}", MAX_MANIFEST_BYTES)
    signature = source.read_bytes(f"{version}/{SIGNATURE_NAME}", 4096)
    verify_signature(manifest_bytes, signature, public_key_pem)
    _check_manifest_digest(pointer, manifest_bytes, source.describe(f"{version}/{MANIFEST_NAME}"))
    manifest = parse_manifest(manifest_bytes)
    if manifest.version != version:
        raise ManifestError(
            f"{version}/{MANIFEST_NAME}: says version {manifest.version!r}, the channel says {version!r}"
        )
    total = sum(f.size for f in manifest.files)
    log(f"downloading {version}: {len(manifest.files)} files, {total} bytes from {source.describe(version)}")
    for entry in manifest.files:
        download_file(source, f"{version}/{entry.path}", partial / entry.path, entry)
    for entry in manifest.files:  # nothing changed on disk since download
        verify_file(partial / entry.path, entry)
    (partial / MANIFEST_NAME).write_bytes(manifest_bytes)
    (partial / SIGNATURE_NAME).write_bytes(signature)
    return manifest


__all__ = ["PullResult", "SourceError", "download_file", "pull", "read_channel"]
