"""``edgeagent evaluate`` on real records: WFDB and EDF in, the figures an always-on detector
cannot game out, and broken inputs that degrade with a warning or fail with a named file.

These tests pin the *definitions* (how alert time and false alarms relate, what a record
without labels must report), not the shipped detector's quality: that is tuned elsewhere.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from tests.real_ecg import record_path

wfdb = pytest.importorskip("wfdb", reason="the formats extra (wfdb) is not installed")

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "models" / "baseline.onnx"


def _evaluate(*args: str) -> tuple[int, dict, str]:
    _register()
    res = CliRunner().invoke(app, ["evaluate", *args, "--model", str(BASELINE), "--json"])
    out = json.loads(res.stdout) if res.exit_code == 0 else {}
    return res.exit_code, out, res.stderr


def _consistent(out: dict) -> None:
    """Relations every evaluation must satisfy, whatever the detector does."""
    hours = out["duration_s"] / 3600.0
    assert 0.0 <= out["time_in_alert"] <= 1.0
    assert out["alert_s"] == pytest.approx(out["time_in_alert"] * out["duration_s"], rel=1e-6)
    assert out["alert_s_outside_labels"] <= out["alert_s"] + 1e-6
    # Per contiguous piece, ceil(hours): never fewer than the started hours of the total.
    assert out["false_alarms"] >= math.ceil(out["alert_s_outside_labels"] / 3600.0 - 1e-9)
    assert out["false_alarms_per_hour"] == pytest.approx(out["false_alarms"] / hours)


def test_whole_record_100(tmp_path: Path) -> None:
    """The full 30-minute MIT-BIH record: beats scored, an alert that never closes is counted."""
    code, out, err = _evaluate(str(record_path("100")))
    assert code == 0, err
    assert out["format"] == "wfdb" and out["lead"] == "MLII" and out["streams"] == ["ecg"]
    assert out["labels"] == 0 and out["events"] == 0 and out["event_recall"] is None
    _consistent(out)
    # No labelled span: all alert time is outside labels, every alert piece is false.
    assert out["alert_s_outside_labels"] == pytest.approx(out["alert_s"])
    assert (out["false_alarms"] > 0) == (out["alert_s"] > 0)
    b = out["beats"]
    assert b["reference"] == 2273 and b["by_class"] == {"N": 2239, "S": 33, "V": 1, "F": 0, "Q": 0}
    assert out["beat_sensitivity"] >= 0.99 and out["beat_positive_predictivity"] >= 0.99
    # the tracker scores the beats it tracked (a few normal ones fall in its warm-up)
    assert b["abnormal"]["positives"] == 34 and 2200 <= b["abnormal"]["negatives"] <= 2239
    assert b["abnormal_by_window"]["negatives"] == 2239
    # Abnormal beats are scored by the box's beat tracker (the target: >= 0.95); the
    # window score, which cannot single out one premature beat, is reported beside it.
    assert out["beat_auroc"] >= 0.95
    assert b["abnormal_by_window"]["positives"] == 34
    assert b["abnormal_by_window"]["auroc"] < out["beat_auroc"]
    assert out["missing_modalities"] == ["acc", "temp", "env"]
    assert any("no acc, temp, env data" in w for w in out["warnings"])
    assert "warning: no acc" in err
    assert out["runtime_s"] < 60.0


def test_human_summary_span_and_warnings() -> None:
    _register()
    res = CliRunner().invoke(
        app,
        ["evaluate", str(record_path("100")) + ".hea", "--span", "0:300", "--model", str(BASELINE)],
    )
    assert res.exit_code == 0, res.output
    for text in (
        "(wfdb  lead MLII)",
        "time in alert",
        "false alarms / hour",
        "event recall",
        "QRS sensitivity",
        "abnormal-beat AUROC",
        "warning: no acc, temp, env data",
    ):
        assert text in res.stdout, text
    assert " 300 s" in res.stdout
    for bad in ("5:1", "a:b", "-1:4"):
        r = CliRunner().invoke(app, ["evaluate", str(record_path("100")), "--span", bad])
        assert r.exit_code == 2 and "--span" in r.stderr


@pytest.mark.parametrize(
    ("name", "lead", "rate"),
    [("a103l", "II", 250.0), ("s0010_re", "ii", 1000.0), ("03700181", "MCL1", 500.0)],
)
def test_other_records_rates_and_leads(name: str, lead: str, rate: float) -> None:
    code, out, err = _evaluate(str(record_path(name)), "--span", "0:60")
    assert code == 0, err
    assert out["lead"] == lead and out["beats"] is None and out["beat_auroc"] is None
    assert out["windows_scored"] > 0
    _consistent(out)


def test_edf_with_episode_labels(tmp_path: Path) -> None:
    from tests.test_sources_edf import write_edf_from_100

    pytest.importorskip("pyedflib")
    path = tmp_path / "100.edf"
    write_edf_from_100(path)
    code, out, err = _evaluate(str(path))
    assert code == 0, err
    assert (
        out["format"] == "edf" and out["labels"] == 2 and out["events"] == 1
    )  # af; lead_off is a fault
    assert out["per_kind"]["af"]["events"] == 1
    assert out["beats"]["reference"] > 60
    _consistent(out)


def test_annotations_shifted_off_the_signal_warn(tmp_path: Path) -> None:
    """An annotation file of another record that fits inside this one: a warning, not silence."""
    src = record_path("100")
    for ext in ("hea", "dat"):
        shutil.copyfile(f"{src}.{ext}", tmp_path / f"100.{ext}")
    ann = wfdb.rdann(str(src), "atr")
    wfdb.wrann(
        "100",
        "atr",
        np.asarray(ann.sample) + 180,  # half a second late: no beat within 150 ms
        symbol=ann.symbol,
        aux_note=ann.aux_note,
        fs=360,
        write_dir=str(tmp_path),
    )
    code, out, err = _evaluate(str(tmp_path / "100"), "--span", "0:120")
    assert code == 0, err
    assert out["beat_sensitivity"] < 0.5
    assert any("annotations disagree with the signal" in w for w in out["warnings"])


def test_broken_records_fail_naming_the_file_or_degrade(tmp_path: Path) -> None:
    src = record_path("100")
    for ext in ("hea", "atr"):
        shutil.copyfile(f"{src}.{ext}", tmp_path / f"100.{ext}")
    code, _, err = _evaluate(str(tmp_path / "100"))
    assert code == 2 and "100.dat: signal file named by 100.hea is missing" in err
    code, _, err = _evaluate(str(src), "--lead", "V9")
    assert code == 2 and "no lead 'V9'" in err
    # A flat line: runs, and the flat stretch is a labelled sensor fault, not a clinical negative.
    wfdb.wrsamp(
        "flat",
        fs=360,
        units=["mV"],
        sig_name=["MLII"],
        d_signal=np.zeros((360 * 60, 1), np.int64),
        fmt=["16"],
        adc_gain=[200.0],
        baseline=[0],
        write_dir=str(tmp_path),
    )
    code, out, err = _evaluate(str(tmp_path / "flat"))
    assert code == 0, err
    assert out["windows_negative"] == 0 and out["per_kind"]["sensor_fault:lead_off"]["events"] == 1
    assert any("flat line" in n for n in out["notes"])
    # A clipped stretch: runs, labelled saturation.
    d = wfdb.rdrecord(str(src), channels=[0], sampto=360 * 60, physical=False).d_signal[:, 0]
    x = np.clip(
        d.astype(np.int64) - 1024 + np.where(np.arange(d.size) // 360 == 30, 1500, 0), -2048, 900
    )
    wfdb.wrsamp(
        "clip",
        fs=360,
        units=["mV"],
        sig_name=["MLII"],
        d_signal=x.reshape(-1, 1),
        fmt=["16"],
        adc_gain=[200.0],
        baseline=[0],
        write_dir=str(tmp_path),
    )
    code, out, err = _evaluate(str(tmp_path / "clip"))
    assert code == 0, err
    assert out["per_kind"]["sensor_fault:saturation"]["events"] == 1


def test_dropped_rows_are_warned(tmp_path: Path) -> None:
    rows = [f"{i / 250:.4f},{100 * math.sin(i / 20):.1f}" for i in range(250 * 30)]
    rows[1000], rows[1001] = rows[1001], rows[1000]  # one out-of-order pair
    (tmp_path / "ecg.csv").write_text("t,uv\n" + "\n".join(rows) + "\n")
    code, out, err = _evaluate(str(tmp_path))
    assert code == 0, err
    assert out["rejected_rows"]["ecg"]["out_of_order"] == 1
    assert "warning: ecg: 1 rows dropped (out_of_order 1)" in err
