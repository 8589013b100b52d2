"""Evaluation: metric definitions, recording replay and CLI, held-out baseline quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.errors import InstallError
from edgeagent.evaluate import (
    ScoredWindow,
    auroc,
    binary_metrics,
    evaluate_recording,
    score_windows,
    window_labels,
)

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "models" / "baseline.onnx"


@settings(max_examples=40, deadline=None)
@given(
    y=st.lists(st.booleans(), min_size=2, max_size=60),
    seed=st.integers(0, 1000),
    ties=st.booleans(),
)
def test_auroc_matches_sklearn_including_ties(y: list[bool], seed: int, ties: bool) -> None:
    ya = np.asarray(y)
    s = np.random.default_rng(seed).random(len(y))
    if ties:
        s = np.round(s, 1)
    if ya.all() or not ya.any():
        assert np.isnan(auroc(ya, s))
    else:
        assert auroc(ya, s) == pytest.approx(roc_auc_score(ya, s))


def test_binary_metrics_table() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    p = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    m = binary_metrics(y, p)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["accuracy"] == 6 / 8 and m["precision"] == 2 / 3 and m["recall"] == 2 / 3
    assert m["f1"] == pytest.approx(2 / 3)
    assert binary_metrics(np.zeros(3, bool), np.zeros(3, bool))["precision"] == 0.0


def test_window_labels_positive_negative_excluded() -> None:
    labels = [(100.0, 160.0, "tachycardia"), (300.0, 340.0, "lead_off")]
    spans = [(0, 10), (92, 102), (95, 105), (120, 130), (158, 168), (305, 315), (400, 410)]
    y, kinds = window_labels(spans, labels)
    assert y.tolist() == [0, -1, 1, 1, -1, -1, 0]
    assert kinds[3] == "tachycardia"


def test_score_windows_per_kind_recall_delay_and_false_alarms() -> None:
    labels = [(100.0, 140.0, "fall"), (300.0, 340.0, "af"), (500.0, 530.0, "saturation")]
    ws = []
    for i in range(400):
        s, e = 2.0 * i, 2.0 * i + 10.0
        in_fall = e > 104 and s < 140  # detected once 4 s of the fall are in the window
        in_sat = s >= 500 and e <= 540
        spurious = 700 <= s < 704
        ws.append(
            ScoredWindow(s, e, 0.9 if in_fall or spurious else 0.1, in_fall or spurious, in_sat)
        )
    m = score_windows(ws, labels, 10.0)
    assert m["per_kind"]["fall"]["recall"] == 1.0
    assert m["per_kind"]["af"]["recall"] == 0.0
    assert m["per_kind"]["sensor_fault:saturation"]["recall"] == 1.0
    assert m["fault_recall"] == 1.0 and m["faults_raised_clinical"] == 0
    assert m["per_kind"]["fall"]["median_delay_s"] == pytest.approx(6.0)  # first window ends 106
    assert m["clinical_episodes"] == 2
    assert m["false_alarms_per_hour"] == pytest.approx(1 / (808 / 3600))
    assert 0.5 < m["auroc"] < 1.0 and m["recall"] < 1.0


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-minute simulated recording with a tachycardia and a lead-off, via the sim's writer."""
    from firmware_sim.physiology import Label, SimConfig, make_patient
    from firmware_sim.recording import record

    out = tmp_path_factory.mktemp("rec") / "patient-300"
    eps = (Label(120.0, 180.0, "tachycardia"), Label(260.0, 300.0, "lead_off"))
    record(out, make_patient(300), 360.0, SimConfig(episodes=eps))
    return out


def test_evaluate_recording_all_streams(recording: Path) -> None:
    if not BASELINE.is_file():
        pytest.fail("models/baseline.onnx missing: run python -m edgelab.baseline")
    out = evaluate_recording(recording, BASELINE.read_bytes(), "baseline")
    for key in ("accuracy", "precision", "recall", "f1", "auroc", "per_kind", "detection_delay_s"):
        assert key in out
    assert out["per_kind"]["tachycardia"]["recall"] == 1.0
    assert out["per_kind"]["tachycardia"]["median_delay_s"] < 15.0
    assert out["fault_recall"] == 1.0
    assert out["auroc"] > 0.9
    json.dumps(out)  # JSON-clean (no NaN)


