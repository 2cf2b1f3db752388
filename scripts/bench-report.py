#!/usr/bin/env python3
"""Summarizes the runs of scripts/bench.sh: medians per cell, the baselines, the target ratios.

Reads one JSON object per line (QUIC runs of `ferrobeam bench`, iperf3, raw UDP, openssl), writes
the whole record as JSON, a bar chart as SVG (no dependencies: the SVG is written by hand), and
prints a Markdown summary for docs/BENCHMARKS.md.
"""
import argparse
import json
import statistics
from collections import defaultdict
from html import escape

SMALL, JUMBO = 1452, 8952


def median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def fmt(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(runs):
    cells = defaultdict(list)
    for r in runs:
        if r.get("kind") == "quic":
            cells[(r["backend"], r["payload"], r["mode"], r["connections"])].append(r)
    quic = []
    for (backend, payload, mode, conns), rs in sorted(cells.items()):
        ok = [r for r in rs if not r.get("failed")]
        quic.append({
            "backend": backend, "payload": payload, "mode": mode, "connections": conns,
            "runs": len(rs), "failed": len(rs) - len(ok),
            "goodput-gbps": median(r.get("goodput-gbps") for r in ok),
            "messages-per-second": median(r.get("messages-per-second") for r in ok),
            "gbps-per-busy-core": median(r.get("gbps-per-busy-core") for r in ok),
            "busy-cores": median(r.get("busy-cores") for r in ok),
            "ack-p99-ms": median(r.get("ack-latency-ms", {}).get("p99") for r in ok),
            "path-udp-payload": median(r.get("path-udp-payload") for r in ok),
        })
    udp = {}
    for payload in sorted({r["payload"] for r in runs if r.get("kind") == "udp-gso"}):
        rs = [r for r in runs if r.get("kind") == "udp-gso" and r["payload"] == payload]
        udp[payload] = {
            "gbps": median(r.get("gbps") for r in rs),
            "gbps-per-busy-core": median(r.get("gbps-per-busy-core") for r in rs),
            "segments-per-send": rs[0].get("segments-per-send"),
        }
    iperf = [r for r in runs if r.get("kind") == "iperf3-tcp"]
    tcp = {
        "gbps": median(r.get("gbps") for r in iperf),
        "busy-cores": median(r.get("busy-cores") for r in iperf),
    }
    if tcp["gbps"] is not None and tcp["busy-cores"]:
        tcp["gbps-per-busy-core"] = tcp["gbps"] / tcp["busy-cores"]
    aes = {r["bytes"]: r["bytes-per-second"] for r in runs if r.get("kind") == "openssl-aes-128-gcm"}
    return quic, udp, tcp, aes


def bulk(quic, backend, payload, conns=1):
    for c in quic:
        if (c["backend"], c["payload"], c["mode"], c["connections"]) == (backend, payload, "bulk", conns):
            return c
    return None


def ratios(quic, udp, backends):
    out = []
    for payload in (SMALL, JUMBO):
        peers = [bulk(quic, b, payload) for b in ("tokio", "s2n")]
        peers = [c for c in peers if c and c["goodput-gbps"] is not None]
        best = max(peers, key=lambda c: c["goodput-gbps"], default=None)
        raw = udp.get(payload, {}).get("gbps")
        for backend in backends:
            cell = bulk(quic, backend, payload)
            if not cell or cell["goodput-gbps"] is None:
                continue
            g = cell["goodput-gbps"]
            out.append({
                "payload": payload, "backend": backend,
                "vs-best-peer": (g / best["goodput-gbps"]) if best and backend == "uring" else None,
                "best-peer": best["backend"] if best else None,
                "vs-raw-udp": (g / raw) if raw else None,
                "gbps-per-busy-core": cell["gbps-per-busy-core"],
                "target-per-busy-core": 6 if payload == SMALL else 12,
            })
    return out


def markdown(quic, udp, tcp, aes, rows, args):
    lines = [
        f"Machine: {args.machine}; commit {args.commit}.",
        f"Command: `{args.command}` (medians; loopback; client `ferrobeam bench`, quinn).",
        "",
        "| backend | packet B | mode | conns | Gbit/s | msg/s | busy cores | Gbit/s per busy core | ack p99 ms | path payload B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in quic:
        lines.append(
            f"| {c['backend']} | {c['payload']} | {c['mode']} | {c['connections']} | "
            f"{fmt(c['goodput-gbps'])} | {fmt(c['messages-per-second'], 0)} | {fmt(c['busy-cores'])} | "
            f"{fmt(c['gbps-per-busy-core'])} | {fmt(c['ack-p99-ms'], 1)} | {fmt(c['path-udp-payload'], 0)} |"
            + (f" ({c['failed']} of {c['runs']} runs failed)" if c["failed"] else "")
        )
    lines += ["", "Baselines (same invocation):", "",
              "| baseline | Gbit/s | Gbit/s per busy core | note |", "|---|---|---|---|"]
    for payload, u in udp.items():
        lines.append(f"| raw UDP GSO+GRO, {payload} B | {fmt(u['gbps'])} | {fmt(u['gbps-per-busy-core'])} | "
                     f"{u['segments-per-send']} segments per send |")
    lines.append(f"| iperf3 TCP, 1 stream | {fmt(tcp.get('gbps'))} | {fmt(tcp.get('gbps-per-busy-core'))} | |")
    for size, rate in sorted(aes.items(), reverse=True):
        lines.append(f"| openssl AES-128-GCM, {size} B | {fmt(rate * 8 / 1e9)} | {fmt(rate * 8 / 1e9)} | "
                     f"{rate / 1e9:.2f} GB/s, one core |")
    lines += ["", "Targets (bulk, 1 connection):", "",
              "| packet B | backend | vs best of tokio/s2n (uring ≥ 1.3× at 1452, ≥ 1.1× jumbo) | vs raw UDP (jumbo ≥ 0.85) | Gbit/s per busy core (target) |",
              "|---|---|---|---|---|"]
    for r in rows:
        versus = fmt(r["vs-best-peer"]) + f" (best: {r['best-peer']})" if r["vs-best-peer"] is not None else "—"
        lines.append(f"| {r['payload']} | {r['backend']} | {versus} | {fmt(r['vs-raw-udp'])} | "
                     f"{fmt(r['gbps-per-busy-core'])} (≥ {r['target-per-busy-core']}) |")
    if "uring" not in args.backends.split():
        lines.append("")
        lines.append("The uring backend is not in this build: its ratios are not measured.")
    return "\n".join(lines)


def svg(quic, udp, tcp):
    bars = []
    for c in quic:
        if c["mode"] == "bulk" and c["goodput-gbps"] is not None:
            bars.append((f"{c['backend']} {c['payload']} B ×{c['connections']}", c["goodput-gbps"], "#4878a8"))
    for payload, u in udp.items():
        if u["gbps"] is not None:
            bars.append((f"raw UDP GSO+GRO {payload} B", u["gbps"], "#a0a0a0"))
    if tcp.get("gbps") is not None:
        bars.append(("iperf3 TCP", tcp["gbps"], "#a0a0a0"))
    top = max([b[1] for b in bars] + [1.0])
    row, left, width = 24, 230, 420
    height = row * len(bars) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14">Bulk goodput, Gbit/s (median; grey: baselines)</text>']
    for i, (label, value, color) in enumerate(bars):
        y = 36 + i * row
        w = max(1.0, value / top * width)
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{color}"/>')
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 14}">{value:.2f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser()
    for name in ("--runs-file", "--json", "--svg", "--machine", "--commit", "--backends", "--command"):
        parser.add_argument(name, required=name in ("--runs-file", "--json", "--svg"), default="")
    args = parser.parse_args()
    runs = load(args.runs_file)
    quic, udp, tcp, aes = summarize(runs)
    rows = ratios(quic, udp, args.backends.split())
    with open(args.json, "w") as f:
        json.dump({"machine": args.machine, "commit": args.commit, "command": args.command,
                   "backends": args.backends.split(), "cells": quic, "udp-gso": udp,
                   "iperf3-tcp": tcp, "openssl-aes-128-gcm": aes, "targets": rows, "runs": runs},
                  f, indent=1)
    with open(args.svg, "w") as f:
        f.write(svg(quic, udp, tcp))
    print(markdown(quic, udp, tcp, aes, rows, args))


if __name__ == "__main__":
    main()
