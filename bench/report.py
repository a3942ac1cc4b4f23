#!/usr/bin/env python3
"""Turns bench/compare's results (results.jsonl, disk.json, memory.txt) into compare.md, a
PNG chart (throughput and p99 latency against clients), and the target check.

    report.py OUT_DIR [--quick]            write OUT_DIR/compare.md (+ chart.png)
    report.py OUT_DIR --splice FILE.md     replace the block between the compare markers in FILE
"""
import json
import os
import platform
import subprocess
import sys
import time

BEGIN = "<!-- bench/compare:begin -->"
END = "<!-- bench/compare:end -->"


def load(out):
    rows = []
    with open(os.path.join(out, "results.jsonl")) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    disk = None
    p = os.path.join(out, "disk.json")
    if os.path.exists(p):
        disk = json.load(open(p))
    mem = {}
    p = os.path.join(out, "memory.txt")
    if os.path.exists(p):
        for line in open(p):
            name, val = line.split()
            mem[name] = int(val.split("=")[1])
    return rows, disk, mem


def find(rows, label, workload, clients):
    for r in rows:
        if r["label"] == label and r["workload"] == workload and r["clients"] == clients:
            return r
    return None


def machine():
    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU ({cpu}), {platform.system()} {platform.release()}"


# RaftKV's two front ends, each checked against every target: gRPC and the Redis port.
FRONT_ENDS = (("raftkv", "gRPC"), ("raftkv-resp", "Redis port"))


def checks(rows, disk, mem):
    """(name, target, measured text, ok or None when not measurable)."""
    out = []
    et_w64, rd_w64 = find(rows, "etcd", "write", 64), find(rows, "redis", "write", 64)
    et_w1, et_r64 = find(rows, "etcd", "write", 1), find(rows, "etcd", "read", 64)
    for label, via in FRONT_ENDS:
        rk_w64 = find(rows, label, "write", 64)
        if rk_w64 and et_w64:
            r = rk_w64["throughput"] / et_w64["throughput"]
            out.append((f"writes, 64 clients, vs etcd ({via})", ">= 2x", f"{r:.2f}x", r >= 2))
        if rk_w64 and rd_w64:
            r = rk_w64["throughput"] / rd_w64["throughput"]
            out.append((f"writes, 64 clients, vs redis with appendfsync always ({via})", ">= 0.5x",
                        f"{r:.2f}x", r >= 0.5))
        rk_w1 = find(rows, label, "write", 1)
        if rk_w1 and et_w1:
            a, b = rk_w1["latency"]["p50_ms"], et_w1["latency"]["p50_ms"]
            out.append((f"1 client write p50 vs etcd ({via})", "<= etcd", f"{a:.3f} ms vs {b:.3f} ms",
                        a <= b))
        if rk_w1 and disk:
            a, d = rk_w1["latency"]["p50_ms"], disk["latency"]["p50_ms"]
            out.append((f"1 client write p50 vs disk fdatasync p50 ({via})", "<= 2.5x",
                        f"{a:.3f} ms / {d:.3f} ms = {a / d:.2f}x", a <= 2.5 * d))
        rk_r64 = find(rows, label, "read", 64)
        if rk_r64 and et_r64:
            r = rk_r64["throughput"] / et_r64["throughput"]
            out.append((f"linearizable reads, 64 clients, vs etcd ({via})", ">= 3x", f"{r:.2f}x",
                        r >= 3))
    load = next((r for r in rows if r["label"] == "raftkv-load"), None)
    if mem and load:
        raw = load["keys"] * (11 + load["value_size"])
        worst = max(mem.values()) * 1024
        out.append(("memory, 1M keys x 100 B, RSS per store / raw data", "<= 3x",
                    f"{worst / 2**20:.0f} MiB / {raw / 2**20:.0f} MiB = {worst / raw:.2f}x", worst <= 3 * raw))
    return out


