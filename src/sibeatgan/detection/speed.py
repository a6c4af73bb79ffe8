"""How fast detection is: `sibeatgan detect` on a record end to end (a fresh process, imports
included), and a served detector's throughput (batches of beats posted over HTTP)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sibeatgan.detection.model import resolve_detector
from sibeatgan.detection.records import read_for_detection
from sibeatgan.detection.serve import post_beats, served


def end_to_end_s(record: str, model: str, out: Path) -> float:
    """Wall time of `sibeatgan detect RECORD --model MODEL` in a new process."""
    command = [str(Path(sys.executable).with_name("sibeatgan")), "detect", record]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--model", model, "--out", str(out)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"detect failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    return seconds


def servable_uri(model: str, store: Path) -> str:
    """An MLflow URI for `model`: itself, or for a model folder the detector logged into a
    scratch tracking store (MLFLOW_TRACKING_URI is pointed at it for the server)."""
    if not Path(model).is_dir():
        return model
    import mlflow

    from sibeatgan import tracking

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    tracking.setup()
    with mlflow.start_run(run_name="bench-detect"):
        return tracking.log_detector(Path(model))


def bench_detect(
    record: str,
    model: str,
    batch: int = 256,
    requests_n: int = 20,
    echo: Callable[[str], None] = print,
) -> dict:
    detector = resolve_detector(model)
    beats = read_for_detection(record, detector).beats
    with tempfile.TemporaryDirectory(prefix="sibeatgan-bench-") as tmp:
        seconds = end_to_end_s(record, model, Path(tmp) / "out")
        echo(
            f"detect end to end: {Path(record).name}, {len(beats.cls)} beats in {seconds:.2f} s "
            f"({len(beats.cls) / seconds:,.0f} beats/s, imports and report included)"
        )
        x = beats.x[:batch, 0]
        with served(servable_uri(model, Path(tmp)), Path(tmp) / "server.log") as url:
            post_beats(url, x)  # warm-up
            started = time.perf_counter()
            for _ in range(requests_n):
                answer = post_beats(url, x)
            served_s = time.perf_counter() - started
        assert len(answer["score"]) == len(x)
    rate = requests_n * len(x) / served_s
    echo(
        f"served: {rate:,.0f} beats/s ({requests_n} requests of {len(x)} beats, "
        f"{1000 * served_s / requests_n:.0f} ms each, JSON over loopback HTTP)"
    )
    return {
        "record": Path(record).name,
        "beats": int(len(beats.cls)),
        "detect_s": round(seconds, 3),
        "served_batch": int(len(x)),
        "served_beats_per_s": round(rate, 1),
        "served_ms_per_request": round(1000 * served_s / requests_n, 1),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
    }
