"""Bytes per hour leaving a box (alerts, model updates, status) against shipping the raw streams.

Why a module and not only a benchmark: the same accounting serves
``bench/bandwidth.py`` and the pilot's report (issue: the edge layer's
promise is that a box sends a small fraction of what it ingests), so both
quote figures computed one way, with the real encoders:

* RAW (the baseline): one simulated patient-hour at the simulator's default
  rates (ECG 250 Hz, ACC 50 Hz x3, skin temperature, environment, HR, RR),
  framed exactly as the serial textile sends them (firmware_sim Framer: COBS,
  CRC, int16/int24 packing) -- the most compact raw form we have, so the
  ratio is conservative -- batched into one MQTT message per second.
* ALERTS: for every labelled episode (clinical and sensor-fault) in that
  hour: one message when it opens, one per minute while it lasts, one when
  it closes, each the JSON of an ``Alert`` record as the outbox stores it.
* UPDATES: bytes one box uploads per SecAgg+ round at the shipped
  ``update_bits`` (real signed CBOR envelopes from ``simulate_round``), times
  rounds per hour.
* STATUS: the retained status message (``telemetry.status_payload``) of a box
  with one serial and two BLE devices, every ``status.interval_s``.

Each MQTT PUBLISH is charged its fixed header, topic, packet id, MQTT 5
property length and one TLS 1.3 record (5 B header + 16 B tag + 1 B type).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from edgeagent.daemon.telemetry import OutboxStats, ProcessStats, build_status, status_payload
from edgeagent.fl.privacy import fedavg_payload
from edgeagent.fl.secagg import RoundConfig
from edgeagent.fl.secagg.simulate import simulate_round
from edgeagent.ops.config import AggregatorSection, StatusSection
from edgeagent.pipeline.alerts import Alert
from edgeagent.transport import topics
from firmware_sim.physiology import Generator, SimConfig, make_patient
from firmware_sim.serialdev import Framer

FLEET, BOX = "clinic-a", "box-0001"
TLS_RECORD = 5 + 16 + 1
#: Share of the raw stream bytes a box may send in normal operation.
TARGET_RATIO = 0.01
#: Seconds a SecAgg+ round's stages take on top of the aggregator's round interval.
ROUND_STAGES_S = 30.0


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


def update_bytes(params: int, boxes: int, seed: int) -> tuple[int, int]:
    """(bytes up per box per round, messages per box per round) for a ``params``-long model,
    at the shipped ``[aggregator] update_bits``."""
    rng = np.random.default_rng(seed)
    clip, n_cap = 1.0, 1000
    nodes = tuple(f"box-{i:04d}" for i in range(boxes))
    cfg = _secagg_config(params, nodes, AggregatorSection().update_bits)
    payloads = {
        n: fedavg_payload(rng.normal(0, 0.01, params).astype(np.float32), 500, clip, n_cap)
        for n in nodes
    }
    rep = simulate_round(cfg, payloads, seeded=True)
    assert rep.result is not None, rep.abort
    up = int(np.mean([rep.bytes_up[n] for n in nodes]))
    # commit and reveal (round seed), advertise keys, share keys, masked input, survivor-set
    # signature, unmask: one PUBLISH each
    stages = 7
    topic = topics.update(FLEET, BOX)
    return up + stages * mqtt_overhead(topic, up // stages), stages


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


def profile(
    raw: int,
    alerts: int,
    update_round: int,
    status_one: int,
    status_interval_s: float,
    rounds_per_hour: float,
) -> dict[str, Any]:
    """One operating profile's bytes per hour and its ratio to the raw streams."""
    status_h = status_one * 3600.0 / status_interval_s
    updates_h = update_round * rounds_per_hour
    total = alerts + updates_h + status_h
    return {
        "status_interval_s": status_interval_s,
        "rounds_per_hour": rounds_per_hour,
        "alerts_bytes_per_h": alerts,
        "updates_bytes_per_h": round(updates_h),
        "status_bytes_per_h": round(status_h),
        "total_bytes_per_h": round(total),
        "ratio_to_raw": total / raw,
        "meets_1pct_target": total / raw <= TARGET_RATIO,
    }


