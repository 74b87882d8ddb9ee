"""Start and stop Azurite (the Azure Storage emulator, blob service only) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Azurite's well-known development account (public, documented by Microsoft; not a secret)
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LISTENING = re.compile(r"listens on http://127\.0\.0\.1:(\d+)")


class AzuriteUnavailable(RuntimeError):
    """Node.js or Azurite is not installed here (scripts/install-services installs it)."""


def find_azurite() -> list[str]:
    """The command that starts Azurite's blob service, or raise saying what is missing."""
    if shutil.which("node") is None:
        raise AzuriteUnavailable("node is not installed (Azurite needs Node.js >= 18); run scripts/install-services")
    candidates = [os.environ.get("ALUMI_AZURITE", ""), str(REPO / ".tools" / "node_modules" / ".bin" / "azurite-blob")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return [candidate]
    on_path = shutil.which("azurite-blob")
    if on_path:
        return [on_path]
    raise AzuriteUnavailable(
        f"azurite-blob not found in {REPO / '.tools'} nor on PATH; run scripts/install-services (npm azurite@3.35)"
    )


class AzuriteServer:
    """One Azurite blob service on a free loopback port, data in ``location`` (or in memory); stop() kills it."""

    def __init__(self, location: Path, in_memory: bool = False):
        self.location = Path(location)
        self.in_memory = in_memory
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._output: list[str] = []

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.account_url)

    def start(self, timeout_s: float = 30.0) -> AzuriteServer:
        storage = ["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.location)]
        command = find_azurite() + [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            *storage,
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--silent",
        ]
        self.location.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            command,
            cwd=self.location,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        found = threading.Event()

        def read_output() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self._output.append(line.rstrip())
                match = _LISTENING.search(line)
                if match:
                    self.port = int(match.group(1))
                    found.set()

        threading.Thread(target=read_output, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AzuriteUnavailable(f"Azurite did not start: {' | '.join(self._output[-10:]) or 'no output'}")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(self.connection_string) as client:
            client.create_container(name)

    def __enter__(self) -> AzuriteServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def connection_string(account_url: str, account_key: str = ACCOUNT_KEY) -> str:
    """A connection string for Azurite's development account at ``account_url`` (any host:port)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={account_key};BlobEndpoint={account_url};"
    )
