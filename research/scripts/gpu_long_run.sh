#!/usr/bin/env bash
# The long-run side-by-side on one lent GPU, for a fixed number of seconds: our loop at the
# paper recipe (seeds 0-2, CUDA-graph step), ours with the sigmoid-BCE switch (seed 0) and the
# official loop (seed 0, its own eager step) train side by side, each writing its per-epoch CSV
# (research/scripts/long_run.py) until the deadline stops them. Every 30 s, and at the end,
# the rows so far are packed into OUT/rows.tar.gz.
#
#   research/scripts/gpu_long_run.sh OUT SECONDS [GPU_DIR] [--cpu]
#
# GPU_DIR (default .gpu) holds what the GPU machine lacks: mitdb.tar.xz (the 48 records),
# a wfdb wheel, and official/experiments (the official code, fetched, never committed).
# --cpu: a CPU smoke test of this script (two of the runs, the first 512 beats of each part).
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT SECONDS [GPU_DIR] [--cpu]" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
budget=$2
gpu=$(cd "${3:-.gpu}" && pwd)
mode=${4:-}
cd "$(dirname "$0")/../.."
t0=$(date +%s)
res=/tmp/long-run-rows
work=/tmp/long-run-work
rm -rf "$res" "$work"
mkdir -p "$res" "$work"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MITDB_DIR=data/mitdb
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export SIBEATGAN_COMMIT=${SIBEATGAN_COMMIT:-unknown}
py=${PYTHON:-python3}
# shellcheck source=research/scripts/gpu_lib.sh
. research/scripts/gpu_lib.sh

if [ "$mode" = "--cpu" ]; then
    device=cpu limit=(--limit 512) extra=(-S runtime.threads=1)
else
    device=cuda limit=() extra=(-S runtime.threads=2 -S runtime.log_every=50)
    gpu_setup "$gpu" "$res" || exit 1
fi
if [ ! -f data/prepared/meta.json ]; then
    $py -c "from sibeatgan.config import load_params as l
from sibeatgan.data.preprocess import run_preprocess as r
print(r(l('params.yaml', ['runtime.workers=16']), '$res/preprocess.json')['class_counts'])" \
        || exit 1
fi
echo "setup took $(( $(date +%s) - t0 )) s" | tee -a "$res/env.txt"

lr=research/scripts/long_run.py
common=(--epochs 100 --out "$res" --work "$work" --device "$device" "${limit[@]}")
launch() {  # NAME ARGS...: one run in the background, its log beside its rows
    local name=$1
    shift
    $py $lr "$@" --out "$res" >"$res/$name.log" 2>&1 &
    pids+=($!)
}
pids=()
if [ "$mode" = "--cpu" ]; then
    launch ours-paper-seed0 ours gpu-ours-paper-seed0 "${common[@]}" "${extra[@]}" --epochs 2
    launch official-seed0 official gpu-official-seed0 --code "$gpu/official/experiments/ecg" \
        --threads 1 "${common[@]}" --epochs 2
else
    for seed in 0 1 2; do
        launch "ours-paper-seed$seed" ours "gpu-ours-paper-seed$seed" "${common[@]}" \
            "${extra[@]}" -S seed="$seed"
    done
    launch ours-sigmoidbce-seed0 ours gpu-ours-sigmoidbce-seed0 "${common[@]}" "${extra[@]}" \
        --switch sigmoid_bce
    launch official-seed0 official gpu-official-seed0 --code "$gpu/official/experiments/ecg" \
        --threads 2 "${common[@]}"
fi
trap 'kill "${pids[@]}" 2>/dev/null' EXIT

pack() { tar czf "$out/rows.tmp" -C "$res" . && mv "$out/rows.tmp" "$out/rows.tar.gz"; }
run_until $(( t0 + budget )) 30 "$res"
echo "done after $(( $(date +%s) - t0 )) s"
for f in "$res"/*.csv; do echo "$(basename "$f"): $(( $(wc -l <"$f") - 1 )) epochs"; done