def operating_profiles() -> dict[str, tuple[float, float]]:
    """(status interval s, rounds per hour) of the shipped config and of a fast-rounds setting.

    ``default`` reads the config schema's defaults (status every 300 s; one
    round per aggregator ``round_interval_s`` plus up to ``ROUND_STAGES_S`` of
    stages), so the figure follows the shipped config; ``pilot`` is a
    fast-convergence setting (status every 60 s, a round every 60 s + stages).
    """
    return {
        "default": (
            StatusSection().interval_s,
            3600.0 / (AggregatorSection().round_interval_s + ROUND_STAGES_S),
        ),
        "pilot": (60.0, 3600.0 / (60.0 + ROUND_STAGES_S)),
    }


def measure(
    params: int, boxes: int, seed: int, profiles: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """Raw vs sent bytes per patient-hour; ``profiles``: name -> (status interval s, rounds/h)."""
    raw, raw_msgs, episodes, per_stream = raw_hour(seed)
    alerts, alert_msgs = alert_bytes(episodes)
    upd_round, upd_msgs = update_bytes(params, boxes, seed)
    status_one = status_bytes()
    return {
        "raw_bytes_per_h": raw,
        "raw_messages_per_h": raw_msgs,
        "raw_bytes_per_stream_per_h": per_stream,
        "episodes_per_h": len(episodes),
        "episodes": [{"start": a, "end": b, "kind": k} for a, b, k in episodes],
        "alert_messages_per_h": alert_msgs,
        "update_bytes_per_round": upd_round,
        "update_messages_per_round": upd_msgs,
        "model_parameters": params,
        "round_boxes": boxes,
        "status_bytes_per_message": status_one,
        "profiles": {
            name: profile(raw, alerts, upd_round, status_one, s, r)
            for name, (s, r) in profiles.items()
        },
    }


# -- bytes per box per round against the parameter floor 4·d ------------------------------------

#: Signature bytes a release carries (Ed25519 over the hash, and over fleet/version/round/hash).
RELEASE_SIGNATURE_BYTES = 2 * 64
#: Model download target: at most this times 4·d, plus the signatures.
DOWN_TARGET = 1.05
#: Quantised upload target: at most this times 4·d.
UP_TARGET = 0.35


def _secagg_config(params: int, nodes: tuple[str, ...], update_bits: int) -> RoundConfig:
    """The round the aggregator runs for ``[aggregator] update_bits`` (protocols.secagg)."""
    from edgeagent.fl.secagg.state import field_terms

    clip, n_cap = 1.0, AggregatorSection().n_cap
    return RoundConfig(
        round_id=1,
        nonce=os.urandom(16),
        participants=nodes,
        dim=params + 1,
        clip=clip,
        n_cap=n_cap,
        **field_terms(update_bits, clip, n_cap, 0.0, params, len(nodes)),
    )


def round_bytes(
    model: bytes, boxes: int, seed: int, widths: tuple[int, ...] = (32, 16, 8)
) -> dict[str, Any]:
    """Bytes down and up per box per round with the real encoders, against ``4·d``.

    Down: the retained announcement, the SecAgg+ stage bodies a box receives
    (``simulate_round``), and the new global model, once as the signed ONNX file
    (``model/current``) and once as the signed parameter vector (``model/params``),
    each as the aggregator store encodes it for round 1's model. Up: everything a
    box sends in a SecAgg+ round at each ``update_bits`` width, and the masked
    vector alone. Every publication is charged its MQTT/TLS overhead.
    """
    import tempfile
    from pathlib import Path

    from edgeagent.federation.store import AggregatorStore
    from edgeagent.fl.constants import AGGREGATOR, BROADCAST, Stage
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.fl.messages import Message, encode
    from edgeagent.fl.quantize import packed_bytes
    from edgeagent.fl.wire import Announcement, announcement_body
    from edgeagent.model.graph import get_params, parse_model, set_params, sha256_hex, to_bytes
    from edgeagent.ops.pki import Pki

    rng = np.random.default_rng(seed)
    m = parse_model(model)
    w = get_params(m)
    d = int(w.size)
    v1 = to_bytes(set_params(m, w + rng.normal(0, 0.01, d)))  # round 1's global model
    nodes = tuple(f"box-{i:04d}" for i in range(boxes))
    with tempfile.TemporaryDirectory() as tmp:
        pki = Pki.init(Path(tmp) / "pki", FLEET)
        files = pki.issue_aggregator()
        ident = load_identity(files.cert, load_ca(pki.ca_cert), AGGREGATOR)
        store = AggregatorStore(Path(tmp) / "agg", 1e-5)
        store.store_model(v1, 1, 1, {"holdout_loss": 0.4321, "holdout_n": 1000})
        full = store.publication(ident, FLEET)
        vector = store.params_publication(ident, FLEET)
        assert vector is not None, "round 1's model must be rebuildable from its vector"
        ann = Announcement(nodes, sha256_hex(v1), 30.0, ident.cert_der)
        env = Message(AGGREGATOR, BROADCAST, 1, Stage.SETUP, 0, os.urandom(16),
                      announcement_body(ann))  # fmt: skip
        announce = len(encode(env, ident.key))
    announce += mqtt_overhead(topics.announce(FLEET, 1), announce)
    floor = 4 * d
    model_full = len(full) + mqtt_overhead(topics.model_current(FLEET), len(full))
    model_vec = len(vector) + mqtt_overhead(topics.model_params(FLEET), len(vector))
    payloads = {
        n: fedavg_payload(rng.normal(0, 0.01, d).astype(np.float32), 500, 1.0, 1000) for n in nodes
    }
    up: dict[str, Any] = {}
    protocol_down = 0
    for bits in widths:
        cfg = _secagg_config(d, nodes, bits)
        rep = simulate_round(cfg, payloads)
        assert rep.result is not None, rep.abort
        sent = int(np.mean([rep.bytes_up[n] for n in nodes]))
        got = int(np.mean([rep.bytes_down[n] for n in nodes]))
        stages = 5  # SETUP keys, shares, masked vector, survivor signature, unmask
        topic = topics.node(FLEET, BOX, Stage.COLLECT_MASKED.value)
        sent += stages * mqtt_overhead(topic, sent // stages)
        got += stages * mqtt_overhead(topics.round_topic(FLEET, 1, "setup", BOX), got // stages)
        masked = packed_bytes(d + 1, cfg.bits)
        protocol_down = got if bits == 32 else protocol_down
        up[str(bits)] = {
            "field_bits": cfg.bits,
            "bytes_up_per_box": sent,
            "up_ratio_to_4d": round(sent / floor, 4),
            "masked_vector_bytes": masked,
            "masked_ratio_to_4d": round(masked / floor, 4),
            "protocol_bytes_down_per_box": got,
            "meets_up_target": sent <= UP_TARGET * floor,
        }
    return {
        "params": d,
        "floor_4d": floor,
        "boxes": boxes,
        "release_signature_bytes": RELEASE_SIGNATURE_BYTES,
        "announcement_bytes_per_box": announce,
        "model_down": {
            "onnx_file": model_full,
            "param_vector": model_vec,
            "onnx_ratio_to_4d": round(model_full / floor, 4),
            "vector_ratio_to_4d": round(model_vec / floor, 4),
            "target_bytes": int(DOWN_TARGET * floor + RELEASE_SIGNATURE_BYTES),
            "meets_target": model_vec <= DOWN_TARGET * floor + RELEASE_SIGNATURE_BYTES,
        },
        "protocol_bytes_down_per_box": protocol_down,
        "total_down_per_box": {
            "before": announce + protocol_down + model_full,
            "after": announce + protocol_down + model_vec,
        },
        "up": up,
    }
