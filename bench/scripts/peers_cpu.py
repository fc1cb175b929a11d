#!/usr/bin/env python3
"""CPU per GiB of the peers harness's iperf3 runs (see ../shared/peers/RUNBOOK.md).

usage: peers_cpu.py [RECORDS]   (default: /tmp/peers/raw/records.jsonl)

For each tunnel and parallelism, the medians over the run's repetitions of: Gbit/s received;
CPU-seconds of the tunnel's processes per GiB; CPU-seconds of everything (tunnel, iperf3
server and client) per GiB; and the cores in use. On a CPU-bound machine these say what a
throughput target asks of each process (bench/README.md, "What the figures allow").
"""
import json
import statistics
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/peers/raw/records.jsonl"
rows = {}
with open(path) as records:
    for line in records:
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("test") != "iperf3" or r.get("rc") != 0:
            continue
        gib = r["recv_gbps"] * 1e9 / 8 * r["wall_s"] / 2**30
        client = r["client_cpu_pct"] / 100 * r["wall_s"]
        total = r["tunnel_cpu_s"] + r["backend_cpu_s"] + client
        rows.setdefault((r["P"], r["tunnel"]), []).append(
            (r["recv_gbps"], r["tunnel_cpu_s"] / gib, total / gib, total / r["wall_s"])
        )
for (parallel, tunnel), runs in sorted(rows.items()):
    med = lambda i: statistics.median(run[i] for run in runs)
    print(
        f"{tunnel:12} P={parallel}: {med(0):6.2f} Gbit/s  tunnel {med(1):.3f} CPU-s/GiB"
        f"  all {med(2):.3f} CPU-s/GiB  cores busy {med(3):.2f}  (n={len(runs)})"
    )
