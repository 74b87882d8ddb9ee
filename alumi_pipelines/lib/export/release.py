"""Edge releases, pipeline side: manifest, Ed25519 signature, release folder, channel pointers, signing key, wheel.

A release is ``<version>/{manifest.json, manifest.sig, model.onnx, ...}`` below the lake's
``releases/`` zone; ``channels/<channel>.json`` points devices at a version: a pointer signed with the same key,
with a sequence number that only grows and an expiry (its format is the device's, ``alumi_edge.channel``). The
manifest signature covers
the exact bytes of ``manifest.json`` and is stored base64-encoded in ``manifest.sig``; devices
check it against a pinned public key (``alumi-edge pull --pubkey``). The format itself (file names,
format number, roles, version rule) is the device's: it is imported from ``alumi_edge.manifest``; file
digests are :func:`alumi_pipelines.lib.files.file_sha256`, the same sha256 the device checks.

Pure logic: no dagster, no lake I/O. :func:`write_release` fills a local staging folder;
:func:`publish_release` hands every file to a ``write_bytes(key, data)`` callable (the lake
resource), files first, the manifest next and the channel pointers last (:func:`move_channels`), so a
device never sees a pointer to an incomplete release. The caller names the keys (``file_key``,
``channel_key``; the assets pass those of ``resources.lake_keys``): nothing here knows the lake's layout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from alumi_edge.channel import POINTER_FORMAT, signed_bytes
from alumi_edge.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ROLES,
    SIGNATURE_NAME,
    ManifestError,
    check_refused,
    check_relative_path,
    check_version,
    key_id,
    verify_signature,
)
from alumi_edge.manifest import ReleaseError as DeviceReleaseError
from alumi_pipelines.lib.files import file_sha256

SOURCE_KEYS = ("mlflow_run_id", "model_name", "model_version", "dataset_hash")
DEV_SIGNING_KEY = Path("keys") / "release-dev.key"  # below ALUMI_HOME; its .pub is what development devices pin
RELEASE_KEY_SETTING = "release_key (ALUMI_RELEASE_KEY)"
CHANNEL_TTL = timedelta(days=30)  # a channel pointer expires this long after it was signed, unless re-signed


class ReleaseError(ValueError):
    """A release that cannot be built or does not verify; the message names the file or field."""


@dataclass(frozen=True)
class ReleaseInput:
    """A local file to ship in a release under ``path`` with a ``role``."""

    local_path: Path
    path: str
    role: str


def _check_version(version: str, what: str = "release version") -> str:
    """The device's version rule (``alumi_edge.manifest.check_version``), raised as ReleaseError."""
    try:
        return check_version(version, what)
    except ManifestError as exc:
        raise ReleaseError(str(exc)) from None


def _check_release_path(path: str) -> str:
    """A path the device accepts (``alumi_edge.manifest.check_relative_path``) that is not hidden either."""
    try:
        checked = check_relative_path(path)
    except ManifestError:
        checked = None
    if checked is None or PurePosixPath(checked).name.startswith("."):
        raise ReleaseError(f"release file path {path!r}: must be relative, without '..', not hidden or reserved")
    return checked


def _as_inputs(files: Iterable[ReleaseInput | tuple | Mapping[str, Any]]) -> list[ReleaseInput]:
    """Accept ReleaseInput, (local_path, role) / (local_path, path, role) tuples or dicts."""
    inputs: list[ReleaseInput] = []
    for item in files:
        if isinstance(item, ReleaseInput):
            inputs.append(item)
        elif isinstance(item, Mapping):
            local = Path(item["local_path"])
            inputs.append(ReleaseInput(local, item.get("path", local.name), item["role"]))
        elif len(item) == 2:
            inputs.append(ReleaseInput(Path(item[0]), Path(item[0]).name, item[1]))
        else:
            inputs.append(ReleaseInput(Path(item[0]), item[1], item[2]))
    return inputs


