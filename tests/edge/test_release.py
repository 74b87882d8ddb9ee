"""Pipeline-side manifest + signing (alumi_pipelines.lib.export.release) checked by the device-side verifier."""

from __future__ import annotations

import json
import stat

import pytest

from alumi_edge.manifest import (
    ChecksumError,
    ManifestError,
    SignatureError,
    parse_manifest,
    verify_release_dir,
    verify_signature,
)
from alumi_pipelines.lib.export import release
from alumi_pipelines.resources import lake_keys


def _files(tmp_path):
    model = tmp_path / "in" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx-bytes" * 100)
    sample = tmp_path / "in" / "sample.png"
    sample.write_bytes(b"\x89PNG fake")
    return [release.ReleaseInput(model, "model.onnx", "model"), (sample, "sample_image")]


def test_signing_key_created_once_with_private_permissions(tmp_path):
    key_path = tmp_path / "keys" / "release.key"
    private_pem, public_pem = release.load_or_create_signing_key(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert key_path.with_name("release.key.pub").read_bytes() == public_pem
    again = release.load_or_create_signing_key(key_path)
    assert again == (private_pem, public_pem)


def test_build_manifest_lists_hashes_sizes_roles(tmp_path):
    import hashlib

    manifest = release.build_manifest(
        "2026.11.24-1",
        _files(tmp_path),
        classes=["scratch", "dent"],
        imgsz=640,
        metrics={"map50": 0.71},
        source={"mlflow_run_id": "abc", "model_name": "alumi-detector", "model_version": "4", "dataset_hash": "ff"},
        created_at="2026-11-24T10:00:00Z",
    )
    assert manifest["format"] == 1 and manifest["version"] == "2026.11.24-1"
    assert manifest["imgsz"] == [640, 640] and manifest["classes"] == ["scratch", "dent"]
    assert manifest["source"]["mlflow_run_id"] == "abc" and manifest["metrics"] == {"map50": 0.71}
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["model.onnx"] == {
        "path": "model.onnx",
        "sha256": hashlib.sha256(b"onnx-bytes" * 100).hexdigest(),
        "size": 1000,
        "role": "model",
    }
    assert by_path["sample.png"]["role"] == "sample_image"
    # the device-side parser accepts what the pipeline builds
    parsed = parse_manifest(release.manifest_bytes(manifest))
    assert parsed.file_for_role("model").size == 1000


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda files: files + [(files[0].local_path, "other.onnx", "model")], "exactly one file with role 'model'"),
        (lambda files: [release.ReleaseInput(files[0].local_path, "../model.onnx", "model")], "without '..'"),
        (lambda files: [release.ReleaseInput(files[0].local_path, "model.onnx", "weights")], "role 'weights'"),
    ],
)
def test_build_manifest_refuses_bad_files(tmp_path, mutate, message):
    files = _files(tmp_path)
    with pytest.raises(release.ReleaseError, match=message):
        release.build_manifest("1.0", mutate(files), classes=["a"], imgsz=64)


def test_build_manifest_refuses_bad_version(tmp_path):
    with pytest.raises(release.ReleaseError, match="release version '../1'"):
        release.build_manifest("../1", _files(tmp_path), classes=["a"], imgsz=64)


def test_signature_verifies_and_refuses_tampering(tmp_path, signing_keys):
    private_pem, public_pem, _ = signing_keys
    data = release.manifest_bytes(release.build_manifest("1.0", _files(tmp_path), classes=["a"], imgsz=64))
    signature = release.sign_manifest(data, private_pem)
    verify_signature(data, signature, public_pem)  # device side
    release.verify_manifest(data, signature, public_pem)  # pipeline side
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(data.replace(b'"1.0"', b'"1.1"'), signature, public_pem)
    other_private, other_public = release.load_or_create_signing_key(tmp_path / "other.key")
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(data, release.sign_manifest(data, other_private), public_pem)
    with pytest.raises(SignatureError, match="not base64"):
        verify_signature(data, b"!!not base64!!", public_pem)


def test_pinned_key_must_be_ed25519(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_public = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="expected an Ed25519 key"):
        verify_signature(b"{}", b"AAAA", rsa_public)


