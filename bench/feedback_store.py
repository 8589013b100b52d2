"""Feedback store latency: what keeping an alert's window costs the detection thread.

``keep`` runs on the detection thread for every window that opens or extends an
alert (WAL, synchronous=NORMAL); ``record`` runs once per verdict and commits
with synchronous=FULL (one fsync: a verdict must survive a power cut once it
was answered); ``labelled`` is the validating side's read of a split. Sizes are
bounded (the agent's 42 features, ``--alerts`` alerts of 32 windows).

Run: ``python bench/feedback_store.py [--alerts 60]``. Writes bench/results/feedback_store.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeagent.ops.config import FeedbackSection
from edgeagent.pipeline.detect import ValidatedWindow
from edgeagent.pipeline.feedback import HOLDOUT, TRAIN, FeedbackStore

FEATURES = 42
WINDOWS = 32


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": len(xs)}  # fmt: skip


def run(n_alerts: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        store = FeedbackStore(
            Path(d),
            FeedbackSection(burst=10**6),
            classes=lambda: ("normal", "tachycardia"),
            served=lambda: {"p1"},
        )
        ids = [f"{i:08x}{'ab' * 12}" for i in range(n_alerts)]
        keep: list[float] = []
        for a in ids:
            for _ in range(WINDOWS):
                w = ValidatedWindow(rng.normal(size=FEATURES).astype(np.float32),
                                    np.zeros((1, FEATURES), np.float32),
                                    np.ones((1, FEATURES), np.float32), "tachycardia")  # fmt: skip
                t = time.perf_counter()
                store.keep(a, "p1", w)
                keep.append(time.perf_counter() - t)
        record: list[float] = []
        for i, a in enumerate(ids):
            t = time.perf_counter()
            v = store.record(a, bool(i % 2))
            record.append(time.perf_counter() - t)
            assert v.accepted, v
        t = time.perf_counter()
        n_read = len(store.labelled(TRAIN)) + len(store.labelled(HOLDOUT))
        read_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in Path(d).iterdir())
        store.close()
    return {
        "features": FEATURES,
        "alerts": n_alerts,
        "windows": n_alerts * WINDOWS,
        "keep": _ms(keep),
        "record": _ms(record),
        "labelled_read_ms": read_s * 1e3,
        "labelled_windows": n_read,
        "bytes_on_disk": size,
        "bytes_per_window": size / (n_alerts * WINDOWS),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=60)
    res = run(ap.parse_args().alerts)
    out = Path(__file__).parent / "results" / "feedback_store.json"
    out.write_text(json.dumps(res, indent=2))
    k, r = res["keep"], res["record"]
    print(f"{'operation':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>6}")
    for name, m in (("keep (detection thread)", k), ("record (verdict, FULL sync)", r)):
        assert isinstance(m, dict)
        print(f"{name:28} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} {m['max_ms']:8.3f} {m['n']:6d}")
    print(f"labelled(): {res['labelled_windows']} windows in {res['labelled_read_ms']:.1f} ms; "
          f"{res['bytes_per_window']:.0f} bytes on disk per window")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
