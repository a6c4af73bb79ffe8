"""scripts/gpu_check.sh, end to end on the CPU with tiny settings: what a GPU session will run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_the_cpu(synthetic_mitdb, tmp_path):
    overrides = " ".join(
        f"-S {o}"
        for o in (
            f"runtime.records_dir={synthetic_mitdb}",
            "preprocess.records=[100,101,103]",
            "runtime.workers=1",
            "model.width=4",
            "model.nz=8",
            "train.batch_size=16",
        )
    )
    env = {**os.environ, "GPU_CHECK_OVERRIDES": overrides}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    out = tmp_path / "out"
    done = subprocess.run(
        [str(SCRIPT), str(out), "--tiny"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "bench-step.json", "env.txt", "log.txt", "mlflow.db", "runs.tar.gz", "timings.json",
    ]  # fmt: skip
    bench = json.loads((out / "bench-step.json").read_text())
    assert bench["eager"]["s_per_epoch"] > 0 and bench["graphed"]["available"] is False
    timings = json.loads((out / "timings.json").read_text())
    assert timings["failed_runs"] == 0 and [r["seed"] for r in timings["runs"]] == [0, 1]
    assert all(r["epochs"] == 1 and 0 <= r["test_auc_val_auc_pick"] <= 1 for r in timings["runs"])
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"intra-fold0-seed0.json", "intra-fold0-seed1.json"} <= names
    assert "torch" in (out / "env.txt").read_text()
