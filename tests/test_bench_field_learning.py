"""bench/field_learning.py stays runnable: its quick mode writes every section it promises."""

from __future__ import annotations

import json
from pathlib import Path

from tests.plugins.ops import run_bench


def test_field_learning_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "field_learning.json"
    run = run_bench("field_learning.py", ["--quick", "--out", str(out)], timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["references"]) == {
        "baseline_no_federation",
        "centralised_all_labels",
        "baseline_threshold_floor",
    }
    (entry,) = doc["grid"]
    for name in ("no_federation", "federated_no_dp", "federated_dp", "local_promoted"):
        assert 0.0 <= entry[name]["accuracy"] <= 1.0
    dp = entry["federated_dp"]
    assert dp["epsilon"] > 0 and len(dp["epsilon_per_round"]) == doc["settings"]["rounds"]
    # epsilon only grows with the rounds
    assert dp["epsilon_per_round"] == sorted(dp["epsilon_per_round"])
    sweep = doc["dp_sweep"]
    assert {s["boxes"] for s in sweep} == {6, 40}
    for s in sweep:
        if s["z"] > 0:
            assert s["epsilon"] > 0 and "accuracy_cost" in s
    assert "DP sweep" in run.stdout and "federated_dp" in run.stdout
