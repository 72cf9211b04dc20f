#!/usr/bin/env python3
"""The table of issue 13 from one run_gpu_bench.sh output folder: every row with its value, the
ceiling it is judged against (measured in the same run) and the ratio, next to the target.

  tests/bench/issue13_table.py OUT_DIR

Reads bench_model.md, bench_kernels.log, bench_offload.md, bench_startup.md, bench_longdoc.md
(each optional: a missing one gives "not run"). Standard library only."""
import os
import re
import sys


def read(d, name):
    try:
        with open(os.path.join(d, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return float("nan")


def table_rows(text, first_cell):
    """Cells of the markdown rows whose first cell is first_cell."""
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            out.append(cells)
    return out


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "bench-out"
    rows = []
    model = read(d, "bench_model.md")
    m = re.search(r"device copy \(copy_async, device to device\) \| [^|]* \| [^|]* \| ([0-9.]+) GB/s",
                  model)
    copy = num(m.group(1)) if m else float("nan")
    m = re.search(r"GEMM BF16 \d+\^3 \| \| [^|]* \| ([0-9.]+) TFLOP/s", model)
    gemm = num(m.group(1)) if m else float("nan")
    targets = {"1": 90, "8": 88, "64": 85}
    for b in ("1", "8", "64"):
        r = table_rows(model, b)
        r = [x for x in r if len(x) >= 8 and x[6].endswith("%")]
        if r:
            ms, roof, pct = num(r[0][1]), num(r[0][5]), num(r[0][6].rstrip("%"))
            rows.append((f"decode batch {b}, context 1K", f"{ms:.3f} ms",
                         f"roofline {roof:.3f} ms (copy {copy:.0f} GB/s)", f"{pct:.1f}%",
                         f">= {targets[b]}%", pct >= targets[b]))
        else:
            rows.append((f"decode batch {b}, context 1K", "not run", "", "", "", None))
    r = table_rows(model, "10240")
    if r and len(r[0]) >= 7:
        ms = num(r[0][2])
        rows.append(("prefill 10K tokens, one sequence", f"{ms:.1f} ms",
                     f"GEMM {gemm:.0f} TFLOP/s: {r[0][5]} TFLOP/s", r[0][6] + " of GEMM",
                     "<= 250 ms", ms <= 250))
    else:
        rows.append(("prefill 10K tokens, one sequence", "not run", "", "", "", None))
    kern = read(d, "bench_kernels.log")
    m = re.search(r"attention prefill 10240 new after 0\s+([0-9.]+) ms\s+([0-9.]+) TFLOP/s\s+"
                  r"([0-9.]+)% of GEMM", kern)
    if m:
        tf = num(m.group(2))
        rows.append(("prefill attention 10K causal, per layer", f"{m.group(1)} ms = {tf:.0f} TFLOP/s",
                     "GEMM rate of bench_kernels", m.group(3) + "%", ">= 600 TFLOP/s", tf >= 600))
    else:
        rows.append(("prefill attention 10K causal", "not run", "", "", "", None))
    off = read(d, "bench_offload.md")
    m_h2d = re.search(r"H2D ([0-9.]+) GB/s", off)
    m_blk = re.search(r"KV block (\d+) tokens = (\d+) bytes", off)
    r = table_rows(off, "10000")
    if r and m_h2d and m_blk and len(r[0]) >= 4:
        host_ms = num(r[0][3].split()[0])
        tokens = 10000
        link_ms = tokens / int(m_blk.group(1)) * int(m_blk.group(2)) / (num(m_h2d.group(1)) * 1e9) * 1e3
        rows.append(("TTFT 10K-token prompt in the host tier", f"{host_ms:.2f} ms",
                     f"link time of its KV {link_ms:.1f} ms (pinned H2D {m_h2d.group(1)} GB/s)",
                     f"{host_ms / link_ms:.2f}x link", "<= 26 ms", host_ms <= 26))
    else:
        rows.append(("TTFT 10K-token prompt in the host tier", "not run", "", "", "", None))
    m = re.search(r"\| decode cost of offloading at 0% hits <= 1% \| ([^|]*) \|", off)
    if m:
        cost = num(re.match(r"\s*(-?[0-9.]+)%", m.group(1)).group(1)) if re.match(
            r"\s*-?[0-9.]+%", m.group(1)) else float("nan")
        sd = re.search(r"\+- ([0-9.]+)%", m.group(1))
        rows.append(("decode cost of the host tier at 0% hits", m.group(1).strip(),
                     "tier-off runs of the same run", f"{cost:.2f}%", "<= 1%, spread < 1%",
                     cost <= 1 and (sd is not None and num(sd.group(1)) < 1)))
    else:
        rows.append(("decode cost of the host tier at 0% hits", "not run", "", "", "", None))
    st = read(d, "bench_startup.md")
    r1, r2 = table_rows(st, "spawn to /health 200"), table_rows(st, "weights loaded (kvserve's log)")
    r3 = table_rows(st, "TTFT 1st request after ready")
    r4 = table_rows(st, "TTFT 2nd request")
    if r1 and r2 and r3 and r4:
        ready = num(r1[0][1].split()[0])
        first = num(r3[0][1].split()[0])
        rows.append(("start-up: spawn to /health 200", r1[0][1], "weights: " + r2[0][1] + " vs " +
                     r2[0][2], r2[0][3], "<= 3 s", ready <= 3))
        rows.append(("start-up: TTFT of the first request after ready", r3[0][1],
                     "2nd request " + r4[0][1], r3[0][3], "<= 100 ms", first <= 100))
    else:
        rows.append(("start-up", "not run", "", "", "", None))
    ld = read(d, "bench_longdoc.md")
    m = re.search(r"Revisit rounds: (.*)", ld)
    rows.append(("HTTP long documents, revisit rounds (tier on vs off)",
                 m.group(1) if m else "not run", "tier off, same run", "", "table in bench_longdoc.md",
                 None))

    print("### issue 13 on this machine: every row with its ceiling from the same run\n")
    print("| what | measured | ceiling (same run) | ratio | target | met |\n|---|---|---|---|---|---|")
    for w, v, c, ratio, t, ok in rows:
        print(f"| {w} | {v} | {c} | {ratio} | {t} | {'' if ok is None else 'yes' if ok else 'NO'} |")
    ops = read(d, "bench_decode_ops.md")
    if ops:
        print("\nDecode step breakdown (bench_decode_ops.md), per batch:\n")
        for b, line in zip(re.findall(r"#### batch (\d+)", ops),
                           re.findall(r"step as served .*", ops)):
            print(f"- batch {b}: {line}")


if __name__ == "__main__":
    main()
