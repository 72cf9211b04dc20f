#!/usr/bin/env bash
# The GPU benchmark run of issue 6, for the GPU machine: bench_model on Llama-3.1-8B (its
# config.json with dummy weights), then bench_kernels, bench_offload_copy and bench_engine when
# they are built. Run from the repository root with build-gpu already built (BUILD= to change);
# logs and the markdown table go to $OUT (default ./bench-out). Each step is time-boxed; the caps
# add up to ~9 minutes, a normal run takes ~3 (bench_model and bench_kernels run both attention
# paths on Hopper).
set -u
B=${BUILD:-build-gpu}
OUT=${OUT:-bench-out}
MODEL=tests/bench/models/llama-3.1-8b
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
HW=${HARDWARE:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output in $OUT/NAME.log.
step() {
    local name=$1 secs=$2
    shift 2
    if [ ! -x "$1" ]; then
        echo "== $name: SKIP ($1 is not built)" | tee -a "$OUT/summary.txt"
        return
    fi
    echo "== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s (limit $secs s)" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

step bench_model 300 "$B/tests/bench/bench_model" --model "$MODEL" --load-format dummy \
    --device cuda --hardware "${HW:-unknown GPU}" --out "$OUT/bench_model.md"
step bench_kernels 150 "$B/tests/bench/bench_kernels" all
step bench_offload_copy 60 "$B/tests/bench/bench_offload_copy" --device cuda
step bench_engine 110 "$B/tests/bench/bench_engine" --device cuda --model "$MODEL" \
    --load-format dummy
step bench_offload 300 "$B/tests/bench/bench_offload" --model "$MODEL" --load-format dummy \
    --device cuda --hardware "${HW:-unknown GPU}" --plot-data "$OUT/ttft.dat" \
    --out "$OUT/bench_offload.md"
command -v gnuplot >/dev/null && [ -s "$OUT/ttft.dat" ] &&
    gnuplot -e "data='$OUT/ttft.dat'; out='$OUT/ttft.png'" tests/bench/plot_ttft.gp

echo
cat "$OUT/summary.txt"
echo
[ -f "$OUT/bench_model.md" ] && cat "$OUT/bench_model.md"
[ -f "$OUT/bench_offload.md" ] && cat "$OUT/bench_offload.md"
exit 0
