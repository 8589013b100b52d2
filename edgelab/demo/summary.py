"""The demo's figures, computed from plain records (pure: no devices, threads or files).

Alerts matched to ground truth, detection delays, window-level accuracy per
segment, totals, and :func:`check_summary`, which lists every figure that does
not add up. The tests call these on hand-made records; the demo calls them on
what its hubs recorded (:func:`edgelab.demo.hubs.hub_record`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgelab.demo.nurse import alert_truth
from edgelab.demo.options import (
    CLINICAL,
    CLIP_NORM,
    FAULT_KIND_NAMES,
    HOP_S,
    N_CAP,
    WINDOW_S,
    DemoOptions,
    Part,
    privacy_statement,
)

#: The reference arms every hub scores beside its own detector (``edgelab.demo.arms``).
ARMS = ("baseline", "control")


def percentiles(
    values: Sequence[float], qs: Sequence[int] = (50, 90, 99)
) -> dict[str, float | None]:
    """``{"p50": ..., ...}`` of finite values (None when there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return {f"p{q}": (float(np.percentile(v, q)) if v.size else None) for q in qs}


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def match_alerts(
    alerts: Iterable[dict[str, Any]], labels: Iterable[tuple[float, float, str]]
) -> dict[str, Any]:
    """Alerts against ground truth: an alert is a true positive when it overlaps a label
    of its category (clinical episode for clinical alerts, sensor fault for fault alerts).

    Returns per-category ``alerts``, ``tp``, ``fp`` and label ``events``/``detected``
    counts, plus each alert's verdict under ``verdicts`` (same order as given).
    """
    labels = list(labels)
    out: dict[str, Any] = {}
    verdicts: list[bool] = []
    for cat in (CLINICAL, "sensor_fault"):
        out[cat] = {"alerts": 0, "tp": 0, "fp": 0, "events": 0, "detected": 0}
    alerts = list(alerts)
    for a in alerts:
        cat = a["category"] if a["category"] in out else CLINICAL
        hit = alert_truth({**a, "category": cat}, labels) is not None
        rec = out[cat]
        rec["alerts"] += 1
        rec["tp" if hit else "fp"] += 1
        verdicts.append(hit)
    for s, e, k in labels:
        cat = "sensor_fault" if k in FAULT_KIND_NAMES else CLINICAL
        out[cat]["events"] += 1
        if any(a["category"] == cat and _overlaps(a["start"], a["end"], s, e) for a in alerts):
            out[cat]["detected"] += 1
    out["verdicts"] = verdicts
    return out


def detection_delays(
    windows: Sequence[dict[str, Any]], labels: Iterable[tuple[float, float, str]], window_s: float
) -> list[float]:
    """Seconds from each clinical episode's onset to the end of the first window that had a
    clinical episode open while seeing it (the ``edgeagent evaluate`` definition)."""
    out: list[float] = []
    ws = sorted((w for w in windows if w["status"] == "ok"), key=lambda w: w["end"])
    for s, e, k in labels:
        if k in FAULT_KIND_NAMES:
            continue
        for w in ws:
            if w["clinical_active"] and w["end"] > s and w["start"] < e + window_s:
                out.append(max(0.0, w["end"] - s))
                break
    return out


def check_summary(summary: dict[str, Any]) -> list[str]:
    """Every way the summary's figures fail to add up (empty list: consistent).

    The CI test and the demo itself both run this, so a report never claims
    numbers that contradict each other.
    """
    bad: list[str] = []
    hubs = summary.get("hubs", [])
    if len(hubs) != summary.get("options", {}).get("hubs", len(hubs)):
        bad.append(f"{len(hubs)} hub records for {summary['options']['hubs']} hubs")
    tot_alerts = 0
    for h in hubs:
        name = h["name"]
        for stream, s in h["serial"]["streams"].items():
            if s["received"] > s["sent_intact"]:
                bad.append(f"{name}/{stream}: received {s['received']} > sent {s['sent_intact']}")
            if s["received"] != s["sent_intact"]:
                bad.append(
                    f"{name}/{stream}: received {s['received']} != intact {s['sent_intact']} "
                    "(ledger minus corrupted frames)"
                )
            if s["sent_intact"] > s["generated"]:
                bad.append(f"{name}/{stream}: intact {s['sent_intact']} > generated")
        link = h["serial"]["link"]
        led = h["serial"]["ledger"]
        want_ok = (
            led.get("hello_intact", 0)
            + led.get("samples_intact", 0)
            + led.get("heartbeat_intact", 0)
            + led.get("duplicates_sent", 0)
        )
        if link["frames_ok"] != want_ok:
            bad.append(f"{name}: frames_ok {link['frames_ok']} != intact frames sent {want_ok}")
        if link["duplicates"] != led.get("duplicates_sent", 0):
            bad.append(f"{name}: duplicates dropped {link['duplicates']} != sent twice")
        corrupted = sum(led.get(f"{k}_corrupted", 0) for k in ("samples", "hello", "heartbeat"))
        if corrupted and link["bad_crc"] + link["malformed"] == 0:
            bad.append(f"{name}: {corrupted} corrupted frames sent but none rejected")
        if h["windows"] <= 0:
            bad.append(f"{name}: no windows")
        if sum(seg["windows"] for seg in h["segments"]) != h["windows"]:
            bad.append(f"{name}: segment windows do not add up to {h['windows']}")
        for cat, m in h["alerts"].items():
            if m["tp"] + m["fp"] != m["alerts"]:
                bad.append(f"{name}/{cat}: tp {m['tp']} + fp {m['fp']} != {m['alerts']}")
            if m["detected"] > m["events"]:
                bad.append(f"{name}/{cat}: detected {m['detected']} > events {m['events']}")
            tot_alerts += m["alerts"]
    for hub, b in (summary.get("ble") or {}).items():
        for stream, v in b["streams"].items():
            if v["received"] > v["sent"]:
                bad.append(f"{hub} BLE/{stream}: received {v['received']} > sent {v['sent']}")
    t = summary.get("totals", {})
    if t.get("alerts") != tot_alerts:
        bad.append(f"total alerts {t.get('alerts')} != sum over hubs {tot_alerts}")
    if t.get("alerts") != t.get("tp", 0) + t.get("fp", 0):
        bad.append("total alerts != tp + fp")
    if t.get("windows") != sum(h["windows"] for h in hubs):
        bad.append("total windows != sum over hubs")
    fed = summary.get("federation", {})
    rounds = fed.get("rounds", [])
    want = summary.get("options", {}).get("rounds", len(rounds))
    done = sum(1 for r in rounds if r["status"] == "completed")
    if done != want and not fed.get("reason"):
        bad.append(f"{done} of {want} rounds completed and no reason recorded")
    if len(summary.get("accuracy_per_round", [])) != len(hubs[0]["segments"] if hubs else []):
        bad.append("accuracy_per_round does not have one entry per segment")
    for a in summary.get("accuracy_per_round", []):
        for arm in ARMS:
            if arm in a and a[arm]["windows"] != a["windows"]:
                bad.append(
                    f"segment {a['segment']}: the {arm} arm scored {a[arm]['windows']} windows, "
                    f"the hubs {a['windows']} (the arms must score the same windows)"
                )
    first = summary.get("accuracy_per_round", [{}])[0] if summary.get("accuracy_per_round") else {}
    if "baseline" in first:
        same = ("tp", "fp", "fn", "tn", "false_alarms")
        if any(first[key] != first["baseline"][key] for key in same):
            bad.append(
                "segment 0: the hubs and the baseline arm ran the same model on the same "
                "windows but disagree"
            )
    priv = summary.get("privacy")
    if priv is not None and not priv["dp"]:
        eps = [r.get("epsilon") for r in rounds] + [
            a.get("epsilon") for a in summary.get("accuracy_per_round", [])
        ]
        if summary.get("epsilon") is not None or any(e is not None for e in eps):
            bad.append("DP is off but an epsilon is reported")
    for p in summary.get("parts", []):
        if p["how"] not in ("real", "in-memory", "skipped"):
            bad.append(f"part {p['name']}: how={p['how']!r}")
        if p["ran"] == (p["how"] == "skipped"):
            bad.append(f"part {p['name']}: ran={p['ran']} but how={p['how']}")
        if p["how"] != "real" and not p["reason"]:
            bad.append(f"part {p['name']} is {p['how']} without a reason")
    return bad


def _window_counts(
    windows: Sequence[dict[str, Any]], labels: list[tuple[float, float, str]]
) -> dict[str, int]:
    from edgeagent.evaluate import ScoredWindow, score_windows

    sw = [
        ScoredWindow(
            w["start"], w["end"], w["score"], w["clinical_active"], w["fault_active"], w["status"]
        )
        for w in windows
    ]
    m = score_windows(sw, labels, WINDOW_S)
    return {k: int(m[k]) for k in ("tp", "fp", "fn", "tn")}


def _rates(c: dict[str, int]) -> dict[str, float | None]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    n = tp + fp + fn + tn
    prec = tp / (tp + fp) if tp + fp else None
    rec = tp / (tp + fn) if tp + fn else None
    f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if n else None)
    return {"accuracy": (tp + tn) / n if n else None, "precision": prec, "recall": rec, "f1": f1}


