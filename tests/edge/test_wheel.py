"""The alumi-edge wheel in a fresh virtual environment without dagster or torch, serving real HTTP on loopback.

The environment is cached between runs in a folder keyed by the wheel's dependency list and the
Python version (``ALUMI_EDGE_TEST_VENV_CACHE``, default ``~/.cache/alumi-edge-test``); each run
reinstalls only the freshly built wheel.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from edge_support import EDGE_SRC, JWT_SECRET, color_image, encode, make_token

PIP_TIMEOUT_S = 900


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "ALUMI_EDGE_"))}
    env.update(extra)
    return env


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, env=kwargs.pop("env", _clean_env()), **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    return sorted(
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )


def _venv_for(wheel: Path) -> Path:
    """A venv holding the wheel's dependencies (cached by dependency list) with this wheel installed."""
    requirements = _requirements(wheel)
    key = hashlib.sha256(json.dumps([sys.version_info[:2], requirements]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("ALUMI_EDGE_TEST_VENV_CACHE", Path.home() / ".cache" / "alumi-edge-test"))
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"venv-{key}"
    python = venv / "bin" / "python"
    with (cache / f"venv-{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            base_python = getattr(sys, "_base_executable", sys.executable)
            _run([base_python, "-m", "venv", str(venv)], timeout=300)
            _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], timeout=PIP_TIMEOUT_S)
            (venv / ".complete").write_text("\n".join(requirements))
        _run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)],
            timeout=PIP_TIMEOUT_S,
        )
    return venv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory) -> Path:
    from alumi_pipelines.lib.export.release import build_edge_wheel

    wheel = build_edge_wheel(EDGE_SRC, tmp_path_factory.mktemp("wheel"))
    assert wheel.name == "alumi_edge-0.1.0-py3-none-any.whl"
    return _venv_for(wheel)


def test_fresh_venv_has_no_pipeline_stack_and_the_wheel_installed(edge_venv):
    python = str(edge_venv / "bin" / "python")
    for module in ("dagster", "torch", "ultralytics", "polars"):
        result = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, env=_clean_env())
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, module
    where = _run([python, "-c", "import alumi_edge, cv2, onnxruntime; print(alumi_edge.__file__)"]).stdout.strip()
    assert where.startswith(str(edge_venv)), where
    assert _run([str(edge_venv / "bin" / "alumi-edge"), "--version"]).stdout.strip() == "alumi-edge 0.1.0"


def test_installed_server_pulls_and_serves_real_http(edge_venv, tmp_path, release_store, signing_keys):
    release_store.publish("3.1.0")
    home = tmp_path / "device"
    cli = str(edge_venv / "bin" / "alumi-edge")
    pulled = _run(
        [
            cli,
            "pull",
            "--source",
            f"file://{release_store.root}",
            "--pubkey",
            str(signing_keys[2]),
            "--home",
            str(home),
        ],
        timeout=120,
    )
    assert json.loads(pulled.stdout)["version"] == "3.1.0"

    port = _free_port()
    env = _clean_env(
        ALUMI_EDGE_JWT_SECRET=JWT_SECRET,
        ALUMI_EDGE_MAX_BODY_BYTES="100000",
        ALUMI_EDGE_DEVICE_ID="wheel-test",
        ALUMI_EDGE_LOG_LEVEL="warning",
    )
    log_file = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [cli, "serve", "--home", str(home), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready after 60 s"
            time.sleep(0.2)
        token = {"Authorization": f"Bearer {make_token()}"}
        with httpx.Client(base_url=base, timeout=30) as http:
            good = http.post(
                "/v1/detect", files={"file": ("plate.png", encode(color_image(128, 128)), "image/png")}, headers=token
            )
            assert good.status_code == 200, good.text
            body = good.json()
            assert body["model_version"] == "3.1.0" and body["runtime"] == "onnxruntime-cpu"
            assert [
                (b["class_name"], round(b["x1"]), round(b["y1"]), round(b["x2"]), round(b["y2"])) for b in body["boxes"]
            ] == [("red", 32, 32, 64, 64)]

            bad = http.post("/v1/detect", content=b"GIF89a not really", headers={**token, "Content-Type": "image/gif"})
            assert bad.status_code == 415 and bad.json()["error"] == "unsupported_media_type"
            truncated = http.post(
                "/v1/detect",
                content=encode(color_image(), ".jpg")[:-300],
                headers={**token, "Content-Type": "image/jpeg"},
            )
            assert truncated.status_code == 400 and truncated.json()["error"] == "corrupt_image"
            anonymous = http.post("/v1/detect", content=encode(color_image()), headers={"Content-Type": "image/png"})
            assert anonymous.status_code == 401 and anonymous.json()["error"] == "token_missing"
            oversized = http.post(
                "/v1/detect",
                content=b"\x89PNG\r\n\x1a\n" + b"0" * 150_000,
                headers={**token, "Content-Type": "image/png"},
            )
            assert oversized.status_code == 413 and oversized.json()["error"] == "payload_too_large"
            feedback = http.post(
                "/v1/feedback",
                headers=token,
                json={
                    "kind": "false_positive",
                    "image_sha256": body["image"]["sha256"],
                    "class_name": "red",
                    "box": {"x1": 32, "y1": 32, "x2": 64, "y2": 64},
                    "author": "qa",
                },
            )
            assert feedback.status_code == 201
            again = http.post(
                "/v1/detect", content=encode(color_image(128, 128)), headers={**token, "Content-Type": "image/png"}
            )
            assert again.status_code == 200 and again.json()["boxes"][0]["class_name"] == "red"
            metrics = http.get("/metrics").text
            assert 'alumi_edge_detections_total{class_name="red"} 2.0' in metrics
            assert "alumi_edge_feedback_pending 1.0" in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        log_file.close()
    log = (tmp_path / "serve.log").read_text()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells who stopped it
    assert code in (0, -signal.SIGTERM) and "Traceback" not in log, log
