"""Release manifests: parse, check the Ed25519 signature against a pinned key, check file hashes.

The signature covers the exact bytes of ``manifest.json``; it is stored base64-encoded in
``manifest.sig``. A manifest names every file of the release with its sha256, size and role.

A release may leave out its INT8 model when the export refused it (its accuracy fell more than the margin below
the FP32 model's). The optional ``refused`` object then says so, per left-out role, with at least ``why``:
``{"model_int8": {"why": "...", "margin": 0.01, "map50_fp32": 0.48, "map50_int8": 0.45, "map50_drop": 0.03}}``.
Older manifests (with their INT8 model, no ``refused``) stay valid; older devices ignore the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MANIFEST_FORMAT = 1
ROLES = ("model", "model_int8", "wheel", "sample_image", "sample_expected", "build_plan", "risk_model")
REFUSABLE_ROLES = ("model_int8",)  # roles the export may refuse and leave out of a release (``refused``)
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ReleaseError(Exception):
    """A release that must not be installed; the message says which file and which rule."""


class ManifestError(ReleaseError):
    """The manifest is malformed."""


class SignatureError(ReleaseError):
    """The signature does not verify against the pinned public key."""


class ChecksumError(ReleaseError):
    """A file's size or sha256 differs from the manifest."""


def check_version(version: object, what: str = "version") -> str:
    """The version string, or ManifestError when it could escape a folder or is empty."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version) or version in (".", ".."):
        raise ManifestError(f"{what} {version!r}: must match {VERSION_PATTERN.pattern}")
    return version


def check_relative_path(path: object) -> str:
    """A release-relative POSIX path with no '..', no absolute part and no hidden temp names."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        raise ManifestError(f"file path {path!r}: must be a non-empty POSIX path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise ManifestError(f"file path {path!r}: must be relative and must not contain '.' or '..' parts")
    if pure.name in (MANIFEST_NAME, SIGNATURE_NAME) or pure.name.startswith(".partial-"):
        raise ManifestError(f"file path {path!r}: reserved name")
    return pure.as_posix()


def check_refused(refused: object, roles_present: set[str], where: str = MANIFEST_NAME) -> dict:
    """The ``refused`` field (absent: ``{}``): role → object with a non-empty ``why``, for a refusable role that
    the release does not carry; ManifestError naming the field otherwise."""
    if refused is None:
        return {}
    if not isinstance(refused, dict):
        raise ManifestError(f"{where}: field 'refused' must be an object of role: {{why, ...}}")
    for role, entry in refused.items():
        if role not in REFUSABLE_ROLES:
            raise ManifestError(
                f"{where}: refused[{role!r}]: only {', '.join(REFUSABLE_ROLES)} can be refused and left out"
            )
        if role in roles_present:
            raise ManifestError(f"{where}: refused[{role!r}]: the release also carries a file with that role")
        if not isinstance(entry, dict) or not isinstance(entry.get("why"), str) or not entry["why"].strip():
            raise ManifestError(f"{where}: refused[{role!r}] must be an object with a non-empty 'why'")
    return dict(refused)


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release as the manifest lists it."""

    path: str
    sha256: str
    size: int
    role: str


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest."""

    version: str
    created_at: str
    classes: tuple[str, ...]
    imgsz: tuple[int, int]
    metrics: dict
    source: dict
    files: tuple[ReleaseFile, ...]
    raw: dict
    refused: dict = field(default_factory=dict)  # role → why the export left that file out (``refused``)

    def file_for_role(self, role: str) -> ReleaseFile | None:
        """The first file with ``role``, or None."""
        return next((f for f in self.files if f.role == role), None)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; raises ManifestError naming the field."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"{MANIFEST_NAME}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{MANIFEST_NAME}: top level must be an object")
    if raw.get("format") != MANIFEST_FORMAT:
        raise ManifestError(
            f"{MANIFEST_NAME}: field 'format' is {raw.get('format')!r}, this device reads {MANIFEST_FORMAT}"
        )
    version = check_version(raw.get("version"), f"{MANIFEST_NAME}: field 'version'")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ManifestError(f"{MANIFEST_NAME}: field 'classes' must be a non-empty list of names")
    imgsz = raw.get("imgsz")
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if not (isinstance(imgsz, list) and len(imgsz) == 2 and all(isinstance(v, int) and v > 0 for v in imgsz)):
        raise ManifestError(f"{MANIFEST_NAME}: field 'imgsz' must be a positive int or [height, width]")
    files_raw = raw.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise ManifestError(f"{MANIFEST_NAME}: field 'files' must be a non-empty list")
    files: list[ReleaseFile] = []
    seen: set[str] = set()
    for i, entry in enumerate(files_raw):
        where = f"{MANIFEST_NAME}: files[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: must be an object")
        path = check_relative_path(entry.get("path"))
        if path in seen:
            raise ManifestError(f"{where}: path {path!r} is listed twice")
        seen.add(path)
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise ManifestError(f"{where} ({path}): 'sha256' must be 64 lowercase hex digits")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where} ({path}): 'size' must be a non-negative integer")
        role = entry.get("role")
        if role not in ROLES:
            raise ManifestError(f"{where} ({path}): 'role' {role!r} is not one of {', '.join(ROLES)}")
        files.append(ReleaseFile(path=path, sha256=sha, size=size, role=role))
    if sum(f.role == "model" for f in files) != 1:
        raise ManifestError(f"{MANIFEST_NAME}: exactly one file must have role 'model'")
    refused = check_refused(raw.get("refused"), {f.role for f in files})
    return Manifest(
        version=version,
        created_at=str(raw.get("created_at", "")),
        classes=tuple(classes),
        imgsz=(imgsz[0], imgsz[1]),
        metrics=raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {},
        source=raw.get("source") if isinstance(raw.get("source"), dict) else {},
        files=tuple(files),
        raw=raw,
        refused=refused,
    )


