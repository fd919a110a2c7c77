"""A real PostgreSQL server for a test: initdb + pg_ctl on a temporary folder and a free loopback port.

The Debian postgresql package (.ci/run installs it) puts the binaries in /usr/lib/postgresql/<v>/bin. As root,
initdb refuses to run, so the server runs as the `postgres` user (runuser) on a folder chowned to it.
`postgres_server()` skips the test with the reason when the binaries are absent; any other failure is an error.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0
    )
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: Path, root: Path):
        self.bindir, self.root = bindir, root
        self.data = root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60, cwd=self.root)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        r = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8", check=False)
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")

    def start(self) -> None:
        # unix sockets in our folder (not /var/run/postgresql, which may be absent), TCP on loopback only
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=20"
        r = self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "30", "start", check=False
        )
        if r.returncode:
            log = (self.root / "log").read_text()[-800:] if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-300:]} {log}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            time.sleep(0.05)  # polling for a port with a deadline, not a synchronisation sleep
        raise RuntimeError(f"postgres did not listen on {self.port}")


@contextlib.contextmanager
def postgres_server():
    """A started server (PostgresServer), stopped and removed afterwards; skips when the binaries are absent."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries absent (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="agpt-pg-"))
    srv = PostgresServer(bindir, root)
    try:
        srv.init()
        srv.start()
        srv.wait_ready()
        yield srv
    finally:
        srv.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
