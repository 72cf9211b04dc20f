#!/usr/bin/env python3
"""The case kvserve exists for, over HTTP (issue 13), Python standard library only: D long
documents asked about in rounds by C concurrent clients, with a GPU KV pool that holds only a few
of them, host tier on vs off.

  tests/bench/bench_longdoc.py [--bin build-gpu/server/kvserve] [--device cuda]
      [--model tests/bench/models/llama-3.1-8b] [--load-format dummy] [--docs 24]
      [--doc-tokens 8192] [--question-tokens 32] [--max-tokens 16] [--clients 4] [--rounds 3]
      [--gpu-blocks 2048] [--tier-gib 32] [--modes off,on] [--tier-wait 30] [--csv F.csv]
      [--gp F.gp] [--out F.md] [-- more kvserve flags]

Each document is random but valid token ids (fixed seed); a request is a document followed by a
question of its own (random ids), generating --max-tokens tokens. A round asks every document
once in a shuffled order, the clients taking the next request as soon as their last one ended.
Round 1 finds nothing cached (first visit); later rounds revisit documents that the GPU pool has
long evicted: with the tier they come back from host memory, without it they are recomputed.
Per round: TTFT mean/p50/p99, round time, requests/s, generated tokens/s, and the prompt tokens
served from the GPU cache and from the host tier (the usage of each response). Prints a table,
writes a CSV of the rounds (--csv) and a gnuplot script that plots it (--gp; run gnuplot on it
for a PNG beside the CSV). The model directory needs config.json only: the tokenizer comes from
the test data when the directory has none.
Small run here on the CPU: --device cpu --model $KVSERVE_TESTDATA/models/stories260K
--load-format safetensors --docs 6 --doc-tokens 200 --gpu-blocks 40 --tier-gib 0.05."""
import argparse
import csv
import json
import os
import queue
import random
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_http_util as hu  # noqa: E402


