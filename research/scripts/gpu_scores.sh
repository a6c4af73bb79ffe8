#!/usr/bin/env bash
# Every named score on fresh teachers, on one lent GPU, for a fixed number of seconds: the
# default recipe on the 5 intra-patient folds (seed 0) and the inter-patient split (seeds 0-2),
# eight runs side by side (research/scripts/score_runs.py), each writing its score table.
# Every 20 s, and at the end, OUT/scores.tar.gz packs the tables and logs so far; the
# inter-patient runs' weights come back as OUT/inter-seedN.tar.gz.
#
#   research/scripts/gpu_scores.sh OUT SECONDS [GPU_DIR] [--cpu]
#
# GPU_DIR (default .gpu) holds mitdb.tar.xz and a wfdb wheel (see gpu_long_run.sh).
# --cpu: a smoke test here (one intra run on 5 records, 1 epoch).
set -uo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT SECONDS [GPU_DIR] [--cpu]" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
budget=$2
gpu=$(cd "${3:-.gpu}" && pwd)
mode=${4:-}
cd "$(dirname "$0")/../.."
t0=$(date +%s)
res=/tmp/score-runs
rm -rf "$res"
mkdir -p "$res"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MITDB_DIR=data/mitdb
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export SIBEATGAN_COMMIT=${SIBEATGAN_COMMIT:-unknown}
py=${PYTHON:-python3}
# shellcheck source=research/scripts/gpu_lib.sh
. research/scripts/gpu_lib.sh

if [ "$mode" = "--cpu" ]; then
    runs="intra-fold1-seed0"
    extra=(--device cpu -S runtime.threads=1 -S train.epochs=1 -S runtime.workers=2
           -S "preprocess.records=[100,101,103,105,106]")
else
    runs="intra-fold0-seed0 intra-fold1-seed0 intra-fold2-seed0 intra-fold3-seed0"
    runs+=" intra-fold4-seed0 inter-seed0 inter-seed1 inter-seed2"
    extra=(--device cuda -S runtime.threads=2 -S runtime.log_every=50 -S runtime.workers=16)
    gpu_setup "$gpu" "$res" || exit 1
fi
echo "setup took $(( $(date +%s) - t0 )) s" | tee -a "$res/env.txt"

pids=()
for run in $runs; do
    keep=()
    [[ $run == inter-* ]] && keep=(--keep-weights)
    $py research/scripts/score_runs.py "$run" --out "$res" --data /tmp/score-data \
        "${keep[@]}" "${extra[@]}" >"$res/$run.log" 2>&1 &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT

pack() {
    (cd "$res" && tar czf "$out/scores.tmp" --exclude='inter-seed*/*' -- *) \
        && mv "$out/scores.tmp" "$out/scores.tar.gz"
    for w in "$res"/inter-seed*/; do
        [ -f "$w/D.pt" ] && [ ! -f "$out/$(basename "$w").tar.gz" ] \
            && tar czf "$out/$(basename "$w").tar.gz" -C "$res" "$(basename "$w")"
    done
}
run_until $(( t0 + budget )) 20 "$res"
echo "done after $(( $(date +%s) - t0 )) s"
ls "$res"/*.json 2>/dev/null
