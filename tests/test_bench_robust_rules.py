"""bench/robust_rules.py stays runnable and reports every rule against its baseline."""

from __future__ import annotations

import json
from pathlib import Path

from edgeagent.fl.constants import DEFENCE_RULES
from tests.plugins.ops import run_bench


def test_robust_rules_bench_reports_every_rule(tmp_path: Path) -> None:
    out = tmp_path / "robust_rules.json"
    args = ["--sizes", "6", "12", "--dim", "40", "--repeats", "1", "--out", str(out)]
    run = run_bench("robust_rules.py", args, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [r["rows"] for r in doc["runs"]] == [6, 12]
    for r in doc["runs"]:
        assert set(r["rules"]) == set(DEFENCE_RULES)
        base = r["baseline_mean"]["seconds"]
        for m in r["rules"].values():
            assert m["time_over_mean"] == m["seconds"] / base and m["peak_bytes"] > 0
    assert "reputation" in run.stdout and "x mean" in run.stdout
