"""Bandwidth accounting: the figures add up and follow the encoders, not constants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgelab.bandwidth import (
    TLS_RECORD,
    alert_bytes,
    measure,
    mqtt_overhead,
    profile,
    round_bytes,
    status_bytes,
    update_bytes,
)


def test_mqtt_overhead_counts_the_remaining_length_bytes() -> None:
    small, big = mqtt_overhead("t/x", 10), mqtt_overhead("t/x", 20_000)
    assert big - small == 2  # remaining length: 1 byte below 128, 3 bytes from 16,384
    assert small == 1 + 1 + 2 + 3 + 2 + 1 + TLS_RECORD


def test_alerts_are_open_updates_and_close_per_episode() -> None:
    one, n1 = alert_bytes([(0.0, 30.0, "tachycardia")])
    long, n2 = alert_bytes([(0.0, 185.0, "fever")])
    assert (n1, n2) == (2, 5)  # open + close; open + 3 one-minute updates + close
    assert long > 2 * one


def test_update_bytes_follow_the_model_size() -> None:
    small, msgs = update_bytes(500, 5, seed=0)
    large, _ = update_bytes(5000, 5, seed=0)
    # commit, reveal, keys, shares, masked vector, survivor-set signature, unmask
    assert msgs == 7
    # the masked vector dominates: field_bits(8, 5) = 11 bits per coordinate at the shipped
    # update_bits, plus keys and shares
    assert large - small == pytest.approx(11 / 8 * 4500, rel=0.05)


def test_round_bytes_against_the_parameter_floor() -> None:
    """For the shipped model the vector download meets 1.05 x 4d + signatures and the ONNX
    file does not; quantised uploads shrink by the field width."""
    shipped = Path(__file__).resolve().parents[1] / "models" / "baseline.onnx"
    r = round_bytes(shipped.read_bytes(), 4, seed=0, widths=(32, 8))
    floor = r["floor_4d"]
    md = r["model_down"]
    assert md["meets_target"] and md["param_vector"] <= 1.05 * floor + 128
    assert md["onnx_file"] > 1.05 * floor + 128
    assert r["total_down_per_box"]["before"] - r["total_down_per_box"]["after"] == (
        md["onnx_file"] - md["param_vector"]
    )
    up32, up8 = r["up"]["32"], r["up"]["8"]
    assert (
        up8["field_bits"] == 10 and up8["masked_vector_bytes"] == (10 * (r["params"] + 1) + 7) // 8
    )
    assert up32["bytes_up_per_box"] - up8["bytes_up_per_box"] == pytest.approx(
        up32["masked_vector_bytes"] - up8["masked_vector_bytes"], rel=0.02
    )


def test_profiles_add_up_and_the_shipped_defaults_meet_the_target() -> None:
    p = profile(1_000_000, 1000, 20_000, 1000, status_interval_s=300, rounds_per_hour=1)
    assert p["total_bytes_per_h"] == 1000 + 20_000 + 12 * 1000
    assert p["ratio_to_raw"] == pytest.approx(0.033)
    res = measure(4851, 10, seed=0, profiles={"hourly": (300.0, 1.0), "fast": (60.0, 40.0)})
    assert json.dumps(res)  # JSON-able as written by the bench
    assert res["raw_bytes_per_h"] > 1e6 and res["episodes_per_h"] >= 1
    hourly, fast = res["profiles"]["hourly"], res["profiles"]["fast"]
    assert hourly["meets_1pct_target"] and not fast["meets_1pct_target"]
    assert status_bytes() == res["status_bytes_per_message"]
