"""Signed, sequenced, expiring channel pointers: what a device refuses, and what it keeps."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from edge_support import EDGE_SRC

from alumi_edge.channel import ChannelError, ChannelExpired, ChannelRollback
from alumi_edge.device_home import DeviceHome
from alumi_edge.manifest import SignatureError
from alumi_edge.pull import pull
from alumi_pipelines.lib.export import release


def _edge_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(EDGE_SRC)}
    return subprocess.run(
        [sys.executable, "-m", "alumi_edge", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _pointer_path(store, channel="stable"):
    return store.root / "channels" / f"{channel}.json"


def _sign_pointer(store, version, private_pem, *, sequence, now=None, ttl=timedelta(days=30), channel="stable"):
    manifest = (store.root / version / "manifest.json").read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()
    return release.channel_pointer(version, channel, private_pem, digest, sequence=sequence, now=now, ttl=ttl)


@pytest.fixture
def installed(tmp_path, release_store, signing_keys):
    """Releases 1.0.0 and 2.0.0 published (stable → 2.0.0 after 1.0.0); a device that pulled both."""
    home = tmp_path / "device"
    release_store.publish("1.0.0")
    assert pull(str(release_store.root), home, signing_keys[1]).version == "1.0.0"
    old_pointer = _pointer_path(release_store).read_bytes()
    release_store.publish("2.0.0")
    assert pull(str(release_store.root), home, signing_keys[1]).version == "2.0.0"
    return home, old_pointer


def test_the_published_pointer_is_signed_sequenced_and_expiring(release_store, signing_keys):
    release_store.publish("1.0.0")
    first = json.loads(_pointer_path(release_store).read_bytes())
    release_store.publish("1.1.0")
    second = json.loads(_pointer_path(release_store).read_bytes())
    assert first["format"] == second["format"] == 2 and second["channel"] == "stable"
    assert second["version"] == "1.1.0" and second["manifest"] == "1.1.0/manifest.json"  # what older devices read
    assert second["sequence"] > first["sequence"]
    expires = datetime.fromisoformat(second["expires_at"].replace("Z", "+00:00"))
    updated = datetime.fromisoformat(second["updated_at"].replace("Z", "+00:00"))
    assert expires - updated == release.CHANNEL_TTL
    assert second["signature"]["key_id"] and second["signature"]["value"]
    # the sequence grows even when the previous pointer cannot be read
    assert release.next_sequence(None, datetime.now(UTC)) > second["sequence"] - 10_000_000
    assert release.next_sequence(b'{"sequence": 99999999999999999}', datetime.now(UTC)) == 10**17


def test_a_pointer_edited_by_hand_is_refused_and_the_device_keeps_its_version(installed, release_store, signing_keys):
    home, _ = installed
    pointer = json.loads(_pointer_path(release_store).read_bytes())
    pointer["version"], pointer["manifest"] = "1.0.0", "1.0.0/manifest.json"  # back to the old signed release
    _pointer_path(release_store).write_text(json.dumps(pointer))
    with pytest.raises(SignatureError, match="signature does not match the pointer"):
        pull(str(release_store.root), home, signing_keys[1])
    assert DeviceHome(home).current_version() == "2.0.0"

    cli = _edge_cli("pull", "--home", str(home), "--source", str(release_store.root), "--pubkey", str(signing_keys[2]))
    assert cli.returncode == 3
    assert cli.stderr.strip().splitlines()[-1].startswith("alumi-edge pull: release refused, current version")
    info = json.loads(_edge_cli("info", "--home", str(home), "--json").stdout)
    assert info["current"] == "2.0.0"
    assert info["channels"]["stable"]["last_check"]["status"] == "refused"
    assert "signature" in info["channels"]["stable"]["last_check"]["detail"]


def test_an_unsigned_or_foreign_or_other_channel_pointer_is_refused(installed, release_store, signing_keys):
    home, _ = installed
    path = _pointer_path(release_store)
    path.write_text(json.dumps({"version": "1.0.0", "manifest": "1.0.0/manifest.json", "updated_at": "2026-12-01"}))
    with pytest.raises(ChannelError, match="unsigned channel pointer"):
        pull(str(release_store.root), home, signing_keys[1])

    other_private, _ = release.load_or_create_signing_key(home.parent / "attacker.key")
    path.write_bytes(_sign_pointer(release_store, "1.0.0", other_private, sequence=10**17))
    with pytest.raises(SignatureError, match="any pinned key"):
        pull(str(release_store.root), home, signing_keys[1])

    beta = _sign_pointer(release_store, "1.0.0", signing_keys[0], sequence=10**17, channel="beta")
    path.write_bytes(beta)  # a genuine pointer of another channel, served as stable
    with pytest.raises(ChannelError, match="field 'channel' is 'beta'"):
        pull(str(release_store.root), home, signing_keys[1])
    assert DeviceHome(home).current_version() == "2.0.0"


def test_a_pointer_for_an_older_sequence_signed_with_the_right_key_is_refused(installed, release_store, signing_keys):
    home, old_pointer = installed
    _pointer_path(release_store).write_bytes(old_pointer)  # replayed: genuine, signed, unexpired, but older
    with pytest.raises(ChannelRollback, match="older than sequence"):
        pull(str(release_store.root), home, signing_keys[1])
    accepted = DeviceHome(home).accepted_pointer("stable")
    same_sequence = _sign_pointer(release_store, "1.0.0", signing_keys[0], sequence=accepted.sequence)
    _pointer_path(release_store).write_bytes(same_sequence)
    with pytest.raises(ChannelRollback, match="under the same sequence"):
        pull(str(release_store.root), home, signing_keys[1])
    assert DeviceHome(home).current_version() == "2.0.0"

    # going back on purpose: locally (rollback), or fleet-wide with a new pointer (a higher sequence)
    rolled = _edge_cli("rollback", "--home", str(home))
    assert rolled.returncode == 0 and DeviceHome(home).current_version() == "1.0.0"
    _pointer_path(release_store).write_bytes(
        _sign_pointer(release_store, "1.0.0", signing_keys[0], sequence=accepted.sequence + 1)
    )
    assert pull(str(release_store.root), home, signing_keys[1]).status == "up-to-date"
    assert DeviceHome(home).accepted_pointer("stable").sequence == accepted.sequence + 1


def test_an_expired_pointer_is_refused_and_info_says_so(installed, release_store, signing_keys):
    home, _ = installed
    accepted = DeviceHome(home).accepted_pointer("stable")
    signed_long_ago = datetime.now(UTC) - timedelta(days=40)
    expired = _sign_pointer(
        release_store, "2.0.0", signing_keys[0], sequence=accepted.sequence + 1, now=signed_long_ago
    )
    _pointer_path(release_store).write_bytes(expired)
    with pytest.raises(ChannelExpired, match="expired at"):
        pull(str(release_store.root), home, signing_keys[1])
    assert DeviceHome(home).current_version() == "2.0.0"
    text = _edge_cli("info", "--home", str(home)).stdout
    assert "channel stable: last pull at" in text and "REFUSED" in text and "expired at" in text
    # the pointer the device holds expires too: info says so once that time has passed
    later = datetime.now(UTC) + timedelta(days=31)
    assert DeviceHome(home).accepted_pointer("stable").summary(later)["expired"] is True


def test_key_rotation_with_a_pinned_key_set(tmp_path, release_store, signing_keys):
    """Devices pin {old, new}; the publisher switches to the new key; devices pinning only the old one refuse."""
    home = tmp_path / "device"
    release_store.publish("1.0.0")
    new_private, new_public = release.load_or_create_signing_key(tmp_path / "keys" / "release-2027.key")
    key_set = signing_keys[1] + new_public
    assert pull(str(release_store.root), home, key_set).version == "1.0.0"

    release_store.private_pem = new_private  # the release key rotates
    release_store.publish("1.1.0")
    assert pull(str(release_store.root), home, key_set).version == "1.1.0"
    old_only = tmp_path / "old-device"
    with pytest.raises(SignatureError):
        pull(str(release_store.root), old_only, signing_keys[1])
    two_files = _edge_cli(
        "pull",
        "--home",
        str(tmp_path / "cli-device"),
        "--source",
        str(release_store.root),
        "--pubkey",
        str(signing_keys[2]),
        "--pubkey",
        str(tmp_path / "keys" / "release-2027.key.pub"),
    )
    assert two_files.returncode == 0, two_files.stderr
    assert (
        json.loads(two_files.stdout)["channel"]["key_id"]
        == json.loads(_pointer_path(release_store).read_bytes())["signature"]["key_id"]
    )
