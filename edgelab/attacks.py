"""What a compromised box can send, as pure transforms: for testing the federation's defences.

A box that runs modified software controls two things the aggregator sees:
the update vector ``delta`` and its claimed sample count ``n_k``; and,
upstream of both, the labels it trains on. Each attack here is one of those
levers, written as a pure function so tests, the pilot (``edgelab.pilot``)
and a live malicious box (``MaliciousUpdates`` wrapped around a learner) all
misbehave in exactly the same way:

* ``sign_flip`` (Damaskinos et al. 2018; Fang et al. 2020, USENIX Security):
  send ``-scale * delta``, pushing the model away from where honest boxes go.
* ``boost`` (model replacement, Bagdasaryan et al. 2020, AISTATS): multiply an
  update (typically a poisoned one) so that it survives averaging with
  honest ones; with factor ``n / m`` it replaces the global model.
* ``little_is_enough`` (Baruch et al. 2019, NeurIPS, "A Little Is Enough"):
  every malicious box sends ``mean - z * std`` of the honest updates per
  coordinate, with ``z`` chosen so the rows still look typical to
  order-statistic rules (median, trimmed mean, Krum) while shifting them.
* ``poison_labels``: label poisoning, anomalies presented as normal; the box
  then trains honestly on the lie.
* ``free_ride``: a zero update with an inflated ``n_k``, which under
  n_k-weighted FedAvg buys weight for doing nothing and slows everyone.

No I/O, no randomness without an explicit seed. Defences live in
``edgeagent.fl.robust`` (and ``n_cap`` in ``edgeagent.fl.privacy``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

import numpy as np

#: Attacks on the update vector / sample count (need the box's own honest delta).
UPDATE_ATTACKS: tuple[str, ...] = ("sign_flip", "scaling", "little_is_enough", "free_riding")
#: Attacks on the box's training data (the update is then computed honestly).
DATA_ATTACKS: tuple[str, ...] = ("label_poisoning",)
ATTACKS: tuple[str, ...] = (
    "sign_flip",
    "scaling",
    "little_is_enough",
    "label_poisoning",
    "free_riding",
)


def sign_flip(delta: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """``-scale * delta`` (float32): the reverse of what the box's data asks for."""
    if not scale > 0:
        raise ValueError("scale must be > 0 (a flipped update is -scale * delta)")
    return (-float(scale) * np.asarray(delta, np.float64)).astype(np.float32)


def boost(delta: np.ndarray, factor: float) -> np.ndarray:
    """``factor * delta`` (float32): a boosted update that survives averaging."""
    if not factor > 0:
        raise ValueError("factor must be > 0")
    return (float(factor) * np.asarray(delta, np.float64)).astype(np.float32)


def alie_z(n_total: int, n_malicious: int) -> float:
    """Baruch et al. 2019, Alg. 1: the largest ``z`` that still hides among the majority.

    ``s = floor(n / 2 + 1) - m`` honest boxes must be "recruited" so that the
    malicious value sits inside the majority; ``z = Phi^-1((n - s) / n)``.
    """
    if n_total < 2 or not 1 <= n_malicious < n_total:
        raise ValueError("need n_total >= 2 and 1 <= n_malicious < n_total")
    s = math.floor(n_total / 2 + 1) - n_malicious
    p = (n_total - s) / n_total
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(NormalDist().inv_cdf(p))


