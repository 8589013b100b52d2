"""The held-out rule that keeps a worse candidate model out."""

from __future__ import annotations

import math

from edgeagent.federation.holdout import evaluate, rejection


def test_no_holdout_no_evaluation_and_every_candidate_kept(syn_model: bytes) -> None:
    assert evaluate(None, syn_model) == {}
    assert rejection({}, {"holdout_loss": 0.1}, 0.0) is None
    assert rejection({"holdout_loss": 9.0}, {}, 0.0) is None  # nothing to compare against


def test_a_candidate_worse_than_the_tolerance_is_rejected() -> None:
    cur = {"holdout_loss": 1.0}
    assert rejection({"holdout_loss": 1.05}, cur, 0.1) is None
    assert rejection({"holdout_loss": 1.1}, cur, 0.1) is None  # at the bound: kept
    assert rejection({"holdout_loss": 1.2}, cur, 0.1) == "holdout loss 1.2000 > 1.0000"
    assert rejection({"holdout_loss": math.nan}, cur, 10.0) is not None
    assert rejection({"holdout_loss": math.inf}, cur, 10.0) is not None
