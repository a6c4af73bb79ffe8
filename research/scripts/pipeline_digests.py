"""Weight digests and logged metrics of a small `dvc repro` at a git revision, to show that a
restructuring changed no result.

    python research/scripts/pipeline_digests.py REV --mitdb DIR --out FILE.json \
        [--set KEY=VALUE ...]

Exports REV's tracked files to a temporary folder, sets 5 records, a 2-epoch teacher and a
2-epoch KD student on one thread (extra `--set` entries are written into params.yaml, e.g. for
a key that moved), runs `dvc repro` there with that tree's `src` first on the path, and writes
the sha256 of every model file and prepared array, the metrics files less their timings, and
every metric MLflow logged (full histories, timings left out). Compare two outputs with `diff`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RECORDS = [100, 106, 119, 208, 232]
TIMING = ("_s", "per_s", "time")


def timing(key: str) -> bool:
    return any(key.endswith(t) or t in key for t in TIMING)


def without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not timing(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def set_key(params: dict, dotted: str, value: object) -> None:
    *path, last = dotted.split(".")
    node = params
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def export(rev: str, into: Path) -> None:
    archive = subprocess.run(["git", "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def repro(root: Path, mitdb: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["sibeatgan", "fetch-data", "--from", str(mitdb)], cwd=root, env=env,
                   check=True)  # fmt: skip
    subprocess.run(["dvc", "repro"], cwd=root, env=env, check=True)


def file_digests(root: Path) -> dict[str, str]:
    files = [f for d in ("models", "data/prepared", "data/beats", "data/split")
             for f in sorted((root / d).rglob("*")) if f.is_file()]  # fmt: skip
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def logged_metrics(root: Path) -> dict[str, dict[str, list[float]]]:
    """Every run's metric histories, keyed by run name and role tag."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    out: dict[str, dict[str, list[float]]] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            name = f"{run.data.tags.get('role', '')}:{run.info.run_name}"
            out[name] = {
                key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
                for key in sorted(run.data.metrics)
                if not timing(key)
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev")
    ap.add_argument("--mitdb", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE into params.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export(args.rev, root)
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["preprocess"]["records"] = RECORDS
        params["train"]["epochs"] = 2
        params["student"]["epochs"] = 2
        for entry in args.set:
            key, value = entry.split("=", 1)
            set_key(params, key, yaml.safe_load(value))
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        repro(root, args.mitdb.resolve())
        metrics = {f.name: without_timings(json.loads(f.read_text()))
                   for f in sorted((root / "metrics").glob("*.json"))}  # fmt: skip
        result = {"files": file_digests(root), "metrics": metrics,
                  "logged": logged_metrics(root)}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
