"""Which oneDNN kernels a piece of CPU work ran, and for how long: oneDNN's verbose mode prints
one line per executed primitive (its kind, the implementation chosen, e.g.
`brg_conv_fwd:avx512_core_amx` for the AMX matrix engine, and its time), which this module
captures and totals. The bench uses it to say whether the convolutions reach the matrix engine."""

from __future__ import annotations

import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager

import torch


@contextmanager
def _stdout_to(path: str):
    """The process's stdout (file descriptor 1, where oneDNN prints) into `path`."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as out:
        os.dup2(out.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def parse_verbose(lines: list[str]) -> dict[str, dict[str, float]]:
    """Total milliseconds and calls per `kind implementation` from oneDNN verbose lines
    (`onednn_verbose,[timestamp,]primitive,exec,cpu,KIND,IMPL,PROP,...,TIME`)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "calls": 0})
    for line in lines:
        fields = line.strip().split(",")
        if not fields or fields[0] not in ("onednn_verbose", "dnnl_verbose"):
            continue
        if "exec" not in fields:
            continue
        at = fields.index("exec")
        try:
            kind, impl, ms = fields[at + 2], fields[at + 3], float(fields[-1])
        except (IndexError, ValueError):
            continue
        entry = totals[f"{kind} {impl}"]
        entry["ms"] += ms
        entry["calls"] += 1
    return dict(totals)


def kernels_of(work: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Run `work` once with oneDNN verbose on; its primitives' time and calls by kind and
    implementation (empty where oneDNN prints nothing, e.g. a build without it)."""
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        with _stdout_to(log.name), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            work()
        return parse_verbose(log.read().splitlines())


def matrix_engine_share(totals: dict[str, dict[str, float]]) -> float | None:
    """The fraction of convolution and matmul time spent in AMX kernels (None: none ran)."""
    compute = {
        k: v
        for k, v in totals.items()
        if k.split()[0] in ("convolution", "matmul", "inner_product")
    }
    total = sum(v["ms"] for v in compute.values())
    if not total:
        return None
    return sum(v["ms"] for k, v in compute.items() if "amx" in k) / total


def summary_lines(totals: dict[str, dict[str, float]], top: int = 8) -> list[str]:
    """The `top` kernels by time, with their share of all oneDNN time."""
    total = sum(v["ms"] for v in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1]["ms"])[:top]
    return [
        f"  {100 * v['ms'] / total:5.1f}%  {v['ms']:8.1f} ms  {int(v['calls']):5d} calls  {name}"
        for name, v in ranked
    ]
