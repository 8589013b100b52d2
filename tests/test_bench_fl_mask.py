"""bench/fl_mask.py stays runnable and its figures keep their meaning."""

from __future__ import annotations

import json
from pathlib import Path

from edgeagent.federation.accountant import DpAccountant
from tests.plugins.ops import run_bench


def test_fl_mask_bench_reports_bytes_and_equal_epsilon(tmp_path: Path) -> None:
    out = tmp_path / "fl_mask.json"
    args = ["--boxes", "4", "--rounds", "3", "--seeds", "1", "--patients", "1",
            "--seconds", "120", "--out", str(out)]  # fmt: skip
    run = run_bench("fl_mask.py", args, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    doc = json.loads(out.read_text())
    b = doc["bytes"]
    assert b["ae"]["coordinates"] + b["head"]["coordinates"] == b["all"]["coordinates"]
    for mode in ("secagg_upload_per_box", "plaintext_upload_per_box"):
        assert b["ae"][mode] < b["head"][mode] < b["all"][mode]
    # the masked vector is 4 bytes per coordinate (+ the count) plus a fixed envelope
    extra = b["all"]["secagg_masked_vector_per_box"] - 4 * (b["all"]["coordinates"] + 1)
    assert 0 < extra == b["ae"]["secagg_masked_vector_per_box"] - 4 * (b["ae"]["coordinates"] + 1)
    rows = doc["accuracy_at_equal_epsilon"]
    z = rows[0]["z"]
    acc = DpAccountant(1e-5)
    acc.step(z, 1.0, 3)
    assert acc.epsilon() <= 8.0 and rows[0]["epsilon"] == round(acc.epsilon(), 3)
    below = DpAccountant(1e-5)
    below.step(z - 0.02, 1.0, 3)
    assert below.epsilon() > 8.0  # the smallest z that fits, to 0.01
    for r in rows:  # same draws: the autoencoder's noise is the same under both masks
        assert r["ae"]["normal_recon"] == r["all"]["normal_recon"]
        assert r["ae"]["accuracy"] == r["baseline"]["accuracy"]  # the head untouched
