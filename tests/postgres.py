"""A throwaway PostgreSQL server on loopback for the tuning tests.

TRAINOPT_TEST_POSTGRES=postgresql://… uses a server you run; otherwise the fixture starts a private cluster from
the Debian packages (initdb/pg_ctl; as the `postgres` user when the tests run as root, since PostgreSQL refuses
root). With neither, the tests skip — unless TRAINOPT_REQUIRE_POSTGRES=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str):
    if os.environ.get("TRAINOPT_REQUIRE_POSTGRES"):
        pytest.fail(f"PostgreSQL is required here (TRAINOPT_REQUIRE_POSTGRES) but {reason}")
    pytest.skip(f"no PostgreSQL server: {reason} (install Debian's postgresql or set TRAINOPT_TEST_POSTGRES)")


@pytest.fixture(scope="session")
def postgres_server():
    """A factory: postgres_server(name) creates database `name` and returns its URL."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed")
    url = os.environ.get("TRAINOPT_TEST_POSTGRES")
    if url:
        yield lambda name: _create_db(url, name)
        return
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl):
        _unavailable("initdb/pg_ctl not found")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="trainopt-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if not runuser:
            _unavailable("running as root without runuser to start the server as another user")
        as_user = [runuser, "-u", "postgres", "--"]
        base.chmod(0o755)
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", _free_port()
    init = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "trainopt", "--no-sync"],
                          capture_output=True, text=True)
    if init.returncode:
        _unavailable(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off"
    start = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
                           capture_output=True, text=True)
    if start.returncode:
        _unavailable(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    root = f"postgresql://trainopt@127.0.0.1:{port}/postgres"
    try:
        yield lambda name: _create_db(root, name)
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _create_db(root_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(root_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return root_url.rsplit("/", 1)[0] + f"/{name}"
