"""Channel pointers: ``channels/<channel>.json`` names the version devices install; signed, sequenced, expiring.

A pointer (format 2) is a JSON object::

    {"format": 2, "channel": "stable", "version": "1.2.0", "manifest": "1.2.0/manifest.json",
     "manifest_sha256": "<sha256 of that manifest.json>", "sequence": 1764756000123456,
     "updated_at": "2026-12-03T10:00:00Z", "expires_at": "2027-01-02T10:00:00Z",
     "signature": {"key_id": "<16 hex>", "value": "<base64 Ed25519>"}}

The signature covers :func:`signed_bytes` (the object without ``signature``, canonical JSON) and is made with the
release key. In the spirit of TUF's timestamp metadata a device refuses a pointer that is unsigned, signed by no
pinned key, for another channel, expired, or older (a lower ``sequence``) than the newest it accepted before: a
writer of the lake alone can no longer send a fleet back to an old signed release, nor hold it on one for ever.
Going back is either local and explicit (``alumi-edge rollback``) or a new pointer with a higher sequence.

Pinned keys: a device trusts a small set (every PEM block of its ``--pubkey`` files); the pointer's ``key_id``
names the key that signed it. ``version`` and ``manifest`` keep their format-1 meaning, so devices that predate
signed pointers still follow them (without these checks).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from alumi_edge.manifest import MANIFEST_NAME, ManifestError, SignatureError, check_version, load_public_keys

POINTER_FORMAT = 2


class ChannelError(ManifestError):
    """A channel pointer that must not be followed (unsigned, wrongly signed, expired, older, malformed)."""


class ChannelExpired(ChannelError):
    """The pointer's ``expires_at`` has passed: its publisher stopped vouching for it."""


class ChannelRollback(ChannelError):
    """The pointer is older (lower sequence) than one this device already accepted."""


def signed_bytes(pointer: dict) -> bytes:
    """The bytes a pointer's signature covers: every field but ``signature``, as canonical JSON."""
    body = {k: v for k, v in pointer.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise ChannelError(f"{where} must be an ISO 8601 UTC time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ChannelError(f"{where} {value!r} is not an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ChannelPointer:
    """A verified pointer."""

    channel: str
    version: str
    manifest_sha256: str
    sequence: int
    updated_at: str
    expires_at: str
    key_id: str
    raw: bytes  # the bytes as read (kept by the device as the newest accepted pointer)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= _time(self.expires_at, "expires_at")

    def summary(self, now: datetime | None = None) -> dict:
        return {
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "expired": self.expired(now),
            "key_id": self.key_id,
        }


def parse_pointer(data: bytes, where: str, channel: str) -> tuple[dict, ChannelPointer]:
    """The pointer's fields, checked for shape (not for signature or time); ChannelError names the field."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ChannelError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise ChannelError(f"{where}: must be a JSON object")
    version = check_version(doc.get("version"), f"{where}: field 'version'")
    if doc.get("manifest", f"{version}/{MANIFEST_NAME}") != f"{version}/{MANIFEST_NAME}":
        raise ChannelError(
            f"{where}: field 'manifest' is {doc.get('manifest')!r}, expected '{version}/{MANIFEST_NAME}'"
        )
    signature = doc.get("signature")
    if doc.get("format") != POINTER_FORMAT or not isinstance(signature, dict):
        raise ChannelError(
            f"{where}: unsigned channel pointer (format {doc.get('format')!r}, no 'signature'); this device follows "
            f"only pointers of format {POINTER_FORMAT} signed with a pinned key (republish the channel)"
        )
    if doc.get("channel") != channel:
        raise ChannelError(f"{where}: field 'channel' is {doc.get('channel')!r}, this is channel {channel!r}")
    sequence = doc.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise ChannelError(f"{where}: field 'sequence' must be a non-negative integer")
    sha = doc.get("manifest_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ChannelError(f"{where}: field 'manifest_sha256' must be 64 lowercase hex digits")
    _time(doc.get("expires_at"), f"{where}: field 'expires_at'")
    return doc, ChannelPointer(
        channel=channel,
        version=version,
        manifest_sha256=sha,
        sequence=sequence,
        updated_at=str(doc.get("updated_at", "")),
        expires_at=doc["expires_at"],
        key_id=str(signature.get("key_id", "")),
        raw=bytes(data),
    )


def verify_pointer(
    data: bytes,
    public_keys: bytes | str,
    channel: str,
    *,
    where: str | None = None,
    now: datetime | None = None,
    newest_accepted: ChannelPointer | None = None,
) -> ChannelPointer:
    """The pointer, after checking its signature against the pinned keys, its expiry and its sequence.

    ``newest_accepted`` is the pointer this device accepted last (for this channel): a lower sequence is refused,
    and so is the same sequence naming another version.
    """
    from cryptography.exceptions import InvalidSignature

    where = where or f"channels/{channel}.json"
    doc, pointer = parse_pointer(data, where, channel)
    keys = load_public_keys(public_keys)
    try:
        signature = base64.b64decode(str(doc["signature"].get("value", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{where}: signature is not base64 ({exc})") from exc
    candidates = [keys[pointer.key_id]] if pointer.key_id in keys else list(keys.values())
    for key in candidates:
        try:
            key.verify(signature, signed_bytes(doc))
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureError(
            f"{where}: signature does not match the pointer and any pinned key (key_id {pointer.key_id!r}; pinned: "
            f"{', '.join(sorted(keys))})"
        )
    if pointer.expired(now):
        raise ChannelExpired(
            f"{where}: expired at {pointer.expires_at} (version {pointer.version}, sequence {pointer.sequence}); "
            "the publisher must re-sign the channel"
        )
    if newest_accepted is not None:
        if pointer.sequence < newest_accepted.sequence:
            raise ChannelRollback(
                f"{where}: sequence {pointer.sequence} (version {pointer.version}) is older than sequence "
                f"{newest_accepted.sequence} (version {newest_accepted.version}) this device accepted before; "
                "refused (roll back locally with 'alumi-edge rollback')"
            )
        if pointer.sequence == newest_accepted.sequence and pointer.version != newest_accepted.version:
            raise ChannelRollback(
                f"{where}: sequence {pointer.sequence} names version {pointer.version}, but this device accepted "
                f"{newest_accepted.version} under the same sequence"
            )
    return pointer
