"""The Flower comparison at several fleet and model sizes: ``bench/vs_flower.py`` once per cell.

Each cell (clients x model size) is one ``vs_flower.py`` run, so every side of a cell shares
its data, its machine state and its minute: edgeagent with SecAgg+ on and off, Flower as its
quickstart deploys it (``defaults``), Flower ``tuned`` (TLS, one CPU per SuperNode, SuperExec
polling at its minimum) and Flower ``patched`` (tuned, with the two hard-coded 3 s polls
shortened; see ``FLOWER_SETTINGS`` in vs_flower.py). Model sizes are the shipped detector's
hidden width (32: 4,851 parameters) and two wider ones (800: ~98k; 7000: ~855k, the largest
whose float32 update fits edgeagent's 4 MiB envelope).

Run: python bench/vs_flower_matrix.py [--clients 2 6] [--hidden 32 800 7000] [--rounds 2]
(flwr on PATH: see vs_flower.py). Writes bench/results/vs_flower_matrix.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "vs_flower_matrix.json"
SIDES = ["edgeagent", "edgeagent_plain", "flower", "flower_tuned", "flower_patched"]
KEYS = ("wall_s_per_round", "client_cpu_s_per_round", "server_cpu_s_per_round",
        "bytes_up_per_client_round", "bytes_down_per_client_round", "client_peak_rss_mb",
        "server_peak_rss_mb", "accuracy")  # fmt: skip


def table(cells: list[dict[str, Any]]) -> str:
    heads = ("wall s/rnd", "cli CPU s/rnd", "srv CPU s/rnd", "up B/cli/rnd", "down B/cli/rnd",
             "cli RSS MB", "srv RSS MB", "accuracy")  # fmt: skip
    lines = [f"{'clients':>7} {'params':>8} {'side':16}" + "".join(f"{h:>15}" for h in heads)]
    for c in cells:
        for side, s in c["sides"].items():
            vals = "".join(f"{s[k]:>15}" for k in KEYS[:-1]) + f"{s['accuracy']:>15.3f}"
            lines.append(f"{c['clients']:>7} {c['params']:>8} {side:16}" + vals)
    return "\n".join(lines)


def markdown(cells: list[dict[str, Any]]) -> str:
    """The tables of docs/scale.md: one row per cell and side; processes of one cell."""
    out = ["| clients | params | side | wall s/round | client CPU s/round | server CPU s/round "
           "| up B/client/round | down B/client/round | client RSS MB | server RSS MB |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in cells:
        for side, s in c["sides"].items():
            out.append(f"| {c['clients']} | {c['params']:,} | {side} | {s['wall_s_per_round']} | "
                       f"{s['client_cpu_s_per_round']} | {s['server_cpu_s_per_round']} | "
                       f"{s['bytes_up_per_client_round']:,} | "
                       f"{s['bytes_down_per_client_round']:,} | {s['client_peak_rss_mb']} | "
                       f"{s['server_peak_rss_mb']} |")  # fmt: skip
    return "\n".join(out)


def processes_markdown(cell: dict[str, Any]) -> str:
    out = ["| side | role | process | count | peak RSS MB (max) | peak PSS MB (max) "
           "| CPU s (all) |", "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for side, s in cell["sides"].items():
        for role in ("client", "server"):
            for r in s[f"{role}_processes"]:
                out.append(f"| {side} | {role} | {r['process']} | {r['count']} | "
                           f"{r['peak_rss_mb_max']} | {r['peak_pss_mb_max']} | "
                           f"{r['cpu_s_sum']} |")  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[2, 6])
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 800, 7000])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=300.0, help="simulated time per patient")
    ap.add_argument("--sides", nargs="+", default=SIDES)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="print --out's tables as markdown")
    a = ap.parse_args(argv)
    if a.report:
        done = [c for c in json.loads(a.out.read_text())["cells"] if "sides" in c]
        print(markdown(done))
        for c in done:
            print(f"\n{c['clients']} clients, {c['params']:,} parameters\n")
            print(processes_markdown(c))
        return 0
    cells: list[dict[str, Any]] = []
    tmp = a.out.parent / "vs_flower_cells"
    tmp.mkdir(parents=True, exist_ok=True)
    for n in a.clients:
        for h in a.hidden:
            out = tmp / f"c{n}_h{h}.json"
            t = time.perf_counter()
            cmd = [sys.executable, str(ROOT / "bench" / "vs_flower.py"), "--clients", str(n),
                   "--hidden", str(h), "--rounds", str(a.rounds), "--epochs", str(a.epochs),
                   "--seconds", str(a.seconds), "--sides", *a.sides, "--out", str(out)]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"cell {n} x hidden {h} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
                cells.append({"clients": n, "hidden": h, "error": r.stderr[-2000:]})
                continue
            doc = json.loads(out.read_text())
            doc["hidden"] = h
            cells.append(doc)
            print(f"cell {n} clients x {doc['params']} parameters: "
                  f"{time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
            a.out.write_text(json.dumps({"bench": "vs_flower_matrix", "cells": cells}, indent=1))
    ok = [c for c in cells if "sides" in c]
    print(table(ok))
    print(f"wrote {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")
    return 0 if len(ok) == len(cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
