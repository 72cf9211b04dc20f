#!/usr/bin/env bash
# The GPU benchmark run (issues 6, 7, 13 and 14: bench_model and bench_kernels run both
# attention paths on Hopper), for the GPU machine: bench_model on Llama-3.1-8B
# (its config.json with dummy weights), the decode-step breakdown, bench_kernels, start-up from a
# real sharded checkpoint, bench_offload, the HTTP long-document benchmark, bench_offload_copy and
# bench_engine; then issue 13's table, every row with its ceiling from this run. Run from the
# repository root with the binaries built (BUILD= their build folder, default build-gpu); logs,
# tables, CSV and plots go to $OUT (default ./bench-out).
#   BUILD=build-gpu tests/bench/run_gpu_bench.sh
#   ONLY="bench_model bench_decode_ops bench_startup" tests/bench/run_gpu_bench.sh      (a subset, by step name)
# Steps run in the order below, each under its own cap and all under TOTAL seconds (default 570,
# so one run fits a 10-minute command); a step that would start with under 20 s left is skipped.
set -u
B=${BUILD:-build-gpu}
OUT=${OUT:-bench-out}
MODEL=tests/bench/models/llama-3.1-8b
TOTAL=${TOTAL:-570}
ONLY=${ONLY:-}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
HW=${HARDWARE:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
T0=$SECONDS

# step NAME SECONDS COMMAND...: runs COMMAND under min(SECONDS, time left), its output in
# $OUT/NAME.log; skipped when ONLY is set and does not name it, or when its program is not built.
step() {
    local name=$1 secs=$2
    shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then
        return
    fi
    local prog=$1
    [ "$1" = python3 ] && prog=$2
    [ "$1" = env ] && prog=$3
    if [ ! -e "$prog" ]; then
        echo "== $name: SKIP ($prog is not built)" | tee -a "$OUT/summary.txt"
        return
    fi
    local left=$((TOTAL - (SECONDS - T0)))
    if [ "$left" -lt 20 ]; then
        echo "== $name: SKIP (only $left s left of TOTAL=$TOTAL)" | tee -a "$OUT/summary.txt"
        return
    fi
    [ "$secs" -gt "$left" ] && secs=$left
    echo "== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$secs" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s (limit $secs s)" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.log"
}

step bench_model 240 "$B/tests/bench/bench_model" --model "$MODEL" --load-format dummy \
    --device cuda --hardware "${HW:-unknown GPU}" --out "$OUT/bench_model.md"
step bench_decode_ops 90 "$B/tests/bench/bench_decode_ops" --model "$MODEL" --load-format dummy \
    --device cuda --batches 1,8,64 --ctx 1024 --out "$OUT/bench_decode_ops.md"
# batch 8 through the GEMV kernel instead of cuBLASLt (the engine's default takes GEMV up to 4 rows)
step bench_decode_ops_gemv8 45 env KVSERVE_CUDA_GEMV=8 "$B/tests/bench/bench_decode_ops" \
    --model "$MODEL" --load-format dummy --device cuda --batches 8 --ctx 1024 \
    --out "$OUT/bench_decode_ops_gemv8.md"
step bench_kernels 120 "$B/tests/bench/bench_kernels" all
step bench_startup 150 python3 tests/bench/bench_startup.py --bin "$B/server/kvserve" --device cuda \
    --config "$MODEL" --out "$OUT/bench_startup.md"
step bench_offload 240 "$B/tests/bench/bench_offload" --model "$MODEL" --load-format dummy \
    --device cuda --hardware "${HW:-unknown GPU}" --plot-data "$OUT/ttft.dat" \
    --out "$OUT/bench_offload.md" --only "${BENCH_OFFLOAD_ONLY:-ttft,decode}"
step bench_longdoc 200 python3 tests/bench/bench_longdoc.py --bin "$B/server/kvserve" --device cuda \
    --model "$MODEL" --load-format dummy --docs 24 --doc-tokens 8192 --clients 4 --rounds 3 \
    --gpu-blocks 2048 --tier-gib 32 --tier-wait 30 --csv "$OUT/longdoc.csv" \
    --gp "$OUT/longdoc.gp" --out "$OUT/bench_longdoc.md"
step bench_offload_copy 40 "$B/tests/bench/bench_offload_copy" --device cuda
step bench_engine 60 "$B/tests/bench/bench_engine" --device cuda --model "$MODEL" --load-format dummy
if command -v gnuplot >/dev/null; then
    [ -s "$OUT/ttft.dat" ] &&
        gnuplot -e "data='$OUT/ttft.dat'; out='$OUT/ttft.png'" tests/bench/plot_ttft.gp
    [ -s "$OUT/longdoc.gp" ] && gnuplot "$OUT/longdoc.gp"
fi

echo
cat "$OUT/summary.txt"
for f in bench_model.md bench_decode_ops.md bench_decode_ops_gemv8.md bench_startup.md bench_offload.md bench_longdoc.md; do
    [ -f "$OUT/$f" ] && { echo; cat "$OUT/$f"; }
done
echo
python3 tests/bench/issue13_table.py "$OUT" | tee "$OUT/issue13.md"
exit 0
