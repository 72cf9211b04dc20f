#!/usr/bin/env python3
"""Load test of the real kvserve binary over loopback (Python 3 standard library, asyncio; not part
of the test suite: run it by hand).

  tests/bench/load_test.py [--bin build/server/kvserve] [--model DIR] [--requests 2048]
                           [--concurrency 256] [--idle 1000] [--disconnect-frac 0.1] [--rounds 2]
                           [--blocks 2048] [-- more kvserve flags, e.g. --offload-size-gib 1]

Starts kvserve (CPU backend unless --device) on a free port, opens --idle keep-alive connections
that stay idle, then runs --rounds rounds of --requests streamed completions at --concurrency at
once, --disconnect-frac of them hanging up at a random point. After each round it waits for the
engine to drain and checks: no crash, /metrics back to idle (running 0, waiting 0, KV usage 0),
every idle connection still answers, and VmRSS. Prints requests/s, tokens/s and TTFT percentiles.
Exits 1 when a check fails."""
import argparse
import asyncio
import json
import os
import random
import resource
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import kvserve_harness as kh  # noqa: E402

WORDS = ("little girl boy dog cat ball park tree sun happy sad big red blue played ran saw "
         "wanted friend mom dad house garden flower bird fish toy car").split()
STARTS = ["Once upon a time", "One day, a little", "Tim and Sue went to the park. They",
          "Lily had a big red ball. She", "The sun was shining and the birds"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def make_prompt(rng):
    # shared openings (prefix hits across requests) followed by a random tail
    return rng.choice(STARTS) + " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))


async def read_headers(reader):
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def one_stream(port, model, rng, disconnect, stats):
    """One streamed completion on its own connection. Reads the chunked SSE body line by line
    (the chunk-size lines are skipped: they never start with "data: ")."""
    body = json.dumps({"model": model, "prompt": make_prompt(rng), "stream": True,
                       "max_tokens": rng.randint(16, 128), "temperature": 0.8,
                       "seed": rng.randint(0, 1 << 30)}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        status, _ = await read_headers(reader)
        if status != 200:
            stats["status"][status] = stats["status"].get(status, 0) + 1
            return
        cut_after = rng.randint(1, 20) if disconnect else None
        n_events, first = 0, None
        while True:
            line = await reader.readline()
            if not line:
                stats["cut_by_server"] += 1
                return
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                break
            n_events += 1
            if first is None:
                first = time.perf_counter() - t0
                stats["ttft"].append(first)
            if cut_after is not None and n_events >= cut_after:
                stats["disconnected"] += 1
                writer.transport.abort()  # hang up mid-stream (RST)
                return
        stats["completed"] += 1
        stats["tokens"] += n_events
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        stats["errors"].append(repr(e))
    finally:
        if not writer.transport.is_closing():
            writer.close()


async def idle_connections(port, n):
    """n keep-alive connections, each after one /health request; returned open."""
    conns = []
    for i in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conns.append((reader, writer))
    await check_idle(conns)
    return conns


async def check_idle(conns):
    """Every idle connection still answers /health with 200 on the same socket."""
    async def ping(reader, writer):
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        status, headers = await read_headers(reader)
        n = int(headers.get("content-length", "0"))
        if n:
            await reader.readexactly(n)
        return status

    statuses = await asyncio.gather(*(ping(r, w) for r, w in conns), return_exceptions=True)
    return sum(1 for s in statuses if s == 200)


async def run_round(port, model, args, rng):
    stats = {"ttft": [], "completed": 0, "disconnected": 0, "cut_by_server": 0, "tokens": 0,
             "status": {}, "errors": []}
    sem = asyncio.Semaphore(args.concurrency)
    n_disc = int(args.requests * args.disconnect_frac)
    disconnect = [True] * n_disc + [False] * (args.requests - n_disc)
    rng.shuffle(disconnect)

    async def guarded(i):
        async with sem:
            await one_stream(port, model, random.Random(rng.random()), disconnect[i], stats)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(guarded(i) for i in range(args.requests))),
                           timeout=args.round_timeout)
    stats["elapsed"] = time.perf_counter() - t0
    return stats


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def main_async(args):
    rng = random.Random(args.seed)
    flags = ["--device", args.device, "--n-threads", str(args.threads),
             "--max-connections", str(args.idle + args.concurrency + 256),
             # the idle connections must outlive the rounds (the 5 s idle timeout that closes
             # them by default is integration_hardening's to check)
             "--http-timeout-s", "600",
             "--num-gpu-blocks", str(args.blocks), *args.server_flags]
    if args.model:
        srv = kh.Server(*flags, "--model", args.model, model=None, name=args.model)
    else:
        srv = kh.Server(*flags)
    model = srv.name
    ok = True
    try:
        pid = srv.proc.pid
        rss0 = rss_kib(pid)
        conns = await idle_connections(srv.port, args.idle)
        print(f"{args.idle} idle keep-alive connections open; VmRSS {rss0 / 1024:.1f} MiB at start,"
              f" {rss_kib(pid) / 1024:.1f} MiB with them")
        # warm-up round (allocator pools, caches) before the RSS baseline
        warm = argparse.Namespace(**vars(args))
        warm.requests = args.concurrency
        await run_round(srv.port, model, warm, rng)
        srv.wait_idle()
        rss_base = rss_kib(pid)
        rows = []
        for rnd in range(args.rounds):
            st = await run_round(srv.port, model, args, rng)
            m = srv.wait_idle()
            rss = rss_kib(pid)
            running = kh.metric(m, "kvserve:num_requests_running")
            waiting = kh.metric(m, "kvserve:num_requests_waiting")
            kv = kh.metric(m, "kvserve:kv_cache_usage_perc")
            alive = await check_idle(conns)
            done = st["completed"] + st["disconnected"]
            print(f"round {rnd + 1}: {args.requests} streams, {st['completed']} completed, "
                  f"{st['disconnected']} hung up by the client, {st['cut_by_server']} cut by the "
                  f"server, statuses {st['status'] or '{}'}, {len(st['errors'])} errors; "
                  f"{st['elapsed']:.2f} s: {done / st['elapsed']:.1f} requests/s, "
                  f"{st['tokens'] / st['elapsed']:.0f} SSE chunks/s; TTFT p50 "
                  f"{pct(st['ttft'], 50) * 1e3:.1f} ms, p99 {pct(st['ttft'], 99) * 1e3:.1f} ms; "
                  f"after: running {running:.0f}, waiting {waiting:.0f}, KV usage {kv:.3f}, "
                  f"idle connections answering {alive}/{args.idle}, VmRSS {rss / 1024:.1f} MiB")
            if st["errors"]:
                print("  first errors:", st["errors"][:3])
            rows.append((st, rss))
            ok &= running == 0 and waiting == 0 and kv == 0 and alive == args.idle
            ok &= not st["errors"] and st["cut_by_server"] == 0 and not st["status"]
        growth = rows[-1][1] - rss_base
        print(f"VmRSS after warm-up {rss_base / 1024:.1f} MiB, after the last round "
              f"{rows[-1][1] / 1024:.1f} MiB ({growth / 1024:+.1f} MiB)")
        aborts = kh.metric(srv.metrics(), "kvserve:request_success_total",
                           'finished_reason="abort"')
        print(f"engine requests ended by abort (client hang-ups seen by the server): {aborts:.0f}")
        for _, w in conns:
            w.close()
    finally:
        rc = srv.stop(signal.SIGTERM, timeout=60)
    print(f"kvserve exited with {rc} after SIGTERM")
    ok &= rc == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "build", "server", "kvserve"))
    ap.add_argument("--model", default=None, help="model directory (default: stories260K)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU backend threads (0 = all)")
    ap.add_argument("--requests", type=int, default=2048)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--disconnect-frac", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--round-timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--blocks", type=int, default=2048,
                    help="KV blocks: small enough that the warm-up round touches the whole pool "
                         "(so later RSS growth is not first-touch of pool pages) and the load "
                         "preempts")
    ap.add_argument("server_flags", nargs="*", help="more kvserve flags, after --")
    args = ap.parse_args()
    os.environ["KVSERVE_BIN"] = os.path.abspath(args.bin)
    if not args.model:
        kh.skip_unless_ready()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.idle + args.concurrency + 512)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
