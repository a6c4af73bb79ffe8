# Shared by the one-call GPU scripts (sourced): the set-up a bare GPU machine needs, and the
# loop that runs the background jobs in `pids` to a deadline while packing what they wrote.

gpu_setup() {  # GPU_DIR RES: env.txt, MPS, the carried wfdb wheel and records
    local gpu=$1 res=$2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$res/env.txt"
    if nvidia-cuda-mps-control -d 2>/dev/null; then echo "MPS on"; else echo "no MPS"; fi \
        | tee -a "$res/env.txt"
    $py -m pip install -q --no-index --no-deps --target /tmp/site "$gpu"/wfdb-*.whl || return 1
    if [ ! -d data/mitdb ]; then
        mkdir -p data && tar xJf "$gpu/mitdb.tar.xz" -C data || return 1
    fi
}

run_until() {  # DEADLINE EVERY RES: until the jobs end or DEADLINE (epoch s); `pack` meanwhile
    local deadline=$1 every=$2 res=$3 alive pid
    while [ "$(date +%s)" -lt "$deadline" ]; do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 1 ] || break
        sleep "$every"
        pack
        tail -qn1 "$res"/*.log 2>/dev/null | cut -c1-160
    done
    kill "${pids[@]}" 2>/dev/null
    wait
    pack
}