def markdown(out, rows, disk, mem, quick):
    lines = []
    date = time.strftime("%Y-%m-%d")
    lines.append(f"Run on {date}, {machine()}; command: `bench/compare{' --quick' if quick else ''}`. "
                 f"Keys: {rows[0]['keys'] if rows else '?'} (uniform unless noted), values: "
                 f"{rows[0]['value_size'] if rows else '?'} B, "
                 f"{rows[0]['elapsed_s']:.0f} s per measurement; all servers on 127.0.0.1, "
                 "data on the same disk, load from `raftkv bench` on the same machine." if rows else "")
    if disk:
        lat = disk["latency"]
        lines.append("")
        lines.append(f"Disk (`raftkv disk-probe`, {disk['record_bytes']} B append + fdatasync): "
                     f"p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, {disk['syncs_per_sec']:.0f} syncs/s.")
    for workload in ("write", "read", "ycsb-a", "ycsb-b"):
        sel = [r for r in rows if r["workload"] == workload]
        if not sel:
            continue
        lines.append("")
        lines.append(f"**{workload}**" + (" (linearizable reads)" if workload == "read" else ""))
        lines.append("")
        lines.append("| system | clients | connections | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in sorted(sel, key=lambda r: (r["label"], r["clients"])):
            l = r["latency"]
            dist = "" if r["distribution"] == "uniform" else f" ({r['distribution']})"
            lines.append(f"| {r['label']}{dist} | {r['clients']} | {r.get('connections', '?')} | {r['throughput']:.0f} | {l['p50_ms']:.3f} | "
                         f"{l['p90_ms']:.3f} | {l['p99_ms']:.3f} | {l['p999_ms']:.3f} | {l['max_ms']:.3f} | {r['errors']} |")
    for name, title in (("redis-benchmark-raftkv.txt", "redis-benchmark -t set,get,incr -n 100000 -c 50 -P 16 against RaftKV's RESP port"),
                        ("redis-benchmark-redis.txt", "the same against redis-server (appendonly yes, appendfsync always)")):
        p = os.path.join(out, name)
        if os.path.exists(p):
            lines.append("")
            lines.append(f"{title}:")
            lines.append("```")
            lines.extend(l.strip() for l in open(p) if l.strip())
            lines.append("```")
    if mem:
        lines.append("")
        lines.append("Memory after loading 1,000,000 keys × 100-byte values: " +
                     ", ".join(f"{k} RSS {v / 1024:.0f} MiB" for k, v in sorted(mem.items())) + ".")
    cs = checks(rows, disk, mem)
    if cs:
        lines.append("")
        lines.append("| target | wanted | measured | met |")
        lines.append("|---|---|---|---|")
        for name, want, got, ok in cs:
            lines.append(f"| {name} | {want} | {got} | {'yes' if ok else '**no**'} |")
    if os.path.exists(os.path.join(out, "chart.png")):
        lines.append("")
        lines.append("![throughput and p99 latency against clients](bench/chart.png)")
    return "\n".join(lines) + "\n"


def chart(out, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib missing, no chart (scripts/install-bench-peers.sh installs it)")
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, workload in enumerate(("write", "read")):
        for label in sorted({r["label"] for r in rows if r["workload"] == workload}):
            sel = sorted((r for r in rows if r["label"] == label and r["workload"] == workload
                          and r["distribution"] == "uniform"), key=lambda r: r["clients"])
            if len(sel) < 2:
                continue
            xs = [r["clients"] for r in sel]
            axes[0][col].plot(xs, [r["throughput"] for r in sel], marker="o", label=label)
            axes[1][col].plot(xs, [r["latency"]["p99_ms"] for r in sel], marker="o", label=label)
        axes[0][col].set_title(f"{workload}: throughput (ops/s)")
        axes[1][col].set_title(f"{workload}: p99 latency (ms)")
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xlabel("clients")
            axes[row][col].grid(True, alpha=0.3)
            axes[row][col].legend()
        axes[1][col].set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "chart.png"), dpi=90)


def main():
    out = sys.argv[1]
    quick = "--quick" in sys.argv
    rows, disk, mem = load(out)
    if "--splice" in sys.argv:
        target = sys.argv[sys.argv.index("--splice") + 1]
        text = open(target).read()
        block = open(os.path.join(out, "compare.md")).read()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            text = head + BEGIN + "\n" + block + END + tail
        else:
            text = text.rstrip() + "\n\n## RaftKV vs etcd vs Redis (bench/compare)\n\n" + BEGIN + "\n" + block + END + "\n"
        open(target, "w").write(text)
        return
    if not rows:
        sys.exit("report.py: no results")
    bad = [r for r in rows if r["ops"] == 0]
    if bad:
        sys.exit(f"report.py: runs with no successful operation: {[(r['label'], r['workload'], r['clients']) for r in bad]}")
    if not quick:
        chart(out, rows)
    md = markdown(out, rows, disk, mem, quick)
    open(os.path.join(out, "compare.md"), "w").write(md)
    print(md)


if __name__ == "__main__":
    main()