def load_public_key(pem: bytes | str):
    """An Ed25519 public key from PEM; raises SignatureError for any other key type."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(pem, str):
        pem = pem.encode("ascii")
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"pinned public key is not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"pinned public key is {type(key).__name__}, expected an Ed25519 key")
    return key


def key_id(public_key) -> str:
    """16 hex digits naming an Ed25519 public key (sha256 of its raw bytes)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def load_public_keys(pem: bytes | str) -> dict:
    """The pinned key set: every Ed25519 public key of a PEM text (one or several blocks), by :func:`key_id`.

    Several keys let a fleet trust the current and the next release key while the signing key is rotated.
    """
    if isinstance(pem, str):
        pem = pem.encode("ascii")
    blocks = _PEM_BLOCK.findall(pem) or [pem]
    keys = {}
    for block in blocks:
        key = load_public_key(block)
        keys[key_id(key)] = key
    return keys


def verify_signature(manifest_bytes: bytes, signature_b64: bytes, public_key_pem: bytes | str) -> None:
    """Raise SignatureError unless ``signature_b64`` is a valid Ed25519 signature of ``manifest_bytes`` by one
    of the pinned keys (``public_key_pem`` may hold several)."""
    from cryptography.exceptions import InvalidSignature

    keys = load_public_keys(public_key_pem)
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE_NAME}: not base64 ({exc})") from exc
    for key in keys.values():
        try:
            key.verify(signature, manifest_bytes)
            return
        except InvalidSignature:
            continue
    raise SignatureError(f"{SIGNATURE_NAME}: signature does not match {MANIFEST_NAME} and the pinned key")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | Path, entry: ReleaseFile) -> None:
    """Raise ChecksumError unless the file's size and sha256 are the manifest's."""
    path = Path(path)
    if not path.is_file():
        raise ChecksumError(f"{entry.path}: missing from the release folder")
    size = path.stat().st_size
    if size != entry.size:
        raise ChecksumError(f"{entry.path}: size {size} differs from the manifest's {entry.size}")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise ChecksumError(f"{entry.path}: sha256 {actual} differs from the manifest's {entry.sha256}")


def verify_release_dir(folder: str | Path, public_key_pem: bytes | str) -> Manifest:
    """Check signature and every file of an unpacked release folder; returns its manifest."""
    folder = Path(folder)
    try:
        manifest_bytes = (folder / MANIFEST_NAME).read_bytes()
        signature = (folder / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"{folder}: {Path(exc.filename).name} is missing") from exc
    verify_signature(manifest_bytes, signature, public_key_pem)
    manifest = parse_manifest(manifest_bytes)
    for entry in manifest.files:
        verify_file(folder / entry.path, entry)
    return manifest
