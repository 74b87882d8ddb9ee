"""Start and stop a Label Studio server (its own virtual environment, scripts/install-services) on 127.0.0.1.

The server keeps its database and media in a temp folder, serves local files below ``document_root``, never
reaches the internet (no version check, no error reporting) and has one user, whose personal access token the
tests and the pipeline use.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("ALUMI_LABEL_STUDIO_VENV", REPO / ".tools" / "label-studio"))
EMAIL = "qa@alumi.test"
PASSWORD = "alumi-review-2026"


class LabelStudioUnavailable(RuntimeError):
    """Label Studio is not installed here (scripts/install-services installs it)."""


def label_studio_python() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "label-studio").exists() or not python.exists():
        raise LabelStudioUnavailable(f"label-studio not found in {VENV}; run scripts/install-services")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    def __init__(self, data_dir: Path, document_root: Path):
        self.data_dir = Path(data_dir)
        self.document_root = Path(document_root)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.token = ""
        self.log = self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 420.0) -> LabelStudioServer:
        label_studio_python()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "LABEL_STUDIO"))},
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": EMAIL,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        }
        command = [
            str(VENV / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait(timeout_s)
        self.token = self._personal_access_token()
        return self

    def _wait(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabelStudioUnavailable(f"label-studio exited with {self.process.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise LabelStudioUnavailable(f"label-studio did not answer /health within {timeout_s:.0f} s: {self.tail()}")

    def session(self):
        """An httpx client logged in as the user through the web form (as a browser would)."""
        import httpx

        client = httpx.Client(base_url=self.url, timeout=30)
        client.get("/user/login/")
        response = client.post(
            "/user/login/",
            data={"email": EMAIL, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies.get("csrftoken")},
            headers={"Referer": f"{self.url}/user/login/"},
        )
        if response.status_code not in (200, 302):
            raise LabelStudioUnavailable(f"login to label-studio failed ({response.status_code})")
        return client

    def _personal_access_token(self) -> str:
        client = self.session()
        try:
            headers = {"X-CSRFToken": client.cookies.get("csrftoken"), "Referer": self.url}
            response = client.post("/api/token/", headers=headers)
            if response.status_code != 201:
                raise LabelStudioUnavailable(f"creating a personal access token failed: {response.text[:200]}")
            return response.json()["token"]
        finally:
            client.close()

    def tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
