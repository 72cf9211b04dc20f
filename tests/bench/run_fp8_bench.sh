#!/usr/bin/env bash
# The FP8 benchmark run of issue 15, for the GPU machine: bf16 vs fp8 side by side in one run of
# each benchmark (Llama-3.1-8B's config.json, dummy weights). Steps (all by default, or the ones
# named as arguments): model (bench_model: decode batch 1/8/64 and prefill, KV auto|fp8 x weights
# auto|fp8, ~5 min), kernels (bench_kernels attention on bf16 then e4m3 pools, ~1 min), offload
# (bench_offload: host-tier TTFT 10K/100K, load GB/s vs pinned, 512-token prefill at host hits,
# KV auto then fp8, ~6 min). Run from the repository root with build-gpu built; logs and tables
# go to $OUT (default ./bench-fp8).
set -u
B=${BUILD:-build-gpu}
OUT=${OUT:-bench-fp8}
MODEL=tests/bench/models/llama-3.1-8b
mkdir -p "$OUT"
HW=${HARDWARE:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)}
STEPS=${*:-model kernels offload}

step() {
    local name=$1 secs=$2
    shift 2
    echo "== $name: $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$secs" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: rc $?, $((SECONDS - t0)) s (limit $secs s)" | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log"
}

for s in $STEPS; do
    case $s in
    model)
        step bench_model_fp8 420 "$B/tests/bench/bench_model" --model "$MODEL" --load-format dummy \
            --device cuda --hardware "${HW:-unknown GPU}" --prefill 1024,10240 --reps 10 \
            --prefill-reps 2 --kv-cache-dtype auto,fp8 --quantization auto,fp8 \
            --out "$OUT/bench_model.md" ;;
    kernels)
        step bench_kernels_bf16 60 "$B/tests/bench/bench_kernels" attention
        step bench_kernels_fp8 60 "$B/tests/bench/bench_kernels" attention fp8 ;;
    offload)
        step bench_offload_fp8 540 "$B/tests/bench/bench_offload" --model "$MODEL" \
            --load-format dummy --device cuda --hardware "${HW:-unknown GPU}" \
            --only ttft,prefill512 --kv-cache-dtype auto,fp8 --out "$OUT/bench_offload.md" ;;
    *) echo "unknown step $s (model, kernels, offload)" ;;
    esac
done
cat "$OUT/summary.txt"
exit 0
