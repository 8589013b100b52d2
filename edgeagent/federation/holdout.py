"""Hold-out evaluation of candidate global models, and the rule that rejects a worse one.

A round's mean can be honest and still make the model worse (a skewed
cohort, a poisoned group the robust rule let through); the aggregator keeps a
candidate only if its loss on held-out windows it owns is no more than
``eval_tolerance`` above the current model's. Without ``aggregator.holdout``
there is nothing to compare and every candidate is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def evaluate(holdout: Path | str | None, data: bytes) -> dict[str, Any]:
    """Loss of a model on the held-out windows (an ``.npz`` with x, mu, sigma, y), if any."""
    if holdout is None:
        return {}
    from edgeagent.pipeline.detect import ValidatedWindow
    from edgeagent.pipeline.lifecycle import validation_loss

    with np.load(holdout, allow_pickle=False) as z:
        x, mu, sg, y = z["x"], z["mu"], z["sigma"], z["y"]
    windows = [
        ValidatedWindow(x[i], mu[i : i + 1], sg[i : i + 1], str(y[i])) for i in range(len(y))
    ]
    return {"holdout_loss": float(validation_loss(data, windows)), "holdout_n": len(windows)}


def rejection(new: dict[str, Any], current: dict[str, Any], tolerance: float) -> str | None:
    """Why the candidate evaluated as ``new`` must not replace ``current`` (None: keep it)."""
    new_loss, old_loss = new.get("holdout_loss"), current.get("holdout_loss")
    if new_loss is None or old_loss is None:
        return None
    if not np.isfinite(new_loss) or new_loss > old_loss * (1 + tolerance):
        return f"holdout loss {new_loss:.4f} > {old_loss:.4f}"
    return None
