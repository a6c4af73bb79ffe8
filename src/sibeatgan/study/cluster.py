"""Study runs as Ray tasks: on a local Ray cluster started for the grid, or on an existing
cluster by address. Each run is one task in a fresh worker process with its CPU threads (and a
share of a GPU where the cluster has one); a student's task takes its teacher's result as an
argument, so Ray starts it only once the teacher has finished, and never if the teacher failed.

Workers get the driver's working directory and its MLflow / MITDB environment, so relative
paths and the tracking store mean the same on every worker: on a cluster of several machines,
every node needs the project installed and the repository at the same path (a shared folder),
and the tracking store a server every node reaches (docs/scale-out.md).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

DEFAULT_GPU_SHARE = 0.25  # runs share a GPU four at a time unless told otherwise
FORWARDED_PREFIXES = ("MLFLOW_", "MITDB_DIR")
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # results are run summaries: a few kB each


class ClusterError(Exception):
    """No Ray cluster to run on, or one that cannot give what the runs ask for."""


@dataclass(frozen=True)
class Skipped:
    """A task that never ran because the task it depends on failed."""

    because: Any


def forwarded_env() -> dict[str, str]:
    """The driver's environment that decides where runs log and read data."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}


@contextmanager
def connected(address: str | None, cpus: int) -> Iterator[None]:
    """Ray, for the duration: a local cluster of `cpus` CPUs when `address` is None (stopped on
    exit), else the cluster at `address` (e.g. `ray://head:10001`, or `auto` for the cluster this
    machine belongs to), disconnected on exit."""
    import ray

    runtime_env = {"env_vars": forwarded_env()}
    options: dict[str, Any] = {"log_to_driver": False, "runtime_env": runtime_env}
    if address is None:
        options |= {
            "num_cpus": cpus,
            "include_dashboard": False,
            "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
        }
    if address is not None:
        check_reachable(address)
    try:
        # "local": always a new cluster of our own, never one `ray start` left on this machine
        ray.init(address=address or "local", **options)
    except (ConnectionError, ValueError) as err:  # no cluster; ray:// without ray[client]
        raise ClusterError(
            f"cannot join the Ray cluster at {address} ({err}); start one with `ray start "
            "--head`, or leave out --ray to use a local one"
        ) from err
    try:
        yield
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # `auto`, or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ClusterError(
            f"no Ray cluster answers at {address} ({err.strerror or err}); start one there "
            "with `ray start --head`, or leave out --ray to use a local one"
        ) from err


def gpu_share(requested: float | None) -> float:
    """The GPU fraction each run asks for: `requested`, else DEFAULT_GPU_SHARE where the
    cluster has GPUs and 0 where it has none."""
    import ray

    total = ray.cluster_resources().get("GPU", 0)
    if requested is None:
        return DEFAULT_GPU_SHARE if total else 0.0
    if requested > 0 and not total:
        raise ClusterError(
            f"--gpus-per-run {requested} but the Ray cluster has no GPU; leave it out or use 0"
        )
    return requested


def _call_in(cwd: str, fn: Callable, args: tuple, _after: Any = None) -> Any:
    """Run `fn(*args)` in the driver's working directory. `_after` is the result of the task
    this one depends on: Ray resolves it first, which is the whole point of passing it."""
    os.chdir(cwd)
    return fn(*args)


def run_graph(
    tasks: list,
    depends: dict,
    make: Callable[[Any], tuple[Callable, tuple]],
    cpus: int,
    gpus: float | None,
    submitted: Callable[[Any], None],
) -> Iterator[tuple[Any, Any]]:
    """Submit every task (`make(task)` gives the function and its arguments; a task in
    `depends` waits for the one it maps to, which must come earlier in `tasks`), then yield
    (task, outcome) as each ends: its result, the exception it raised, or Skipped."""
    import ray

    remote = ray.remote(num_cpus=cpus, num_gpus=gpu_share(gpus), max_calls=1, max_retries=0)(
        _call_in
    )
    refs = {}
    for task in tasks:
        fn, args = make(task)
        after = depends.get(task)
        refs[task] = remote.remote(os.getcwd(), fn, args, refs[after] if after else None)
        submitted(task)
    pending = {ref: task for task, ref in refs.items()}
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(ready)
        try:
            yield task, ray.get(ready)
        except ray.exceptions.RayError as err:  # the run raised, or its worker or node died
            after = depends.get(task)
            if after is not None and _failed(refs[after]):
                yield task, Skipped(after)
            else:
                cause = getattr(err, "cause", None)
                yield task, cause if isinstance(cause, BaseException) else err


def _failed(ref) -> bool:
    import ray

    try:
        ray.get(ref, timeout=0)
    except Exception:
        return True
    return False
