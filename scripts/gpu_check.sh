#!/usr/bin/env bash
# One command for a GPU machine (the project installed, the MIT-BIH records in data/mitdb or
# MITDB_DIR): the environment, the step bench (eager against the CUDA graph, s/epoch, the GPU's
# fp32/bf16 matmul peak), then the paper's 100-epoch recipe (batch 64, Adam lr 1e-4, no EMA)
# for seeds 0-4 on fold 0, five teachers trained side by side on the one GPU as study runs
# (summaries in research/runs-paper/).
#
#   scripts/gpu_check.sh OUT            # on the GPU machine
#   scripts/gpu_check.sh OUT --tiny     # CPU-sized: 2 seeds, 1 epoch, a short bench
#
# OUT receives: env.txt, bench-step.json, timings.json, runs.tar.gz (the summaries),
# mlflow.db (every run's params and metrics) and log.txt (every step's output). Extra -S
# overrides for every run can come in GPU_CHECK_OVERRIDES (e.g. records or a data folder).
set -euo pipefail
set -f  # overrides such as preprocess.records=[100,101] are words, not file patterns
[ $# -ge 1 ] || { echo "usage: $0 OUT [--tiny]" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
tiny=${2:-}
cd "$(dirname "$0")/.."

if [ "$tiny" = "--tiny" ]; then
    epochs=1 seeds="0 1" bench_steps=3 batch=16 runs="$out/runs" work="$out/work"
else
    epochs=100 seeds="0 1 2 3 4" bench_steps=200 batch=64 runs=research/runs-paper
    work=outputs/paper
fi
cores=$(nproc)
n_seeds=$(wc -w <<<"$seeds")
threads=$(( cores / n_seeds > 0 ? cores / n_seeds : 1 ))
export MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db" PYTHONUNBUFFERED=1
log="$out/log.txt"
: >"$log"

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
        || echo "no nvidia-smi"
    python3 - <<'PY' || echo "python3 has no torch"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
PY
    echo "cores $cores, $n_seeds runs of $threads threads each"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

echo "== step bench" | tee -a "$log"
# a failed bench must not cost the training runs, which are what the machine is lent for
sibeatgan bench-step --batch "$batch" --steps "$bench_steps" --json "$out/bench-step.json" \
    2>&1 | tee -a "$log" || echo "step bench failed: see $log" | tee -a "$log"

echo "== paper recipe, seeds $seeds, $epochs epochs, side by side" | tee -a "$log"
start=$(date +%s.%N)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT  # no run outlives the script
for seed in $seeds; do
    # shellcheck disable=SC2086
    sibeatgan study run teacher --seeds "$seed" --runs "$runs" --work "$work" \
        -S train.epochs="$epochs" -S train.ema=0 -S runtime.threads="$threads" \
        ${GPU_CHECK_OVERRIDES:-} >"$out/seed$seed.log" 2>&1 &
    pids+=($!)
    if [ ${#pids[@]} -eq 1 ]; then  # the first run prepares the data; the others then find it
        until [ -n "$(find "$work/prepared" -name meta.json 2>/dev/null)" ] \
            || ! kill -0 "$!" 2>/dev/null; do
            sleep 1
        done
    fi
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
end=$(date +%s.%N)
for seed in $seeds; do
    { echo "== seed $seed"; cat "$out/seed$seed.log"; } >>"$log"
    rm -f "$out/seed$seed.log"
done

python3 - "$runs" "$start" "$end" "$failed" "$out/timings.json" <<'PY'
import glob, json, sys
runs, start, end, failed, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
import os
# only the summaries these runs wrote (an earlier session's stay in the folder, untouched)
files = [f for f in sorted(glob.glob(f"{runs}/teacher/*.json")) if os.path.getmtime(f) >= start]
summaries = [json.load(open(f)) for f in files]
out = {
    "wall_s": end - start,
    "failed_runs": failed,
    "runs": [
        {
            "seed": s["seed"],
            "epochs": s["epochs"],
            "train_time_s": s["train_time_s"],
            "s_per_epoch": s["train_time_s"] / max(s["epochs"], 1),
            "device": s["device"],
            "test_auc_val_auc_pick": s["selection"]["val_auc"]["test_auc"],
            "epoch_picked": s["selection"]["val_auc"]["epoch"],
        }
        for s in summaries
    ],
}
json.dump(out, open(path, "w"), indent=2)
print(f"wall {out['wall_s']:.0f} s, {failed} failed;",
      ", ".join(f"seed {r['seed']}: {r['s_per_epoch']:.1f} s/epoch, test AUC {r['test_auc_val_auc_pick']:.4f}"
                for r in out["runs"]))
PY
tar czf "$out/runs.tar.gz" -C "$runs" .
rm -f "$out/mlflow.db.lock"  # the lock that guarded creating the store
[ "$failed" -eq 0 ] || { echo "$failed run(s) failed: see $log" >&2; exit 1; }