def build_manifest(
    version: str,
    files: Iterable[ReleaseInput | tuple | Mapping[str, Any]],
    classes: Sequence[str],
    imgsz: int | Sequence[int],
    metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    created_at: datetime | str | None = None,
    refused: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """The manifest dict for local files: sha256, size and role of each, plus model facts and provenance, and
    ``refused``: the roles the export left out and why (the device's rule, ``alumi_edge.manifest.check_refused``)."""
    _check_version(version)
    inputs = _as_inputs(files)
    entries, seen = [], set()
    for item in inputs:
        path = _check_release_path(item.path)
        if item.role not in ROLES:
            raise ReleaseError(f"release file {path}: role {item.role!r} is not one of {', '.join(ROLES)}")
        if path in seen:
            raise ReleaseError(f"release file {path}: listed twice")
        seen.add(path)
        local = Path(item.local_path)
        if not local.is_file():
            raise ReleaseError(f"release file {path}: local file {local} does not exist")
        entries.append({"path": path, "sha256": file_sha256(local), "size": local.stat().st_size, "role": item.role})
    if sum(e["role"] == "model" for e in entries) != 1:
        raise ReleaseError("a release needs exactly one file with role 'model'")
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise ReleaseError(f"release classes {classes!r}: must be a non-empty list of distinct names")
    size = [int(imgsz), int(imgsz)] if isinstance(imgsz, int) else [int(v) for v in imgsz]
    if len(size) != 2 or min(size) <= 0:
        raise ReleaseError(f"release imgsz {imgsz!r}: must be a positive int or [height, width]")
    if created_at is None:
        created_at = datetime.now(UTC)
    if isinstance(created_at, datetime):
        created_at = created_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    source = dict(source or {})
    try:
        refused = check_refused(
            {k: dict(v) for k, v in refused.items()} if refused else None, {e["role"] for e in entries}, "release"
        )
    except ManifestError as exc:
        raise ReleaseError(str(exc)) from None
    return {
        **({"refused": refused} if refused else {}),
        "format": MANIFEST_FORMAT,
        "version": version,
        "created_at": created_at,
        "classes": classes,
        "imgsz": size,
        "metrics": {k: metrics[k] for k in sorted(metrics or {})},
        "source": {**{k: source.get(k) for k in SOURCE_KEYS}, **source},
        "files": sorted(entries, key=lambda e: (ROLES.index(e["role"]), e["path"])),
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a manifest (sorted keys, two-space indent, trailing newline): what gets signed."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _private_key(private_key_pem: bytes | str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if isinstance(private_key_pem, str):
        private_key_pem = private_key_pem.encode("ascii")
    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseError(f"signing key: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"signing key: {type(key).__name__} given, releases are signed with Ed25519")
    return key


def sign_manifest(manifest: bytes, private_key_pem: bytes | str) -> bytes:
    """Base64 Ed25519 signature (ASCII bytes, newline-terminated) of the exact manifest bytes."""
    signature = _private_key(private_key_pem).sign(manifest)
    return base64.b64encode(signature) + b"\n"


def public_key_pem(private_key_pem: bytes | str) -> bytes:
    """PEM of the public half of a signing key (what devices pin)."""
    from cryptography.hazmat.primitives import serialization

    return (
        _private_key(private_key_pem)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def verify_manifest(manifest: bytes, signature_b64: bytes, public_pem: bytes | str) -> None:
    """Raise ReleaseError unless the signature verifies: the device's own check (``alumi_edge.manifest``)."""
    try:
        verify_signature(manifest, signature_b64, public_pem)
    except DeviceReleaseError as exc:
        raise ReleaseError(str(exc)) from exc


def load_or_create_signing_key(path: str | Path) -> tuple[bytes, bytes]:
    """(private PEM, public PEM) from ``path``; creates a development key (mode 0600) when the file is absent.

    The public key is written beside it as ``<name>.pub`` for devices to pin.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path).expanduser()
    if path.is_file():
        private_pem = path.read_bytes()
        public = public_key_pem(private_pem)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        private_pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        try:
            os.link(tmp, path)  # never overwrite a key another process created meanwhile
        except FileExistsError:
            private_pem = path.read_bytes()
        finally:
            tmp.unlink()
        public = public_key_pem(private_pem)
    pub_path = path.with_name(path.name + ".pub")
    if not pub_path.is_file() or pub_path.read_bytes() != public:
        pub_path.write_bytes(public)
    return private_pem, public


def signing_key_path(
    home: str | Path, configured: str | None = None, release_key: str | None = None
) -> tuple[Path, bool]:
    """(key path, is the development key): ``configured`` (the asset's ``signing_key`` config), else
    ``release_key`` (the pipeline setting, from ``ALUMI_RELEASE_KEY``), else ``<home>/keys/release-dev.key``.

    A key that is configured must exist (ReleaseError naming the setting and the path); the development
    key is created on first use by :func:`load_or_create_signing_key` and must never be committed.
    """
    for setting, chosen in (("config signing_key", configured), (RELEASE_KEY_SETTING, release_key)):
        chosen = (chosen or "").strip()
        if chosen:
            path = Path(chosen).expanduser()
            if not path.is_file():
                raise ReleaseError(
                    f"{setting}={chosen!r}: no such file (the release signing key must exist; "
                    "unset it to sign with a development key)"
                )
            return path, False
    return Path(home).expanduser() / DEV_SIGNING_KEY, True


def expected_detections(
    boxes_xyxy: Sequence[Sequence[float]],
    confidences: Sequence[float],
    class_ids: Sequence[int],
    names: Sequence[str],
    conf: float,
    iou: float,
    max_det: int = 300,
) -> dict:
    """The ``sample_expected`` document for a release's self-test (boxes in original-image pixels)."""
    if not (len(boxes_xyxy) == len(confidences) == len(class_ids)):
        raise ReleaseError("expected detections: boxes, confidences and class ids differ in length")
    return {
        "conf": float(conf),
        "iou": float(iou),
        "max_det": int(max_det),
        "boxes": [
            {
                "class_id": int(c),
                "class_name": names[int(c)],
                "confidence": float(s),
                "x1": float(b[0]),
                "y1": float(b[1]),
                "x2": float(b[2]),
                "y2": float(b[3]),
            }
            for b, s, c in zip(boxes_xyxy, confidences, class_ids)
        ],
    }


def sample_raw(model_path: str | Path, sample_path: str | Path) -> dict:
    """The ``raw`` entry of a sample_expected document: the model's top raw scores on the sample, as the device's
    self-test computes them (``alumi_edge.selftest``, ONNX Runtime on the CPU), with their tolerance."""
    from alumi_edge.imaging import decode_image
    from alumi_edge.runtimes.onnx import OnnxRuntime
    from alumi_edge.selftest import RAW_TOLERANCE, sample_raw_scores

    runtime = OnnxRuntime(Path(model_path), device="cpu").load()
    try:
        scores = sample_raw_scores(runtime, decode_image(Path(sample_path).read_bytes()))
    finally:
        runtime.close()
    return {"top_scores": scores, "tolerance": RAW_TOLERANCE}


def check_sample_expected(inputs: Sequence[ReleaseInput]) -> None:
    """Refuse a release whose self-test would prove nothing: its sample needs expected boxes or informative raw
    scores (``alumi_edge.selftest.raw_informative``)."""
    from alumi_edge.selftest import raw_informative

    for item in inputs:
        if item.role != "sample_expected":
            continue
        try:
            document = json.loads(Path(item.local_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReleaseError(f"release file {item.path}: not readable JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise ReleaseError(f"release file {item.path}: must be a JSON object")
        roles = document.get("roles") if isinstance(document.get("roles"), dict) else {}
        for where, entry in [("", document), *((f" roles.{r}", e) for r, e in roles.items())]:
            raw = entry.get("raw") if isinstance(entry, dict) else None
            informative = isinstance(raw, dict) and raw_informative(raw)
            if not isinstance(entry, dict) or not (entry.get("boxes") or informative):
                raise ReleaseError(
                    f"release file {item.path}{where}: no expected boxes on the sample image and no informative raw "
                    "scores, so the devices' self-test would pass for a model that detects nothing; choose a sample "
                    "the model finds defects on"
                )


def write_release(
    dest_dir: str | Path,
    files: Iterable[ReleaseInput | tuple | Mapping[str, Any]],
    *,
    version: str,
    classes: Sequence[str],
    imgsz: int | Sequence[int],
    private_key_pem: bytes | str,
    metrics: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    created_at: datetime | str | None = None,
    refused: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """Copy the files into ``dest_dir`` (the release's own folder), write manifest.json and manifest.sig.

    Returns the manifest. ``dest_dir`` must not exist or be empty (a release is never edited).
    """
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise ReleaseError(f"release folder {dest} is not empty; releases are immutable, pick a new version")
    inputs = _as_inputs(files)
    manifest = build_manifest(version, inputs, classes, imgsz, metrics, source, created_at, refused)
    check_sample_expected(inputs)
    data = manifest_bytes(manifest)
    signature = sign_manifest(data, private_key_pem)
    dest.mkdir(parents=True, exist_ok=True)
    for item in inputs:
        target = dest / _check_release_path(item.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item.local_path, target)
    (dest / SIGNATURE_NAME).write_bytes(signature)
    (dest / MANIFEST_NAME).write_bytes(data)
    return manifest


def build_edge_wheel(source_dir: str | Path, out_dir: str | Path, timeout_s: float = 600) -> Path:
    """The ``alumi-edge`` wheel of ``source_dir`` (edge_export/), built into ``out_dir``; returns its path.

    ``pip wheel --no-deps --no-build-isolation --no-index``: offline, with the running environment's
    setuptools, from a clean temporary copy (the source tree gets no ``build/`` or ``*.egg-info``).
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not (source_dir / "pyproject.toml").is_file():
        raise ReleaseError(f"alumi-edge sources not found at {source_dir} (expected edge_export/pyproject.toml)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="alumi-edge-build-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(
            source_dir, copy, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*")
        )
        wheel_dir = Path(tmp) / "wheels"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--quiet",
                str(copy),
                "-w",
                str(wheel_dir),
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        wheels = sorted(wheel_dir.glob("alumi_edge-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise ReleaseError(
                f"building the alumi-edge wheel failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        target = out_dir / wheels[0].name
        shutil.copyfile(wheels[0], target)
    return target


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def next_sequence(previous: bytes | None, now: datetime) -> int:
    """A channel's next sequence: above the previous pointer's and at least ``now`` in microseconds since 1970.

    The clock term keeps the sequence growing even when the previous pointer cannot be read (deleted, garbled).
    """
    try:
        prior = json.loads(previous)["sequence"] if previous else 0
    except (ValueError, KeyError, TypeError):
        prior = 0
    prior = prior if isinstance(prior, int) and not isinstance(prior, bool) else 0
    return max(prior + 1, int(now.timestamp() * 1_000_000))


def channel_pointer(
    version: str,
    channel: str,
    private_key_pem: bytes | str,
    manifest_sha256: str,
    *,
    sequence: int,
    now: datetime | None = None,
    ttl: timedelta = CHANNEL_TTL,
) -> bytes:
    """Bytes of ``channels/<channel>.json``: ``version``, its manifest's sha256, ``sequence`` and an expiry ``ttl``
    from ``now``, signed with the release key (``alumi_edge.channel`` checks it on the device)."""
    _check_version(version)
    _check_version(channel, "channel")
    if ttl <= timedelta(0):
        raise ReleaseError(f"channel ttl {ttl}: must be positive")
    now = now or datetime.now(UTC)
    pointer = {
        "format": POINTER_FORMAT,
        "channel": channel,
        "version": version,
        "manifest": f"{version}/{MANIFEST_NAME}",
        "manifest_sha256": manifest_sha256,
        "sequence": int(sequence),
        "updated_at": _utc(now),
        "expires_at": _utc(now + ttl),
    }
    key = _private_key(private_key_pem)
    signature = base64.b64encode(key.sign(signed_bytes(pointer))).decode("ascii")
    pointer["signature"] = {"key_id": key_id(key.public_key()), "value": signature}
    return (json.dumps(pointer, indent=2, sort_keys=True) + "\n").encode("utf-8")


def release_file_order(release_dir: str | Path) -> list[Path]:
    """Files of a release folder in publishing order: payload, then signature, then manifest."""
    release_dir = Path(release_dir)
    payload = sorted(p for p in release_dir.rglob("*") if p.is_file() and p.name not in (MANIFEST_NAME, SIGNATURE_NAME))
    return [*payload, release_dir / SIGNATURE_NAME, release_dir / MANIFEST_NAME]


def move_channels(
    version: str,
    channels: Sequence[str],
    write_bytes: Callable[[str, bytes], Any],
    channel_key: Callable[[str], str],
    *,
    private_key_pem: bytes | str,
    manifest: bytes,
    read_bytes: Callable[[str], bytes | None] | None = None,
    ttl: timedelta = CHANNEL_TTL,
    now: datetime | None = None,
) -> list[str]:
    """Point each channel at ``version`` with a signed pointer (``write_bytes(channel_key(channel), pointer)``).

    ``manifest`` is the release's manifest.json (the pointer carries its sha256); ``read_bytes(key)`` (None when
    absent) gives the previous pointer, whose sequence the new one exceeds. Moving a channel to the version it
    already names re-signs it (new sequence, new expiry): that is how a pointer is kept from expiring. The release
    must be published completely first. Returns the keys written.
    """
    _check_version(version)
    keys = [channel_key(_check_version(channel, "channel")) for channel in channels]  # all checked before any move
    digest = hashlib.sha256(manifest).hexdigest()
    now = now or datetime.now(UTC)
    for channel, key in zip(channels, keys):
        previous = read_bytes(key) if read_bytes is not None else None
        pointer = channel_pointer(
            version, channel, private_key_pem, digest, sequence=next_sequence(previous, now), now=now, ttl=ttl
        )
        write_bytes(key, pointer)
    return keys


def publish_release(
    release_dir: str | Path,
    write_bytes: Callable[[str, bytes], Any],
    channels: Sequence[str] = ("stable",),
    *,
    file_key: Callable[[str, str], str],
    channel_key: Callable[[str], str],
    private_key_pem: bytes | str,
    read_bytes: Callable[[str], bytes | None] | None = None,
    ttl: timedelta = CHANNEL_TTL,
    map_calls: Callable[[Callable[[Path], str], list[Path]], list[str]] | None = None,
) -> list[str]:
    """Hand a written release folder to ``write_bytes(key, data)`` (atomic per key), then move the channels.

    Returns the keys written, in order. The version is read from the folder's manifest. ``file_key(version,
    path)`` and ``channel_key(channel)`` name the keys (the lake's: ``lake_keys.release_file_key`` and
    ``lake_keys.channel_key``); the pointers are signed with ``private_key_pem`` (see :func:`move_channels`).
    ``map_calls(fn, paths)`` (the lake's bounded pool, ``Lake.map``) writes the payload files concurrently;
    the signature and then the manifest follow once every payload file is written, so a release whose manifest
    can be read is complete.
    """
    release_dir = Path(release_dir)
    manifest_data = (release_dir / MANIFEST_NAME).read_bytes()
    version = _check_version(json.loads(manifest_data)["version"])

    def put(path: Path) -> str:
        key = file_key(version, path.relative_to(release_dir).as_posix())
        write_bytes(key, path.read_bytes())
        return key

    files = release_file_order(release_dir)
    payload, last = files[:-2], files[-2:]
    keys = list(map_calls(put, payload)) if map_calls else [put(p) for p in payload]
    keys += [put(p) for p in last]
    return keys + move_channels(
        version,
        channels,
        write_bytes,
        channel_key,
        private_key_pem=private_key_pem,
        manifest=manifest_data,
        read_bytes=read_bytes,
        ttl=ttl,
    )
