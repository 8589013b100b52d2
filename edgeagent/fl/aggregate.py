"""Weighted FedAvg over plain records (McMahan et al. 2017, "Communication-Efficient Learning").

The federated objective is ``F(w) = sum_k (n_k / n) F_k(w)``; the server step
is ``w <- w + lr * sum_k (n_k / n) delta_k`` with ``delta_k = w_k - w``. These
functions compute it from plaintext updates (the reference the secure sum must
match, and the plaintext robust mode) or from a secure sum of FedAvg payloads.
Validation is separate from arithmetic and says how to fix the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeagent.fl.privacy import fedavg_payload


@dataclass(frozen=True, slots=True)
class ClientUpdate:
    """One box's contribution: ``delta = w_local - w_global`` and its sample count ``n``."""

    node: str
    delta: np.ndarray
    n: int


def validate_updates(updates: Sequence[ClientUpdate], dim: int | None = None) -> int:
    """Raise ``ValueError`` naming the box and the fix; return the common dimension."""
    if not updates:
        raise ValueError("no updates to aggregate: wait for at least one box or abort the round")
    want = dim if dim is not None else np.asarray(updates[0].delta).size
    seen: set[str] = set()
    for u in updates:
        d = np.asarray(u.delta)
        if u.node in seen:
            raise ValueError(f"box {u.node!r} sent two updates; keep one per round")
        seen.add(u.node)
        if d.ndim != 1 or d.size != want:
            raise ValueError(f"box {u.node!r}: delta has shape {d.shape}, expected ({want},)")
        if not np.all(np.isfinite(d)):
            raise ValueError(f"box {u.node!r}: delta contains NaN/inf; drop this update")
        if int(u.n) < 1:
            raise ValueError(f"box {u.node!r}: n = {u.n}; a box with no samples must not submit")
    return int(want)


def weighted_fedavg(
    updates: Sequence[ClientUpdate], *, clip: float | None = None, n_cap: int | None = None
) -> np.ndarray:
    """``sum_k n_k clip(delta_k) / sum_k n_k`` (float64), with optional clip and n cap.

    With ``clip`` and ``n_cap`` set this is exactly what the secure sum of
    ``fedavg_payload`` vectors decodes to, so it is the test reference.
    """
    validate_updates(updates)
    if clip is None:
        counts = np.array([min(u.n, n_cap) if n_cap else u.n for u in updates], dtype=np.float64)
        stacked = np.stack([np.asarray(u.delta, dtype=np.float64) for u in updates])
        return (counts[:, None] * stacked).sum(axis=0) / counts.sum()
    total = sum_payloads(updates, clip=clip, n_cap=n_cap or max(u.n for u in updates))
    return mean_from_total(total)


def sum_payloads(updates: Sequence[ClientUpdate], *, clip: float, n_cap: int) -> np.ndarray:
    """Plaintext sum of the payloads the boxes would submit to the secure sum."""
    validate_updates(updates)
    return np.sum([fedavg_payload(u.delta, u.n, clip, n_cap) for u in updates], axis=0)


def mean_from_total(total: np.ndarray) -> np.ndarray:
    """Turn a summed payload ``[sum n_k delta_k, sum n_k]`` into the weighted mean delta."""
    t = np.asarray(total, dtype=np.float64)
    if t.ndim != 1 or t.size < 2:
        raise ValueError("a summed payload has at least one parameter and the count")
    n = t[-1]
    if not n > 0.5:
        raise ValueError(f"summed sample count is {n:.3f}; nothing to average")
    return t[:-1] / n


def apply_update(
    global_weights: np.ndarray, mean_delta: np.ndarray, server_lr: float = 1.0
) -> np.ndarray:
    """New global weights ``w + server_lr * mean_delta`` as float32 (the model's dtype)."""
    w = np.asarray(global_weights, dtype=np.float32)
    if w.shape != np.shape(mean_delta):
        raise ValueError(f"update has shape {np.shape(mean_delta)}, weights {w.shape}")
    return (w + np.float32(server_lr) * np.asarray(mean_delta, dtype=np.float32)).astype(np.float32)
