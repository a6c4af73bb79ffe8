"""Throwaway services for the scale-out tests: a PostgreSQL cluster in a temporary folder and an
`mlflow server` on top of it, both on loopback ports, both bounded in time (each runs under
`timeout`, so it stops by itself even if the test process dies)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import requests

LIFETIME_S = 1500  # the longest any service started here lives
REQUIRED = "SIBEATGAN_REQUIRE_SERVICES"  # set by CI: a missing PostgreSQL fails, never skips


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (postgresql package), or those on PATH."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _wait(ready, what: str, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting")
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not up after {timeout_s:.0f} s")


@contextmanager
def postgres_cluster(database: str = "mlflow"):
    """A fresh cluster (initdb, trust auth on loopback only) with one database; yields its
    SQLAlchemy URI and stops the server on exit."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL not installed: apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="sibeatgan-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),  # fmt: skip
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        _as_postgres(["timeout", str(LIFETIME_S), str(bin_dir / "postgres"), "-D", str(data),
                      "-p", str(port), "-k", str(folder), "-c", "listen_addresses=127.0.0.1"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ready() -> bool:
        probe = [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        return subprocess.run(probe, capture_output=True).returncode == 0

    try:
        _wait(ready, "PostgreSQL", 60, server)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             database],
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast"]),
            capture_output=True,
        )
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


class TrackingServer:
    """`sibeatgan server` on a loopback port over `backend`, artifacts in `artifacts`; can be
    stopped and started again on the same port (the same store)."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        sibeatgan = str(Path(sys.executable).parent / "sibeatgan")  # this interpreter's
        command = ["timeout", str(LIFETIME_S), sibeatgan, "server", "--backend-store-uri",
                   self.backend, "--artifacts-destination", str(self.artifacts), "--port",
                   str(self.port), "--workers", "2"]  # fmt: skip
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait(self._healthy, "mlflow server", 120, self.process)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its workers
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