def test_cli_evaluate_ecg_only_at_other_rate(recording: Path, tmp_path: Path) -> None:
    """A 'real' recording with ECG alone at 130 Hz (Polar-like) and labels still evaluates."""
    ecg_dir = tmp_path / "ecg-only"
    ecg_dir.mkdir()
    data = np.loadtxt(recording / "ecg.csv", delimiter=",", skiprows=1, comments="#")
    t_new = np.arange(data[0, 0], data[-1, 0], 1 / 130.0)
    uv = np.interp(t_new, data[:, 0], data[:, 1])
    with open(ecg_dir / "ecg.csv", "w") as f:
        f.write("t,uv\n")
        f.writelines(f"{t:.5f},{v:.1f}\n" for t, v in zip(t_new, uv, strict=True))
    (ecg_dir / "labels.csv").write_text((recording / "labels.csv").read_text())
    _register()
    res = CliRunner().invoke(app, ["evaluate", str(ecg_dir), "--model", str(BASELINE), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # warnings (missing modalities) go to stderr
    assert out["streams"] == ["ecg"]
    assert out["per_kind"]["tachycardia"]["recall"] == 1.0
    for key in ("accuracy", "precision", "recall", "f1", "auroc", "per_kind", "detection_delay_s"):
        assert key in out
    res = CliRunner().invoke(app, ["evaluate", str(ecg_dir), "--model", str(BASELINE)])
    assert res.exit_code == 0 and "tachycardia" in res.output


def test_cli_evaluate_defaults_to_the_shipped_baseline(recording: Path) -> None:
    """Without --model the package's own copy is used (a wheel has no models/ beside it)."""
    from edgeagent.ops.install import BASELINE_MODEL, shipped_file

    shipped = shipped_file(BASELINE_MODEL)
    assert shipped.parent.name == "data" and shipped.read_bytes() == BASELINE.read_bytes()
    _register()
    res = CliRunner().invoke(app, ["evaluate", str(recording), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    want = evaluate_recording(recording, BASELINE.read_bytes(), "baseline")
    assert out["model"] == "baseline" and out["auroc"] == want["auroc"]
    with pytest.raises(InstallError, match=r"not-a-model\.onnx"):
        shipped_file("not-a-model.onnx")


def test_cli_evaluate_bad_inputs(tmp_path: Path) -> None:
    _register()
    r = CliRunner()
    res = r.invoke(app, ["evaluate", str(tmp_path / "nope"), "--model", str(BASELINE)])
    assert res.exit_code == 2 and "error:" in res.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "ecg.csv").write_text("t,uv\n0,1\n0.004,2\n")
    res = r.invoke(app, ["evaluate", str(tmp_path / "rec"), "--model", str(bad)])
    assert res.exit_code == 2 and "error:" in res.output


@pytest.mark.slow
def test_baseline_quality_on_held_out_patients() -> None:
    """AUROC >= 0.95 on patients never used for training; every anomaly kind is detected."""
    from edgelab import baseline as build
    from firmware_sim.physiology import ANOMALY_KINDS, FAULT_KINDS, make_patient

    assert not set(range(900, 902)) & set(build.TRAIN_PATIENTS)
    fast = [k for k in ANOMALY_KINDS if k not in ("fever", "hypothermia")] + list(FAULT_KINDS)
    plans = [(900, 1500.0, fast), (901, 2900.0, ["fever", "hypothermia"])]
    model = BASELINE.read_bytes()
    runs = []
    for idx, seconds, kinds in plans:
        eps = build.schedule(idx, seconds, kinds)
        x, spans, labels = build.patient_features(make_patient(idx), seconds, eps)
        runs.append(
            build.replay_features(
                model, {"id": f"p{idx}", "x": x, "spans": spans, "labels": labels}
            )
        )
    m = build.pooled_metrics(runs)
    print(json.dumps({k: m[k] for k in ("auroc", "f1", "precision", "recall")}))
    print({k: v["recall"] for k, v in m["per_kind"].items()})
    assert m["auroc"] >= 0.95
    seen = {k for k in m["per_kind"] if not k.startswith("sensor_fault")}
    assert seen == set(ANOMALY_KINDS)
    for k in ANOMALY_KINDS:
        assert m["per_kind"][k]["recall"] > 0, k
    assert m["fault_recall"] >= 0.5
