"""Bytes per hour leaving a box (alerts, model updates, status) against shipping the raw streams.

Everything is measured with the real encoders, for one simulated patient-hour:

* RAW (the baseline, measured in the same run): one hour of the physiology
  simulator's streams at its default rates (ECG 250 Hz, ACC 50 Hz x3, skin
  temperature, environment, HR, RR), framed exactly as the serial textile
  sends them (firmware_sim Framer: COBS, CRC, int16/int24 packing) -- the
  most compact raw form we have, so the ratio is conservative -- batched
  into one MQTT message per second.
* ALERTS: for every labelled episode (clinical and sensor-fault) the
  simulator produced in that hour: one message when it opens, one per minute
  while it lasts (extended end and score), one when it closes, each the JSON
  of an ``Alert`` record as the outbox stores it.
* UPDATES: bytes one box uploads per SecAgg+ round (real signed CBOR
  envelopes from ``simulate_round``: keys, encrypted shares, the masked
  4851+1 coordinate vector of the baseline model, unmasking shares), times
  rounds per hour.
* STATUS: the retained status message (``telemetry.status_payload``) of a box
  with one serial and two BLE devices, every ``status.interval_s``.

Each MQTT PUBLISH is charged its fixed header, topic, packet id, MQTT 5
property length and one TLS 1.3 record (5 B header + 16 B tag + 1 B type).

Profiles: ``default`` is the shipped config, read from ``edgeagent.config``
(status every 300 s, aggregator ``round_interval_s`` 3600 s plus up to 30 s of
stages: about one round per hour); ``pilot`` is a fast-convergence setting
(status every 60 s, ``round_interval_s`` 60 s: about 40 rounds per hour).
Target: at most 1% of the raw bytes per hour in normal operation (``default``).

Run: python bench/bandwidth.py [--boxes 10] [--seed 0]
Writes bench/results/bandwidth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnx

from edgeagent.config import AggregatorSection, StatusSection
from edgeagent.fl.privacy import fedavg_payload, payload_bound
from edgeagent.fl.secagg import RoundConfig
from edgeagent.fl.secagg.simulate import simulate_round
from edgeagent.model.graph import get_params
from edgeagent.pipeline.alerts import Alert
from edgeagent.telemetry import OutboxStats, ProcessStats, build_status, status_payload
from edgeagent.transport import topics
from firmware_sim.physiology import Generator, SimConfig, make_patient
from firmware_sim.serialdev import Framer

REPO = Path(__file__).resolve().parents[1]
FLEET, BOX = "clinic-a", "box-0001"
TLS_RECORD = 5 + 16 + 1
PROFILES = {
    "default": {
        "status_interval_s": StatusSection().interval_s,
        "rounds_per_hour": 3600.0 / (AggregatorSection().round_interval_s + 30.0),
    },
    "pilot": {"status_interval_s": 60.0, "rounds_per_hour": 3600.0 / (60.0 + 30.0)},
}


def mqtt_overhead(topic: str, payload: int) -> int:
    """Bytes on the wire for one QoS 1 MQTT 5 PUBLISH beyond its payload (one TLS record)."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + 2 + len(topic.encode()) + 2 + 1 + TLS_RECORD


Episode = tuple[float, float, str]
FAULT_KINDS = ("lead_off", "motion_artifact", "saturation")
UPDATE_EVERY_S = 60.0  # an open alert is re-published (extended) once a minute


def raw_hour(seed: int) -> tuple[int, int, list[Episode], dict[str, int]]:
    """(framed bytes, messages, episodes, per-stream bytes) of one simulated hour."""
    gen = Generator(make_patient(0, seed=seed), SimConfig())
    framer = Framer()
    total, per_stream = 0, {}
    episodes: set[Episode] = set()
    topic = topics.node(FLEET, BOX, "raw")
    wire = 0
    for _ in range(3600):
        chunk = gen.advance(1.0)
        episodes |= {(lab.start, lab.end, lab.kind) for lab in chunk.labels}
        sec = 0
        for f in framer.frames(chunk):
            sec += len(f.data)
            per_stream[f.stream] = per_stream.get(f.stream, 0) + len(f.data)
        total += sec
        wire += sec + mqtt_overhead(topic, sec)
    return wire, 3600, sorted(episodes), per_stream