def little_is_enough(
    benign: np.ndarray | Sequence[np.ndarray],
    n_total: int,
    n_malicious: int,
    z: float | None = None,
) -> np.ndarray:
    """The single update every malicious box sends: ``mean - z * std`` of honest rows.

    ``benign`` are the honest updates the colluding attackers know (here: all
    of them, the omniscient variant of the paper's threat model; with only
    their own updates the estimate is noisier but the attack the same).
    """
    x = np.asarray(benign, np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError("benign must be a non-empty (boxes, parameters) matrix")
    if not np.all(np.isfinite(x)):
        raise ValueError("benign updates contain NaN/inf")
    zz = alie_z(n_total, n_malicious) if z is None else float(z)
    std = x.std(axis=0) if x.shape[0] > 1 else np.zeros(x.shape[1])
    return (x.mean(axis=0) - zz * std).astype(np.float32)


def free_ride(delta: np.ndarray, n_k: int, inflate: float) -> tuple[np.ndarray, int]:
    """A zero update of ``delta``'s shape with ``n_k * inflate`` claimed samples."""
    if not inflate >= 1:
        raise ValueError("inflate must be >= 1 (a free rider claims at least its real count)")
    if n_k < 0:
        raise ValueError("n_k must be >= 0")
    return np.zeros_like(np.asarray(delta, np.float32)), max(1, round(n_k * inflate))


def poison_labels(
    y: np.ndarray, poisoned_classes: Sequence[int], normal_class: int = 0
) -> np.ndarray:
    """A copy of ``y`` with every label in ``poisoned_classes`` rewritten to ``normal_class``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError("labels must be a 1-D array")
    out = y.copy()
    out[np.isin(y, np.asarray(list(poisoned_classes), dtype=y.dtype))] = normal_class
    return out


def choose_malicious(nodes: Sequence[str], fraction: float, seed: int = 0) -> tuple[str, ...]:
    """``round(fraction * n)`` boxes, picked deterministically from ``seed`` (sorted).

    Keyed hashing rather than list position, so which boxes are malicious does
    not depend on how the caller ordered them.
    """
    if not 0.0 <= fraction < 0.5:
        raise ValueError("fraction must be in [0, 0.5): a malicious majority is out of scope")
    uniq = sorted(set(nodes))
    k = round(fraction * len(uniq))
    key = seed.to_bytes(8, "little", signed=True)
    order = sorted(uniq, key=lambda n: hashlib.sha256(key + n.encode()).digest())
    return tuple(sorted(order[:k]))


@dataclass(frozen=True)
class AttackConfig:
    """One attack setting; checked on creation so a typo fails before any round runs."""

    kind: str
    fraction: float = 0.2
    scale: float = 1.0  # sign_flip: magnitude of the reversed update
    boost: float = 10.0  # scaling: factor on the poisoned update
    inflate: float = 10.0  # free_riding: claimed n_k / real n_k
    z: float | None = None  # little_is_enough: None = Baruch et al.'s z_max

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if not 0.0 <= self.fraction < 0.5:
            raise ValueError("fraction must be in [0, 0.5)")
        if not (self.scale > 0 and self.boost > 0 and self.inflate >= 1):
            raise ValueError("need scale > 0, boost > 0 and inflate >= 1")

    @property
    def poisons_data(self) -> bool:
        """Whether malicious boxes train on poisoned labels (label_poisoning, scaling)."""
        return self.kind in ("label_poisoning", "scaling")


def attack_update(
    config: AttackConfig,
    own_delta: np.ndarray,
    n_k: int,
    benign: np.ndarray | Sequence[np.ndarray] | None = None,
    n_total: int | None = None,
    n_malicious: int | None = None,
) -> tuple[np.ndarray, int]:
    """The ``(delta, n_k)`` a malicious box submits instead of its own.

    ``own_delta`` is what the box computed on its (possibly poisoned) data.
    ``little_is_enough`` also needs the honest updates and the round's counts.
    """
    d = np.asarray(own_delta, np.float32)
    if config.kind == "sign_flip":
        return sign_flip(d, config.scale), n_k
    if config.kind == "scaling":
        return boost(d, config.boost), n_k
    if config.kind == "free_riding":
        return free_ride(d, n_k, config.inflate)
    if config.kind == "little_is_enough":
        if benign is None or n_total is None or n_malicious is None:
            raise ValueError("little_is_enough needs benign updates, n_total and n_malicious")
        return little_is_enough(benign, n_total, n_malicious, config.z), n_k
    return d.copy(), n_k  # label_poisoning: the update is honest, the labels were not


class _Updates(Protocol):
    n_k: int

    def delta(self) -> np.ndarray: ...

    def reset_global(self, w_global: np.ndarray) -> None: ...


class MaliciousUpdates:
    """Wraps a box's learner so the federated client sends an attacked update (test mode).

    It has the same face as ``pipeline.learn.LocalLearner`` for
    ``fl.client.FlClient`` (``n_k``, ``delta()``, ``reset_global``), so a
    live box over MQTT misbehaves exactly as the pilot's in-process boxes do.
    Attacks needing other boxes' updates (``little_is_enough``) take them
    from ``benign_hint`` (set by the test harness), otherwise they refuse.
    """

    def __init__(self, inner: _Updates, config: AttackConfig) -> None:
        if config.kind == "label_poisoning":
            raise ValueError("label_poisoning acts on training data; poison the learner's labels")
        self.inner = inner
        self.config = config
        self.benign_hint: tuple[np.ndarray, int, int] | None = None  # (rows, n_total, n_malicious)

    def _attacked(self) -> tuple[np.ndarray, int]:
        hint = self.benign_hint
        if hint is None:
            return attack_update(self.config, self.inner.delta(), int(self.inner.n_k))
        rows, n_total, n_mal = hint
        return attack_update(
            self.config, self.inner.delta(), int(self.inner.n_k), rows, n_total, n_mal
        )

    @property
    def n_k(self) -> int:
        """The sample count this box claims."""
        return self._attacked()[1]

    def delta(self) -> np.ndarray:
        """The update this box sends."""
        return self._attacked()[0]

    def reset_global(self, w_global: np.ndarray) -> None:
        """Forwarded: the box still follows the global model (it must, to stay plausible)."""
        self.inner.reset_global(w_global)
