#!/usr/bin/env python3
"""Start-up benchmark of kvserve (issue 13), Python standard library only:

  tests/bench/bench_startup.py [--config tests/bench/models/llama-3.1-8b] [--dir /tmp/ckpt]
      [--shards 4] [--keep] [--bin build-gpu/server/kvserve] [--device cuda] [--out FILE.md]
      [-- more kvserve flags]

Writes a real sharded bf16 safetensors checkpoint of config.json's Llama shape (values of
magnitude 0.008-0.03, norms 1; model.safetensors.index.json; the test data's llama3 tokenizer)
to --dir (reused when it is already there and the same size), reads it once in one stream
(`cat`-like, warming the page cache) and once with 8 threads of pread (the raw read rate of the
same files in this run), then starts kvserve on it and reports: time from spawn to /health 200,
the weights' load time and rate (kvserve's own log line) against both raw rates, and the TTFT of
the first and the second request after ready (16-token prompts, distinct, 1 token each).
Targets (issue 13, H200): ready <= 3 s, first token <= 100 ms after ready."""
import argparse
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_http_util as hu  # noqa: E402

BLOCK = 64 << 20  # bytes of the random pattern tensors are tiled from


def llama_tensors(c):
    """[(name, shape)] of a Llama checkpoint in the order Hugging Face writes them."""
    dim, ff, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    heads, kvh = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim", dim // heads)
    out = [("model.embed_tokens.weight", [vocab, dim])]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", [dim]),
                (p + "self_attn.q_proj.weight", [heads * hd, dim]),
                (p + "self_attn.k_proj.weight", [kvh * hd, dim]),
                (p + "self_attn.v_proj.weight", [kvh * hd, dim]),
                (p + "self_attn.o_proj.weight", [dim, heads * hd]),
                (p + "post_attention_layernorm.weight", [dim]),
                (p + "mlp.gate_proj.weight", [ff, dim]),
                (p + "mlp.up_proj.weight", [ff, dim]),
                (p + "mlp.down_proj.weight", [dim, ff])]
    out.append(("model.norm.weight", [dim]))
    if not c.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [vocab, dim]))
    return out


def nbytes(shape):
    n = 2
    for d in shape:
        n *= d
    return n


def random_block():
    """BLOCK bytes of bf16 values: random mantissa and sign, exponent 2^-7 or 2^-6."""
    b = bytearray(os.urandom(BLOCK))
    table = bytes((0x3c if i < 128 else 0xbc) for i in range(256))
    b[1::2] = bytes(b[1::2]).translate(table)
    return bytes(b)


def write_checkpoint(d, cfg, n_shards):
    tensors = llama_tensors(cfg)
    total = sum(nbytes(s) for _, s in tensors)
    per = total / n_shards
    shards, cur, acc = [[]], 0, 0
    for name, shape in tensors:  # split by bytes, in order
        if acc >= per * (cur + 1) and len(shards) < n_shards:
            shards.append([])
            cur += 1
        shards[-1].append((name, shape))
        acc += nbytes(shape)
    pattern = random_block()
    ones = bytes([0x80, 0x3f]) * (BLOCK // 2)
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in part:
            header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + nbytes(shape)]}
            off += nbytes(shape)
            weight_map[name] = fname
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        with open(os.path.join(d, fname), "wb") as f:
            f.write(len(h).to_bytes(8, "little"))
            f.write(h)
            for name, shape in part:
                src = ones if name.endswith("norm.weight") else pattern
                left = nbytes(shape)
                while left:
                    n = min(left, BLOCK)
                    f.write(memoryview(src)[:n])
                    left -= n
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return total


def shard_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".safetensors"))


def read_serial(files):
    """One stream over the files (like cat > /dev/null); returns seconds."""
    buf = bytearray(16 << 20)
    t0 = time.time()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.time() - t0


