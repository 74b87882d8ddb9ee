"""Start `dagster dev` on loopback with a fresh instance, for tests that drive the UI."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _restore_sigint():
    # started from a script, dagster dev inherits SIGINT as ignored and then ignores SIGTERM too
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()


class DagsterDev:
    def __init__(self, env: dict, log: Path):
        self.env, self.log = env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def __enter__(self):
        cmd = [
            str(BIN / "dagster"),
            "dev",
            "-m",
            "alumi_pipelines.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=self._out, stderr=subprocess.STDOUT, preexec_fn=_restore_sigint
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"dagster dev did not answer within 120 s: {self.log.read_text()[-3000:]}")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


def instance_env(tmp: Path) -> dict:
    home = tmp / "alumi"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    return {
        **os.environ,
        "ALUMI_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "ALUMI_PROFILE": "ci",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
