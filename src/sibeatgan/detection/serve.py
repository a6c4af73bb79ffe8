"""The detector behind `mlflow models serve`: start it on the loopback interface, post beats
to it, stop it. Used by the served-throughput benchmark and the serving test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve_command(model_uri: str, port: int) -> list[str]:
    mlflow = Path(sys.executable).with_name("mlflow")
    return [str(mlflow), "models", "serve", "-m", model_uri, "--env-manager", "local"] + [
        "-h", HOST, "-p", str(port), "-w", "1",
    ]  # fmt: skip


def server_env() -> dict[str, str]:
    """This environment with this interpreter's scripts first on PATH: the server starts
    uvicorn by name."""
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def served(model_uri: str, log: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` on a free loopback port, its output in `log`;
    yields the server's base URL once /ping answers, and stops the server (its whole process
    group) on leaving. Raises RuntimeError with the log's tail if it does not come up."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            serve_command(model_uri, port), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=server_env(),
        )  # fmt: skip
    try:
        _wait_until_up(url, proc, log, timeout_s)
        yield url
    finally:
        _stop(proc)


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"the model server at {url} did not come up in {timeout_s:.0f} s:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def post_beats(url: str, beats: np.ndarray, threshold: str | None = None) -> dict:
    """POST beats (n x 320) to /invocations; the answer's predictions: score, flag, heat. A
    refusal raises HTTPError with the server's one-line reason."""
    payload: dict = {"inputs": np.asarray(beats, dtype=np.float32).tolist()}
    if threshold:
        payload["params"] = {"threshold": threshold}
    response = requests.post(f"{url}/invocations", json=payload, timeout=60)
    if not response.ok:
        raise requests.HTTPError(
            f"the detector at {url} answered {response.status_code}: {_reason(response)}",
            response=response,
        )
    return response.json()["predictions"]


def _reason(response: requests.Response) -> str:
    """The message of an error answer ({"error_code", "message"}), or the start of its text."""
    try:
        return str(response.json()["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