def read_parallel(files, n_threads=8, chunk=16 << 20):
    """n_threads threads of os.preadv over chunks of every file (GIL released in the call)."""
    work = []
    for p in files:
        size = os.path.getsize(p)
        work += [(p, o) for o in range(0, size, chunk)]
    lock = threading.Lock()

    def run():
        buf = bytearray(chunk)
        fds = {}
        while True:
            with lock:
                if not work:
                    break
                p, o = work.pop()
            fd = fds.get(p) or fds.setdefault(p, os.open(p, os.O_RDONLY))
            os.preadv(fd, [buf], o)
        for fd in fds.values():
            os.close(fd)

    t0 = time.time()
    ts = [threading.Thread(target=run) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", default=os.path.join(hu.HERE, "models", "llama-3.1-8b"))
    ap.add_argument("--dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                  "kvserve-startup-ckpt"))
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="leave the checkpoint in --dir")
    ap.add_argument("--bin", default=hu.default_bin())
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out")
    ap.add_argument("extra", nargs="*", help="more kvserve flags (after --)")
    a = ap.parse_args()

    with open(os.path.join(a.config, "config.json")) as f:
        cfg = json.load(f)
    hu.make_model_dir(a.dir, a.config)
    want = sum(nbytes(s) for _, s in llama_tensors(cfg))
    have = sum(os.path.getsize(p) for p in shard_files(a.dir))
    if not (want <= have <= want + (1 << 24) * a.shards):
        for p in shard_files(a.dir):
            os.remove(p)
        t0 = time.time()
        write_checkpoint(a.dir, cfg, a.shards)
        print(f"wrote {want / 1e9:.2f} GB in {a.shards} shards to {a.dir} in "
              f"{time.time() - t0:.1f} s", flush=True)
    files = shard_files(a.dir)
    size = sum(os.path.getsize(p) for p in files)
    read_serial(files)  # into the page cache
    t_serial = read_serial(files)
    t_par = read_parallel(files)
    print(f"raw read of {size / 1e9:.2f} GB from the page cache: 1 stream {size / t_serial / 1e9:.2f}"
          f" GB/s, 8 threads of pread {size / t_par / 1e9:.2f} GB/s", flush=True)

    args = ["--model", a.dir, "--device", a.device, "--max-model-len", "8192", *a.extra]
    s = hu.Server(a.bin, args, ready_timeout=300)
    try:
        ready = s.t_ready - s.t_start
        m = re.search(r"([0-9.]+) MB of weights loaded in ([0-9.]+) s", s.log_text())
        w_mb, w_s = (float(m.group(1)), float(m.group(2))) if m else (float("nan"),) * 2
        tk = re.search(r"tokenizer ready at ([0-9.]+) s", s.log_text())
        tok_s = float(tk.group(1)) if tk else float("nan")
        w = re.search(r"warm-up: .* in ([0-9.]+) s", s.log_text())
        warm_s = float(w.group(1)) if w else 0.0
        ttft = []
        for i in range(3):
            ids = [(1000 + 97 * i + 13 * t) % cfg["vocab_size"] for t in range(16)]
            ttft.append(hu.stream_completion(s.port, ids, 1)[0])
    finally:
        s.stop()
    gbs = w_mb / 1e3 / w_s if w_s == w_s and w_s > 0 else float("nan")
    rows = [
        ("spawn to /health 200", f"{ready:.2f} s", "<= 3 s", f"{ready / 3:.2f}x of target"),
        ("weights loaded (kvserve's log)", f"{w_s:.2f} s, {gbs:.2f} GB/s",
         f"raw read 1 stream {size / t_serial / 1e9:.2f} GB/s, 8 threads {size / t_par / 1e9:.2f} GB/s",
         f"{gbs / (size / t_par / 1e9) * 100:.0f}% of the 8-thread read"),
        ("tokenizer ready (loads beside the weights)", f"{tok_s:.2f} s after start", "", ""),
        ("warm-up before ready", f"{warm_s:.2f} s", "", ""),
        ("TTFT 1st request after ready", f"{ttft[0] * 1e3:.1f} ms", "<= 100 ms",
         f"{ttft[0] / ttft[1]:.2f}x the 2nd"),
        ("TTFT 2nd request", f"{ttft[1] * 1e3:.1f} ms", "", ""),
        ("TTFT 3rd request", f"{ttft[2] * 1e3:.1f} ms", "", ""),
    ]
    text = (f"### bench_startup: {os.path.basename(os.path.normpath(a.config))}, "
            f"{size / 1e9:.2f} GB bf16 in {len(files)} shards (page cache), {a.device}\n\n"
            "| what | measured | ceiling / target | ratio |\n|---|---|---|---|\n" +
            "".join(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |\n" for r in rows))
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    if not a.keep:
        for p in files:
            os.remove(p)


if __name__ == "__main__":
    main()