def run_round(port, prompts, clients, max_tokens, order):
    """Asks prompts[i] for i in order with `clients` threads. Returns (results, seconds): one
    (ttft, total, n_tokens, usage) per request."""
    q = queue.Queue()
    for i in order:
        q.put(i)
    results, errors = [], []
    lock = threading.Lock()

    def client():
        while True:
            try:
                i = q.get_nowait()
            except queue.Empty:
                return
            try:
                r = hu.stream_completion(port, prompts[i], max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001: reported below
                with lock:
                    errors.append(str(e))

    t0 = time.time()
    ts = [threading.Thread(target=client) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return results, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", default=hu.default_bin())
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default=os.path.join(hu.HERE, "models", "llama-3.1-8b"))
    ap.add_argument("--load-format", default="dummy")
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--doc-tokens", type=int, default=8192)
    ap.add_argument("--question-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gpu-blocks", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--tier-gib", type=float, default=32)
    ap.add_argument("--tier-wait", type=float, default=30,
                    help="seconds to wait after ready for the tier to be pinned (tier on)")
    ap.add_argument("--modes", default="off,on")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--csv")
    ap.add_argument("--gp")
    ap.add_argument("--out")
    ap.add_argument("extra", nargs="*", help="more kvserve flags (after --)")
    a = ap.parse_args()

    with open(os.path.join(a.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    tmp = tempfile.mkdtemp(prefix="kvserve-longdoc-")
    model_dir = a.model
    if not os.path.isfile(os.path.join(a.model, "tokenizer.json")):
        model_dir = hu.make_model_dir(os.path.join(tmp, "model"), a.model)
    rng = random.Random(a.seed)
    lo, hi = min(100, vocab - 1), max(101, vocab - 300)  # clear of the special ids at the top
    docs = [[rng.randrange(lo, hi) for _ in range(a.doc_tokens)] for _ in range(a.docs)]
    orders = []
    for r in range(a.rounds):
        o = list(range(a.docs))
        rng.shuffle(o)
        orders.append(o)
    model_len = a.doc_tokens + a.question_tokens + a.max_tokens + a.block_size
    rows = []
    try:
        for mode in a.modes.split(","):
            tier = a.tier_gib if mode == "on" else 0
            args = ["--model", model_dir, "--device", a.device, "--load-format", a.load_format,
                    "--num-gpu-blocks", str(a.gpu_blocks), "--block-size", str(a.block_size),
                    "--max-model-len", str(model_len), "--offload-size-gib", str(tier),
                    "--log-level", "warn", *a.extra]
            s = hu.Server(a.bin, args, ready_timeout=600)
            try:
                if tier > 0:
                    time.sleep(a.tier_wait)
                for r in range(a.rounds):
                    # a new question each round: only the document is a prefix to reuse
                    prompts = [d + [rng.randrange(lo, hi) for _ in range(a.question_tokens)]
                               for d in docs]
                    m0 = s.metrics()
                    res, secs = run_round(s.port, prompts, a.clients, a.max_tokens, orders[r])
                    m1 = s.metrics()
                    ttft = [x[0] for x in res if x[0] is not None]
                    gen = sum((x[3] or {}).get("completion_tokens", x[2]) for x in res)
                    gpu = sum((x[3] or {}).get("prompt_tokens_details", {}).get("cached_tokens_gpu", 0)
                              for x in res)
                    host = sum((x[3] or {}).get("prompt_tokens_details", {})
                               .get("cached_tokens_host", 0) for x in res)
                    skipped = (hu_metric(m1, "kvserve:host_kv_cache_stores_skipped") -
                               hu_metric(m0, "kvserve:host_kv_cache_stores_skipped"))
                    rows.append({
                        "tier": mode, "tier_gib": tier, "round": r + 1,
                        "kind": "first" if r == 0 else "revisit", "requests": len(res),
                        "ttft_mean_ms": 1e3 * sum(ttft) / max(len(ttft), 1),
                        "ttft_p50_ms": 1e3 * hu.percentile(ttft, 50),
                        "ttft_p99_ms": 1e3 * hu.percentile(ttft, 99),
                        "round_s": secs, "req_per_s": len(res) / secs,
                        "gen_tok_per_s": gen / secs,
                        "prompt_tok_per_s": len(res) * len(prompts[0]) / secs,
                        "cached_gpu_tokens": gpu, "cached_host_tokens": host,
                        "stores_skipped": skipped})
                    print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in rows[-1].items()), flush=True)
            finally:
                s.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    head = (f"### bench_longdoc: {a.docs} documents x {a.doc_tokens} tokens (+{a.question_tokens}"
            f"-token question, {a.max_tokens} generated), {a.clients} clients, GPU pool "
            f"{a.gpu_blocks} blocks of {a.block_size} tokens "
            f"(~{a.gpu_blocks * a.block_size / a.doc_tokens:.1f} documents), host tier "
            f"{a.tier_gib} GiB when on; {a.device}, {os.path.basename(os.path.normpath(a.model))}\n\n")
    table = ("| tier | round | kind | TTFT mean ms | p50 ms | p99 ms | round s | req/s | gen tok/s "
             "| prompt tok from GPU cache | from host tier |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        table += (f"| {r['tier']} | {r['round']} | {r['kind']} | {r['ttft_mean_ms']:.1f} | "
                  f"{r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | {r['round_s']:.2f} | "
                  f"{r['req_per_s']:.2f} | {r['gen_tok_per_s']:.1f} | {r['cached_gpu_tokens']} | "
                  f"{r['cached_host_tokens']} |\n")
    summary = ""
    rev = {m: [r for r in rows if r["tier"] == m and r["kind"] == "revisit"] for m in ("on", "off")}
    if rev["on"] and rev["off"]:
        on = sum(r["ttft_mean_ms"] for r in rev["on"]) / len(rev["on"])
        off = sum(r["ttft_mean_ms"] for r in rev["off"]) / len(rev["off"])
        ron = sum(r["round_s"] for r in rev["on"]) / len(rev["on"])
        roff = sum(r["round_s"] for r in rev["off"]) / len(rev["off"])
        summary = (f"\nRevisit rounds: mean TTFT {on:.1f} ms with the tier vs {off:.1f} ms without "
                   f"({off / on:.1f}x); {ron:.2f} s vs {roff:.2f} s per round ({roff / ron:.1f}x).\n")
    text = head + table + summary
    print("\n" + text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)
    if a.gp and a.csv:
        png = os.path.splitext(a.csv)[0] + ".png"
        with open(a.gp, "w") as f:
            f.write(GNUPLOT.format(csv=a.csv, png=png, title=head.strip("#\n ").replace('"', "'")))


def hu_metric(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{")
               or k == name + "_total" or k.startswith(name + "_total{"))


GNUPLOT = """# bench_longdoc.py's rounds: mean and p99 TTFT per round, host tier on vs off.
# gnuplot {csv}'s script; writes {png}.
set terminal pngcairo size 1100,520 font ",10"
set output "{png}"
set datafile separator ","
set title "{title}" noenhanced font ",9"
set multiplot layout 1,2
set xlabel "round (1 = first visit, then revisits)"
set ylabel "TTFT (ms)"
set logscale y
set grid
set key top right
set xtics 1
plot "{csv}" using ($2 == 0 ? $3 : 1/0):6 with linespoints lw 2 title "mean, tier off", \\
     "{csv}" using ($2 == 0 ? $3 : 1/0):8 with linespoints dt 2 title "p99, tier off", \\
     "{csv}" using ($2 > 0 ? $3 : 1/0):6 with linespoints lw 2 title "mean, tier on", \\
     "{csv}" using ($2 > 0 ? $3 : 1/0):8 with linespoints dt 2 title "p99, tier on"
unset logscale y
set ylabel "seconds per round"
plot "{csv}" using ($2 == 0 ? $3 : 1/0):9 with linespoints lw 2 title "tier off", \\
     "{csv}" using ($2 > 0 ? $3 : 1/0):9 with linespoints lw 2 title "tier on"
unset multiplot
"""

if __name__ == "__main__":
    main()
