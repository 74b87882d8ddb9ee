"""A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's server binaries), one per test session.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` system user (the
Debian package creates it). The tests that use it skip, saying why, where the binaries are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "alumi-test-password"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables deploy/dagster.postgres.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.database,
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def connect(self):
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.database
        )


def find_postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, pg_ctl and postgres (or ALUMI_PG_BIN)."""
    candidates = [os.environ.get("ALUMI_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin; run scripts/install-services")
    run_as: dict = {}
    base = Path(tempfile.mkdtemp(prefix="alumi-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root, and there is no 'postgres' user to own the throwaway cluster")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        run_as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    pwfile = base / "pwfile"

    def as_owner(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(c) for c in command],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=base,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"},
            **run_as,
        )

    try:
        sockets.mkdir()
        pwfile.write_text(PASSWORD)
        if run_as:
            for path in (sockets, pwfile):
                os.chown(path, run_as["user"], run_as["group"])
        init = as_owner(
            bindir / "initdb",
            "-D",
            data,
            "-U",
            "alumi",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-400:]}")
        port = _free_port()
        options = (
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=50"
        )
        started = as_owner(
            bindir / "pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start", timeout=90
        )
        if started.returncode != 0:
            log_tail = log.read_text()[-600:] if log.exists() else ""
            pytest.skip(f"PostgreSQL did not start: {started.stderr.strip()[-300:]} {log_tail}")
        server = PostgresServer("127.0.0.1", port, "alumi", PASSWORD, "postgres")
        _create_database(server, "dagster")
        yield PostgresServer("127.0.0.1", port, "alumi", PASSWORD, "dagster")
    finally:
        if data.exists():
            as_owner(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server) -> PostgresServer:
    """The session's server with a database of this test's own (nothing another test stored is in it)."""
    import uuid

    name = f"dagster_{uuid.uuid4().hex[:12]}"
    _create_database(postgres_server, name)
    server = postgres_server
    return PostgresServer(server.host, server.port, server.user, server.password, name)


def _create_database(server: PostgresServer, name: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            connection = server.connect()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