def alert_bytes(episodes: list[Episode]) -> tuple[int, int]:
    """(bytes, messages): open, one update per UPDATE_EVERY_S, close, per episode."""
    topic = topics.alert(FLEET, BOX)
    total = n = 0
    for start, end, kind in episodes:
        a = Alert(
            patient="p001",
            device="chest-01",
            start=1_764_300_000.0 + start,
            end=1_764_300_000.0 + end,
            kind=kind,
            category="sensor_fault" if kind in FAULT_KINDS else "clinical",
            score=0.93,
            modality="ecg",
            model="global-v12",
            detail={"windows": 6, "p_fault": 0.04, "threshold": 0.5},
        )
        updates = int((end - start) // UPDATE_EVERY_S)
        for closed in [False] * (1 + updates) + [True]:
            a.closed = closed
            body = json.dumps(a.as_dict(), separators=(",", ":")).encode()
            total += len(body) + mqtt_overhead(topic, len(body))
            n += 1
    return total, n


def update_bytes(boxes: int, seed: int) -> tuple[int, int, int]:
    """(bytes up per box per round, messages per box per round, model parameters)."""
    params = get_params(onnx.load(REPO / "models" / "baseline.onnx")).size
    rng = np.random.default_rng(seed)
    clip, n_cap = 1.0, 1000
    nodes = tuple(f"box-{i:04d}" for i in range(boxes))
    cfg = RoundConfig(
        round_id=1,
        nonce=os.urandom(16),
        participants=nodes,
        dim=params + 1,
        bound=payload_bound(clip, n_cap),
        clip=clip,
        n_cap=n_cap,
    )
    payloads = {
        n: fedavg_payload(rng.normal(0, 0.01, params).astype(np.float32), 500, clip, n_cap)
        for n in nodes
    }
    rep = simulate_round(cfg, payloads)
    assert rep.result is not None, rep.abort
    up = int(np.mean([rep.bytes_up[n] for n in nodes]))
    stages = 4  # advertise keys, share keys, masked input, unmask: one PUBLISH each
    topic = topics.update(FLEET, BOX)
    return up + stages * mqtt_overhead(topic, up // stages), stages, params


def status_bytes() -> int:
    """One retained status message of a box with a textile and two BLE straps."""
    counters = {
        "frames_ok": 1_234_567,
        "samples_ok": 98_765_432,
        "bad_crc": 12,
        "malformed": 3,
        "resyncs": 15,
        "seq_gaps": 4,
        "frames_missing": 9,
        "duplicates": 1,
        "bytes_dropped": 420,
        "reconnects": 2,
    }
    links = {
        dev: {"kind": kind, "patient": "p001", "state": "streaming", "counters": counters}
        for dev, kind in (("textile-01", "serial"), ("chest-01", "ble"), ("band-01", "ble"))
    }
    snap = build_status(
        box_id=BOX,
        fleet=FLEET,
        version="0.1.0",
        started_at=1_764_300_000.0,
        now=1_764_386_400.0,
        state="running",
        model_version="global-v12",
        links=links,
        outbox=OutboxStats(depth=0, bytes=0, dropped=0, oldest_age_s=None),
        counters={"windows": 43_200, "alerts": 8, "rounds": 24},
        process=ProcessStats(cpu_percent=7.5, rss_bytes=96 * 2**20, memory_percent=2.4, threads=14),
        last_round=24,
    )
    body = status_payload(snap)
    return len(body) + mqtt_overhead(topics.status(FLEET, BOX), len(body))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boxes", type=int, default=10, help="boxes in the simulated round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bandwidth.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    raw, raw_msgs, episodes, per_stream = raw_hour(args.seed)
    alerts, alert_msgs = alert_bytes(episodes)
    upd_round, upd_msgs, params = update_bytes(args.boxes, args.seed)
    status_one = status_bytes()
    elapsed = time.perf_counter() - t0

    profiles = {}
    for name, p in PROFILES.items():
        status_h = status_one * 3600.0 / p["status_interval_s"]
        updates_h = upd_round * p["rounds_per_hour"]
        total = alerts + updates_h + status_h
        profiles[name] = {
            **p,
            "alerts_bytes_per_h": alerts,
            "updates_bytes_per_h": round(updates_h),
            "status_bytes_per_h": round(status_h),
            "total_bytes_per_h": round(total),
            "ratio_to_raw": total / raw,
            "meets_1pct_target": total / raw <= 0.01,
        }
    result = {
        "benchmark": "bandwidth",
        "machine": {"python": platform.python_version(), "cpu": platform.machine()},
        "seconds": round(elapsed, 2),
        "raw_bytes_per_h": raw,
        "raw_messages_per_h": raw_msgs,
        "raw_bytes_per_stream_per_h": per_stream,
        "episodes_per_h": len(episodes),
        "episodes": [{"start": a, "end": b, "kind": k} for a, b, k in episodes],
        "alert_messages_per_h": alert_msgs,
        "update_bytes_per_round": upd_round,
        "update_messages_per_round": upd_msgs,
        "model_parameters": params,
        "round_boxes": args.boxes,
        "status_bytes_per_message": status_one,
        "profiles": profiles,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    mb = 1e6
    print(f"bandwidth per box-hour (one patient; measured in {elapsed:.1f} s)")
    print(f"  raw streams, framed + MQTT/TLS: {raw / mb:8.3f} MB/h  (baseline)")
    for s, b in sorted(per_stream.items(), key=lambda kv: -kv[1]):
        print(f"    {s:10} {b / mb:8.3f} MB/h")
    print(f"  alerts: {len(episodes)} episodes -> {alert_msgs} messages, {alerts / 1e3:.1f} kB/h")
    print(f"  update: {params} params, {upd_round / 1e3:.1f} kB up per round ({args.boxes} boxes)")
    print(f"  status: {status_one} B per message")
    for name, p in profiles.items():
        head = f"[{name}] status every {p['status_interval_s']:.0f} s"
        print(
            f"  {head}, {p['rounds_per_hour']:.1f} rounds/h:"
            f" {p['total_bytes_per_h'] / 1e3:8.1f} kB/h = {p['ratio_to_raw']:.2%} of raw"
            f"  (alerts {p['alerts_bytes_per_h'] / 1e3:.1f}, updates"
            f" {p['updates_bytes_per_h'] / 1e3:.1f}, status {p['status_bytes_per_h'] / 1e3:.1f} kB)"
            f"  target <=1%: {'met' if p['meets_1pct_target'] else 'NOT met'}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