def test_write_release_then_verify_folder_and_detect_tampered_file(tmp_path, signing_keys):
    private_pem, public_pem, _ = signing_keys
    dest = tmp_path / "release" / "1.0"
    manifest = release.write_release(
        dest, _files(tmp_path), version="1.0", classes=["a"], imgsz=64, private_key_pem=private_pem
    )
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "manifest.sig", "model.onnx", "sample.png"]
    assert verify_release_dir(dest, public_pem).version == "1.0"
    assert json.loads((dest / "manifest.json").read_bytes()) == manifest
    with pytest.raises(release.ReleaseError, match="not empty"):
        release.write_release(dest, [], version="1.0", classes=["a"], imgsz=64, private_key_pem=private_pem)
    (dest / "model.onnx").write_bytes(b"onnx-bytes" * 99 + b"evil-bytes")  # same size, other content
    with pytest.raises(ChecksumError, match="model.onnx: sha256"):
        verify_release_dir(dest, public_pem)
    (dest / "model.onnx").write_bytes(b"short")
    with pytest.raises(ChecksumError, match="model.onnx: size 5 differs"):
        verify_release_dir(dest, public_pem)


def test_publish_writes_the_payload_concurrently_and_the_manifest_after_all_of_it(tmp_path, signing_keys):
    import threading
    import time

    from alumi_pipelines.resources.lake import Lake

    private_pem, _, _ = signing_keys
    dest = tmp_path / "built" / "2.0"
    files = _files(tmp_path)
    for i in range(6):
        extra = tmp_path / "in" / f"extra{i}.bin"
        extra.write_bytes(bytes([i]) * 64)
        files.append(release.ReleaseInput(extra, f"extra/{i}.bin", "build_plan"))
    release.write_release(dest, files, version="2.0", classes=["a"], imgsz=64, private_key_pem=private_pem)
    lake = Lake(base_uri=str(tmp_path / "lake"), concurrency=4)
    events, lock, in_flight, peak = [], threading.Lock(), [0], [0]

    def slow_write(key: str, data: bytes) -> None:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)  # a storage round trip
        lake.write_bytes(key, data)
        with lock:
            in_flight[0] -= 1
            events.append(key)

    keys = release.publish_release(
        dest,
        slow_write,
        file_key=lake_keys.release_file_key,
        channel_key=lake_keys.channel_key,
        private_key_pem=private_pem,
        map_calls=lake.map,
    )
    assert peak[0] > 1  # payload writes overlapped
    payload = [k for k in keys if k.startswith("releases/2.0/") and not k.endswith(("manifest.sig", "manifest.json"))]
    assert len(payload) == 8
    # the signature, then the manifest, then the channel: each written after every payload file finished
    assert events[-3:] == ["releases/2.0/manifest.sig", "releases/2.0/manifest.json", "releases/channels/stable.json"]
    assert set(events[:-3]) == set(payload)


def test_publish_writes_payload_then_manifest_then_channel(tmp_path, signing_keys):
    private_pem, _, _ = signing_keys
    dest = tmp_path / "built" / "1.0"
    release.write_release(dest, _files(tmp_path), version="1.0", classes=["a"], imgsz=64, private_key_pem=private_pem)
    written: list[tuple[str, bytes]] = []
    keys = release.publish_release(
        dest,
        lambda key, data: written.append((key, data)),
        channels=("stable", "canary"),
        file_key=lake_keys.release_file_key,
        channel_key=lake_keys.channel_key,
        private_key_pem=private_pem,
    )
    assert keys == [
        "releases/1.0/model.onnx",
        "releases/1.0/sample.png",
        "releases/1.0/manifest.sig",
        "releases/1.0/manifest.json",
        "releases/channels/stable.json",
        "releases/channels/canary.json",
    ]
    pointer = json.loads(written[-1][1])
    assert pointer["version"] == "1.0" and pointer["manifest"] == "1.0/manifest.json" and pointer["updated_at"]
    # keys come from the key functions the caller passes; a reused release only moves its channels
    other = release.publish_release(
        dest,
        lambda key, data: None,
        channels=("beta",),
        file_key=lambda v, rel: f"r/{v}/{rel}",
        channel_key=lambda c: f"c/{c}",
        private_key_pem=private_pem,
    )
    assert other[0] == "r/1.0/model.onnx" and other[-1] == "c/beta"
    moved: list[tuple[str, bytes]] = []
    signed = {"private_key_pem": private_pem, "manifest": (dest / "manifest.json").read_bytes()}
    assert release.move_channels(
        "1.0", ["canary"], lambda key, data: moved.append((key, data)), lake_keys.channel_key, **signed
    ) == ["releases/channels/canary.json"]
    assert json.loads(moved[0][1])["manifest"] == "1.0/manifest.json"
    with pytest.raises(release.ReleaseError, match="channel '../x'"):
        release.move_channels(
            "1.0", ["ok", "../x"], lambda key, data: moved.append((key, data)), lake_keys.channel_key, **signed
        )
    assert len(moved) == 1  # no channel moved when one of them is refused


