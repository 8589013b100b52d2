"""Bytes per hour leaving a box (alerts, model updates, status) against shipping the raw streams.

The accounting lives in ``edgelab.bandwidth`` (the pilot report uses it
too); this script runs it for the baseline model and two operating profiles:
``default`` is the shipped config, read from ``edgeagent.ops.config`` (status
every 300 s, aggregator ``round_interval_s`` 3600 s plus up to 30 s of
stages: about one round per hour); ``pilot`` is a fast-convergence setting
(status every 60 s, ``round_interval_s`` 60 s: about 40 rounds per hour).
Target: at most 1% of the raw bytes per hour in normal operation (``default``).

Per round (``edgelab.bandwidth.round_bytes``), in the same run: bytes down and up
per box against the parameter floor 4·d. Down: announcement + SecAgg+ stage
bodies + the new global model, *before* as the signed ONNX file (``model/current``)
and *after* as the signed parameter vector (``model/params``); target: model
download <= 1.05 x 4·d + the release signatures. Up: a whole SecAgg+ round at
``update_bits`` 32 (before) and 16 and 8 (quantised); target: <= 0.35 x 4·d.

Run: python bench/bandwidth.py [--boxes 10] [--seed 0]
Writes bench/results/bandwidth.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import onnx

from edgeagent.model.graph import get_params
from edgelab.bandwidth import measure, operating_profiles, round_bytes

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boxes", type=int, default=10, help="boxes in the simulated round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bandwidth.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    params = get_params(onnx.load(REPO / "models" / "baseline.onnx")).size
    res = measure(params, args.boxes, args.seed, operating_profiles())
    per_round = round_bytes((REPO / "models" / "baseline.onnx").read_bytes(), args.boxes, args.seed)
    elapsed = time.perf_counter() - t0
    result = {
        "benchmark": "bandwidth",
        "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        "seconds": round(elapsed, 2),
        **res,
        "per_round": per_round,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    mb = 1e6
    raw = res["raw_bytes_per_h"]
    print(f"bandwidth per box-hour (one patient; measured in {elapsed:.1f} s)")
    print(f"  raw streams, framed + MQTT/TLS: {raw / mb:8.3f} MB/h  (baseline)")
    for s, b in sorted(res["raw_bytes_per_stream_per_h"].items(), key=lambda kv: -kv[1]):
        print(f"    {s:10} {b / mb:8.3f} MB/h")
    print(
        f"  alerts: {res['episodes_per_h']} episodes -> {res['alert_messages_per_h']} messages, "
        f"{res['profiles']['default']['alerts_bytes_per_h'] / 1e3:.1f} kB/h"
    )
    print(
        f"  update: {params} params, {res['update_bytes_per_round'] / 1e3:.1f} kB up per round "
        f"({args.boxes} boxes)"
    )
    print(f"  status: {res['status_bytes_per_message']} B per message")
    for name, p in res["profiles"].items():
        head = f"[{name}] status every {p['status_interval_s']:.0f} s"
        print(
            f"  {head}, {p['rounds_per_hour']:.1f} rounds/h:"
            f" {p['total_bytes_per_h'] / 1e3:8.1f} kB/h = {p['ratio_to_raw']:.2%} of raw"
            f"  (alerts {p['alerts_bytes_per_h'] / 1e3:.1f}, updates"
            f" {p['updates_bytes_per_h'] / 1e3:.1f}, status {p['status_bytes_per_h'] / 1e3:.1f} kB)"
            f"  target <=1%: {'met' if p['meets_1pct_target'] else 'NOT met'}"
        )
    pr, floor = per_round, per_round["floor_4d"]
    md = pr["model_down"]
    print(f"per box per round ({pr['boxes']} boxes, d = {pr['params']}, 4·d = {floor} B)")
    print(f"  {'':34} {'bytes':>8} {'x 4·d':>7}")
    rows = [
        ("down: model as ONNX file (before)", md["onnx_file"]),
        ("down: model as param vector (after)", md["param_vector"]),
        ("down: announcement", pr["announcement_bytes_per_box"]),
        ("down: SecAgg+ stage bodies", pr["protocol_bytes_down_per_box"]),
        ("down: total before", pr["total_down_per_box"]["before"]),
        ("down: total after", pr["total_down_per_box"]["after"]),
    ]
    for bits, u in pr["up"].items():
        rows.append((f"up: round at {bits} bits (field {u['field_bits']})", u["bytes_up_per_box"]))
        rows.append((f"up: masked vector at {bits} bits", u["masked_vector_bytes"]))
    for label, b in rows:
        print(f"  {label:34} {b:8d} {b / floor:7.3f}")
    print(
        f"  model download target <= {md['target_bytes']} B (1.05 x 4·d + signatures): "
        f"{'met' if md['meets_target'] else 'NOT met'}"
    )
    for bits, u in pr["up"].items():
        verdict = "met" if u["meets_up_target"] else "NOT met"
        print(f"  upload target <= 0.35 x 4·d at {bits} bits: {verdict}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
