"""pull → verify → switch → rollback on real release folders; refused releases; a pull killed midway."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from edge_support import EDGE_SRC

from alumi_edge.device_home import DeviceHome
from alumi_edge.manifest import ChecksumError, ManifestError, SignatureError
from alumi_edge.pull import pull
from alumi_edge.selftest import SelfTestError


def _edge_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(EDGE_SRC)}
    return subprocess.run(
        [sys.executable, "-m", "alumi_edge", *args], env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


def _assert_untouched(home: Path, version: str | None, refused: str):
    device = DeviceHome(home)
    assert device.current_version() == version
    names = [p.name for p in device.versions_dir.iterdir()]
    assert not any(name.startswith(".partial-") for name in names), names
    assert refused not in names


def test_pull_switch_rollback_cycle(tmp_path, release_store, signing_keys):
    _, public_pem, _ = signing_keys
    home = tmp_path / "device"
    release_store.publish("1.0.0")
    first = pull(str(release_store.root), home, public_pem)
    assert (first.status, first.version, first.previous) == ("switched", "1.0.0", None)
    device = DeviceHome(home)
    assert os.readlink(home / "current") == "versions/1.0.0"
    assert device.model_path().read_bytes() == (release_store.root / "1.0.0" / "model.onnx").read_bytes()
    assert pull(str(release_store.root), home, public_pem).status == "up-to-date"

    release_store.publish("1.1.0")
    second = pull(f"file://{release_store.root}", home, public_pem)
    assert (second.status, second.version, second.previous) == ("switched", "1.1.0", "1.0.0")
    assert (device.current_version(), device.previous_version()) == ("1.1.0", "1.0.0")
    assert (home / "current" / "manifest.json").is_file()

    info = _edge_cli("info", "--home", str(home), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["current"] == "1.1.0"
    rolled = _edge_cli("rollback", "--home", str(home))
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout) == {"status": "rolled-back", "from": "1.1.0", "to": "1.0.0"}
    assert (device.current_version(), device.previous_version()) == ("1.0.0", "1.1.0")
    assert _edge_cli("info", "--home", str(home)).stdout.splitlines()[0] == "current: 1.0.0"

    # a routine pull does not re-install the version the operator rolled back from; --force does
    assert pull(str(release_store.root), home, public_pem).status == "skipped-rolled-back"
    assert device.current_version() == "1.0.0"
    forced = pull(str(release_store.root), home, public_pem, force=True)
    assert (forced.status, device.current_version()) == ("switched", "1.1.0")


def test_pull_prunes_old_versions_but_keeps_current_and_previous(tmp_path, release_store, signing_keys):
    _, public_pem, _ = signing_keys
    home = tmp_path / "device"
    for version in ("1", "2", "3", "4"):
        release_store.publish(version)
        pull(str(release_store.root), home, public_pem, keep=2)
    device = DeviceHome(home)
    assert sorted(device.installed_versions()) == ["3", "4"]
    assert (device.current_version(), device.previous_version()) == ("4", "3")


def test_tampered_file_is_refused_and_current_stays(tmp_path, release_store, signing_keys):
    _, public_pem, _ = signing_keys
    home = tmp_path / "device"
    release_store.publish("1.0.0")
    pull(str(release_store.root), home, public_pem)
    folder = release_store.publish("1.1.0")
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    model.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="model.onnx: sha256"):
        pull(str(release_store.root), home, public_pem)
    _assert_untouched(home, "1.0.0", "1.1.0")
    result = _edge_cli(
        "pull", "--source", str(release_store.root), "--pubkey", str(signing_keys[2]), "--home", str(home)
    )
    assert result.returncode == 3
    assert "release refused, current version unchanged" in result.stderr and "model.onnx" in result.stderr


def test_bad_signature_is_refused(tmp_path, release_store, signing_keys):
    from alumi_pipelines.lib.export.release import load_or_create_signing_key, sign_manifest

    _, public_pem, _ = signing_keys
    home = tmp_path / "device"
    release_store.publish("1.0.0")
    pull(str(release_store.root), home, public_pem)
    folder = release_store.publish("1.1.0")
    attacker_key, _ = load_or_create_signing_key(tmp_path / "attacker.key")
    (folder / "manifest.sig").write_bytes(sign_manifest((folder / "manifest.json").read_bytes(), attacker_key))
    with pytest.raises(SignatureError):
        pull(str(release_store.root), home, public_pem)
    _assert_untouched(home, "1.0.0", "1.1.0")

    # a manifest edited after signing (e.g. to point at another model hash) is refused as well
    (folder / "manifest.sig").write_bytes(
        sign_manifest((folder / "manifest.json").read_bytes(), release_store.private_pem)
    )
    manifest = json.loads((folder / "manifest.json").read_bytes())
    manifest["metrics"]["map50"] = 0.99
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(SignatureError, match="does not match"):
        pull(str(release_store.root), home, public_pem)
    _assert_untouched(home, "1.0.0", "1.1.0")


def test_failing_self_test_is_refused(tmp_path, release_store, signing_keys):
    _, public_pem, _ = signing_keys
    home = tmp_path / "device"
    release_store.publish("1.0.0")
    pull(str(release_store.root), home, public_pem)
    wrong = {
        "conf": 0.25,
        "iou": 0.7,
        "boxes": [{"class_id": 1, "class_name": "green", "confidence": 0.9, "x1": 0, "y1": 0, "x2": 32, "y2": 32}],
    }
    release_store.publish("1.1.0", expected=wrong)
    with pytest.raises(SelfTestError, match="expected green box .* was not detected"):
        pull(str(release_store.root), home, public_pem)
    _assert_untouched(home, "1.0.0", "1.1.0")


def test_every_model_of_the_release_is_self_tested(tmp_path, release_store, signing_keys):
    """The INT8 model has its own expected boxes: a release whose INT8 model disagrees is refused."""
    from edge_support import release_int8_boxes

    _, public_pem, _ = signing_keys
    home = tmp_path / "device"
    good = release_int8_boxes(tmp_path)
    assert {b["class_name"] for b in good} == {"red", "blue"}
    release_store.publish("1.0.0", int8_boxes=good)
    lines: list[str] = []
    pull(str(release_store.root), home, public_pem, log=lines.append)
    assert any("(model.onnx, model_int8.onnx)" in line for line in lines)
    wrong = [dict(b, class_id=1, class_name="green") if b["class_name"] == "red" else b for b in good]
    release_store.publish("1.1.0", int8_boxes=wrong)
    with pytest.raises(SelfTestError, match=r"model_int8\.onnx .*expected green box"):
        pull(str(release_store.root), home, public_pem)
    _assert_untouched(home, "1.0.0", "1.1.0")


def test_channel_pointer_outside_releases_is_refused(tmp_path, release_store, signing_keys):
    _, public_pem, _ = signing_keys
    (release_store.root / "channels").mkdir()
    (release_store.root / "channels" / "stable.json").write_text(json.dumps({"version": "../../etc"}))
    with pytest.raises(ManifestError, match="field 'version'"):
        pull(str(release_store.root), tmp_path / "device", public_pem)


class _ReleaseHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the release store; sends files in small slow chunks while ``server.slow`` is set."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        path = Path(self.server.root) / self.path.split("?", 1)[0].lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = 16384 if self.server.slow else len(data) or 1
        try:
            for start in range(0, len(data), step):
                self.wfile.write(data[start : start + step])
                if self.server.slow:
                    time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def http_release_server(release_store):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ReleaseHandler)
    server.root, server.slow, server.requests = str(release_store.root), False, []
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_pull_killed_midway_leaves_current_and_is_cleaned_next_time(
    tmp_path, release_store, signing_keys, http_release_server
):
    _, _, pubkey_path = signing_keys
    home = tmp_path / "device"
    base = f"http://127.0.0.1:{http_release_server.server_port}/?sv=2026-01-01&sp=r&se=2099-01-01T00:00:00Z&sig=secret"
    release_store.publish("1.0.0")
    first = _edge_cli("pull", "--source", base, "--pubkey", str(pubkey_path), "--home", str(home))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["version"] == "1.0.0"
    assert all("sig=secret" in path for path in http_release_server.requests)  # the SAS query rides along

    release_store.publish("1.1.0", extra_bytes=3 * 1024 * 1024)  # about 10 s at the slow rate
    http_release_server.slow = True
    env = {**os.environ, "PYTHONPATH": str(EDGE_SRC)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alumi_edge",
            "pull",
            "--source",
            base,
            "--pubkey",
            str(pubkey_path),
            "--home",
            str(home),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    partial_plan = home / "versions" / ".partial-1.1.0" / "build_plan.bin"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (partial_plan.is_file() and partial_plan.stat().st_size > 100_000):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    assert partial_plan.is_file(), "the download never started"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    process.stdout.close()
    process.stderr.close()

    device = DeviceHome(home)
    assert device.current_version() == "1.0.0"
    assert os.readlink(home / "current") == "versions/1.0.0"
    assert (home / "versions" / ".partial-1.1.0").is_dir()
    assert not (home / "versions" / "1.1.0").exists()

    http_release_server.slow = False
    again = _edge_cli("pull", "--source", base, "--pubkey", str(pubkey_path), "--home", str(home))
    assert again.returncode == 0, again.stderr
    assert "removed partial downloads of an interrupted pull: .partial-1.1.0" in again.stderr
    assert json.loads(again.stdout)["status"] == "switched"
    assert (device.current_version(), device.previous_version()) == ("1.1.0", "1.0.0")
    assert not (home / "versions" / ".partial-1.1.0").exists()


def test_unreachable_source_fails_cleanly(tmp_path, signing_keys):
    result = _edge_cli(
        "pull",
        "--source",
        str(tmp_path / "nowhere"),
        "--pubkey",
        str(signing_keys[2]),
        "--home",
        str(tmp_path / "device"),
    )
    assert result.returncode == 4
    assert "source unreachable, current version unchanged" in result.stderr and "channels/stable.json" in result.stderr