def test_manifest_parser_names_bad_fields():
    base = {
        "format": 1,
        "version": "1",
        "classes": ["a"],
        "imgsz": 64,
        "files": [{"path": "m.onnx", "sha256": "0" * 64, "size": 1, "role": "model"}],
    }
    parse_manifest(json.dumps(base).encode())
    for change, message in [
        ({"format": 2}, "field 'format'"),
        ({"version": "a/b"}, "field 'version'"),
        ({"classes": []}, "field 'classes'"),
        ({"files": [{"path": "/etc/passwd", "sha256": "0" * 64, "size": 1, "role": "model"}]}, "must be relative"),
        ({"files": [{"path": "m.onnx", "sha256": "xyz", "size": 1, "role": "model"}]}, "'sha256'"),
        ({"files": [{"path": "m.onnx", "sha256": "0" * 64, "size": -1, "role": "model"}]}, "'size'"),
    ]:
        with pytest.raises(ManifestError, match=message):
            parse_manifest(json.dumps({**base, **change}).encode())


def test_signing_key_prefers_config_then_setting_else_the_development_key(tmp_path, signing_keys):
    private_pem, public_pem, public_path = signing_keys
    key_file = public_path.with_name("release.key")
    other = tmp_path / "other.key"
    release.load_or_create_signing_key(other)
    assert release.signing_key_path(tmp_path, str(key_file), str(other)) == (key_file, False)
    assert release.signing_key_path(tmp_path, None, str(key_file)) == (key_file, False)
    assert release.load_or_create_signing_key(release.signing_key_path(tmp_path, None, str(key_file))[0]) == (
        private_pem,
        public_pem,
    )
    dev_path, is_dev = release.signing_key_path(tmp_path)
    assert (dev_path, is_dev) == (tmp_path / "keys" / "release-dev.key", True)
    dev_private, dev_public = release.load_or_create_signing_key(dev_path)
    assert dev_path.read_bytes() == dev_private and dev_public != public_pem
    assert (tmp_path / "keys" / "release-dev.key.pub").read_bytes() == dev_public  # what the README has devices pin
    with pytest.raises(release.ReleaseError, match="config signing_key=.*missing.key.*no such file"):
        release.signing_key_path(tmp_path, str(tmp_path / "missing.key"))


def test_a_manifest_may_leave_out_a_refused_int8_model_and_says_why(tmp_path):
    private_pem, public_pem = release.load_or_create_signing_key(tmp_path / "k.key")
    files = _files(tmp_path)
    why = {"why": "mAP50 FP32 0.4850 vs INT8 0.4550: drop +0.0300 exceeds the margin 0.01", "margin": 0.01}
    manifest = release.write_release(
        tmp_path / "rel",
        files,
        version="2.0.0",
        classes=["a"],
        imgsz=96,
        private_key_pem=private_pem,
        refused={"model_int8": why},
    )
    assert manifest["refused"] == {"model_int8": why}
    parsed = verify_release_dir(tmp_path / "rel", public_pem)
    assert parsed.refused == {"model_int8": why} and parsed.file_for_role("model_int8") is None
    older = dict(manifest)
    del older["refused"]
    assert parse_manifest(json.dumps(older).encode()).refused == {}  # manifests without the key stay valid
    for refused, rule in [
        ({"model": why}, "only model_int8 can be refused"),
        ({"model_int8": {"margin": 0.01}}, "non-empty 'why'"),
        ([], "must be an object"),
    ]:
        with pytest.raises(ManifestError, match=rule):
            parse_manifest(json.dumps({**manifest, "refused": refused}).encode())
    with pytest.raises(release.ReleaseError, match="also carries a file with that role"):
        release.build_manifest(
            "2.0.1",
            [*files, (tmp_path / "in" / "model.onnx", "model_int8.onnx", "model_int8")],
            ["a"],
            96,
            refused={"model_int8": why},
        )