def false_alarms(
    alerts: Iterable[dict[str, Any]],
    labels: Sequence[tuple[float, float, str]],
    t0: float,
    t1: float,
) -> int:
    """Clinical alerts opened in [t0, t1) that overlap no clinical episode (simulation time)."""
    return sum(
        1
        for a in alerts
        if a["category"] == CLINICAL and t0 <= a["start"] < t1 and alert_truth(a, labels) is None
    )


def _arm_segment(
    windows: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    labels: list[tuple[float, float, str]],
    k: int,
    seg_len: float,
) -> dict[str, int]:
    """Window counts and false alarms of one arm in segment ``k`` of one hub."""
    sw = [w for w in windows if w["segment"] == k]
    c = _window_counts(sw, labels) if sw else {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    fa = false_alarms(alerts, labels, k * seg_len, (k + 1) * seg_len)
    return {**c, "windows": len(sw), "false_alarms": fa}


def _arm_rates(c: dict[str, int], hours: float) -> dict[str, Any]:
    return {
        **c,
        **_rates(c),
        "false_alarms_per_hour": c["false_alarms"] / hours if hours > 0 else None,
    }


def build_summary(
    opts: DemoOptions,
    hubs: Sequence[dict[str, Any]],
    parts: Sequence[Part],
    rounds: Sequence[dict[str, Any]],
    federation: dict[str, Any],
    ble: dict[str, Any] | None,
    model: dict[str, Any],
    wall_s: float,
) -> dict[str, Any]:
    """The demo's figures from plain records (pure: the tests call it on hand-made input)."""
    segments = opts.rounds + 1
    seg_len = opts.seconds / segments
    hub_out = []
    zero = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "windows": 0, "false_alarms": 0}
    acc_counts = [dict(zero) for _ in range(segments)]
    arm_counts = {a: [dict(zero) for _ in range(segments)] for a in ARMS}
    feedback = [
        {
            "acked": 0,
            "confirmed": 0,
            "dismissed": 0,
            "wrong": 0,
            "windows": 0,
            "held_back": 0,
            "refused": 0,
            "trained_on": True,
        }
        for _ in range(segments)
    ]
    all_lat: list[float] = []
    all_delay: list[float] = []
    totals = {"windows": 0, "alerts": 0, "tp": 0, "fp": 0, "events": 0, "detected": 0}
    for h in hubs:
        ws = h["windows"]
        labels = [tuple(lb) for lb in h["labels"]]
        m = match_alerts(h["alerts"], labels)
        m.pop("verdicts")
        segs = []
        for k in range(segments):
            c = _arm_segment(ws, h["alerts"], labels, k, seg_len)
            for key, v in c.items():
                acc_counts[k][key] += v
            segs.append({"segment": k, **c})
            for arm, rec in h.get("arms", {}).items():
                if arm in arm_counts:
                    ca = _arm_segment(rec["windows"], rec["alerts"], labels, k, seg_len)
                    for key, v in ca.items():
                        arm_counts[arm][k][key] += v
        for fb in h.get("feedback", []):
            tot = feedback[fb["segment"]]
            for key in ("acked", "confirmed", "dismissed", "wrong", "windows", "held_back"):
                tot[key] += fb.get(key, 0)
            tot["refused"] += sum(fb.get("refused", {}).values())
            tot["trained_on"] = tot["trained_on"] and fb["trained_on"]
        lat = [w["latency_ms"] for w in ws]
        delays = detection_delays(ws, labels, WINDOW_S)
        all_lat += lat
        all_delay += delays
        for cat in m.values():
            totals["alerts"] += cat["alerts"]
            totals["tp"] += cat["tp"]
            totals["fp"] += cat["fp"]
            totals["events"] += cat["events"]
            totals["detected"] += cat["detected"]
        totals["windows"] += len(ws)
        hub_out.append(
            {
                "name": h["name"],
                "patient": h["patient"],
                "sim_seconds": h["sim_seconds"],
                "serial": {
                    "device": h["device"],
                    "streams": h["streams"],
                    "link": h["link"],
                    "ledger": h["ledger"],
                    "gaps": h["gaps"],
                },
                "windower": h["windower"],
                "windows": len(ws),
                "segments": segs,
                "alerts": m,
                "ble_alerts": h.get("ble_alerts", 0),
                "labels": len(labels),
                "inference_ms": percentiles(lat),
                "detection_delay_s": percentiles(delays, (50, 90)),
                "learned_per_segment": h["learned"],
                "control_learned_per_segment": h.get("control_learned", []),
                "feedback": h.get("feedback", []),
                "update_norm_per_segment": h.get("delta_norms", []),
                "models": h["model_history"],
            }
        )
    done = [r for r in rounds if r["status"] == "completed"]
    eps_last = done[-1].get("epsilon") if done else None
    dp_on, privacy_text = privacy_statement(opts.noise_multiplier, opts.hubs, eps_last)
    eps_after = {r["round"]: r.get("epsilon") for r in rounds} if dp_on else {}
    hours = len(hubs) * seg_len / 3600.0
    with_arms = bool(hubs) and all("arms" in h for h in hubs)
    accuracy = []
    for k, c in enumerate(acc_counts):
        entry = {
            "segment": k,
            "model": "before rounds" if k == 0 else f"after round {k}",
            "epsilon": eps_after.get(k) if k else None,
            **_arm_rates(c, hours),
        }
        if with_arms:
            for arm in ARMS:
                entry[arm] = _arm_rates(arm_counts[arm][k], hours)
        entry["feedback"] = feedback[k]
        accuracy.append(entry)
    streams_tot: dict[str, dict[str, int]] = {}
    for h in hub_out:
        for s, v in h["serial"]["streams"].items():
            t = streams_tot.setdefault(s, {"generated": 0, "sent_intact": 0, "received": 0})
            for key in t:
                t[key] += v[key]
    link_tot: dict[str, int] = {}
    for h in hub_out:
        for k2, v2 in h["serial"]["link"].items():
            link_tot[k2] = link_tot.get(k2, 0) + int(v2)
    return {
        "options": {
            "hubs": opts.hubs,
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "pacing": "realtime" if opts.realtime else "fast",
            "ble": opts.ble,
            "broker": opts.broker,
            "seed": opts.seed,
            "noise_multiplier": opts.noise_multiplier,
            "feedback_share": opts.feedback_share,
            "feedback_error": opts.feedback_error,
            "clip_norm": CLIP_NORM,
            "n_cap": N_CAP,
            "window_s": WINDOW_S,
            "hop_s": HOP_S,
        },
        "wall_seconds": round(wall_s, 2),
        "model": model,
        "parts": [asdict(p) for p in parts],
        "hubs": hub_out,
        "ble": ble,
        "totals": {
            **totals,
            "samples": streams_tot,
            "link": link_tot,
            "rounds_completed": len(done),
        },
        "federation": {**federation, "rounds": list(rounds)},
        "accuracy_per_round": accuracy,
        "reference": {
            "baseline": "the shipped baseline model, frozen, scoring the same windows",
            "control": "no federation: the baseline model with the box's own local learning "
            "on the same normal windows and the same nurse feedback, through the same model "
            "lifecycle as the hubs",
        },
        "privacy": {"dp": dp_on, "statement": privacy_text},
        "epsilon": eps_last if dp_on else None,
        "latency": {
            "inference_ms": percentiles(all_lat),
            "detection_delay_s": percentiles(all_delay, (50, 90)),
        },
    }


def to_json(summary: dict[str, Any], indent: int | None = None) -> str:
    """Strict JSON (NaN/inf become null, numpy scalars and paths plain values)."""
    return json.dumps(_jsonable(summary), indent=indent, allow_nan=False)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, np.floating | np.integer):
        return _jsonable(o.item())
    if isinstance(o, Path):
        return str(o)
    return o
