"""bench/soak.py stays runnable and its outbox accounting holds on a short run.

A 25 s soak with a broker outage in the middle: every alert message the
daemon queued reaches the subscriber, the outbox ends empty with no drops,
and the RSS series is sampled. The memory target itself needs the full
3-minute run (``python bench/soak.py``), not this smoke test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.plugins.ops import run_bench

pytestmark = pytest.mark.slow


def test_short_soak_delivers_everything_through_an_outage(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    out = tmp_path / "soak.json"
    args = ["--minutes", "0.4", "--wearables", "2", "--pool-min", "2", "--outage", "0.25"]
    run = run_bench("soak.py", [*args, "--out", str(out)], timeout=150)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    res = json.loads(out.read_text())
    ob = res["outbox"]
    assert ob["final"]["depth"] == 0 and ob["final"]["dropped"] == 0
    assert ob["alert_messages_received"] == ob["alert_messages_queued"]
    assert ob["duplicates_received"] == 0 and ob["alerts_outbox_errors"] == 0
    assert res["pipeline"]["windows"] > 0 and res["pipeline"]["consumer_errors"] == 0
    assert res["liveness_ok_at_end"]
    assert len(res["samples"]) >= 15 and any(not s["broker_up"] for s in res["samples"])
    assert "RSS" in run.stdout and "wrote" in run.stdout
