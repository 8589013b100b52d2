"""Numpy twin of the ONNX graph: forward pass, gradients and an Adam step.

Why a twin: onnxruntime-training is not available on the boxes (FIELD-NOTES),
so training runs in numpy on the same flat vector the graph reads. The test
suite checks that this forward pass and onnxruntime agree, which is what
keeps the two from drifting apart. Pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from edgeagent.model.meta import (
    CLIP,
    ModelSpec,
    flatten,
    group_indices,
    n_params,
    param_layout,
    unflatten,
)


def standardise(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z, m) exactly as the graph computes them: NaN -> 0 with mask, clipped.

    The head's population-scale input is the same function with the model's
    ``pop_mu``/``pop_sigma``; callers pass it as ``zp``.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        zr = (np.asarray(x, np.float32) - mu) / sigma
    nan = np.isnan(zr)
    z = np.clip(np.where(nan, 0.0, zr), -CLIP, CLIP).astype(np.float32)
    return z, (~nan).astype(np.float32)


def softmax(a: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits cannot overflow."""
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def _head_input(z: np.ndarray, m: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """``[z, zp, m]``, the head's input as the graph builds it (``zp`` defaults to ``z``)."""
    return np.concatenate([z, z if zp is None else zp, m], axis=1)


def _hidden(
    p: dict[str, np.ndarray], z: np.ndarray, m: np.ndarray, zp: np.ndarray | None
) -> np.ndarray:
    return np.maximum(_head_input(z, m, zp) @ p["W1"] + p["b1"], 0.0)


def hidden(
    spec: ModelSpec, flat: np.ndarray, z: np.ndarray, m: np.ndarray, zp: np.ndarray | None = None
) -> np.ndarray:
    """The head's hidden layer (ReLU) for standardised inputs, as the graph computes it."""
    return _hidden(unflatten(spec, flat), z, m, zp)


def forward(
    spec: ModelSpec, flat: np.ndarray, z: np.ndarray, m: np.ndarray, zp: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(probs, recon_err) for standardised inputs; matches onnxruntime to float tolerance.

    ``zp`` is the population-scaled input (defaults to ``z``: calibration = population).
    """
    p = unflatten(spec, flat)
    probs = softmax(_hidden(p, z, m, zp) @ p["W2"] + p["b2"])
    recon = np.tanh(z @ p["We"] + p["be"]) @ p["Wd"] + p["bd"]
    err = ((recon - z) ** 2 * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return probs.astype(np.float32), err.astype(np.float32)


def head_loss_grad(
    spec: ModelSpec,
    flat: np.ndarray,
    z: np.ndarray,
    m: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    zp: np.ndarray | None = None,
    classes: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """Weighted softmax cross-entropy of the classifier head and its gradient (flat).

    ``classes`` (bool per class, ``None`` = all) restricts the softmax to the
    classes a trainer actually holds examples of. Why: a federated box that
    never sees, say, atrial fibrillation would otherwise spend every step
    pushing that class's logit down, and averaging such updates erases what
    the boxes that do see it learned (label-skew client drift; restricted
    softmax as in FedRS, Li & Zhan, KDD 2021). The absent classes' weights get
    no gradient from this box.
    """
    p = unflatten(spec, flat)
    n = z.shape[0]
    w = np.ones(n, np.float32) if weights is None else weights.astype(np.float32)
    w = w / max(float(w.sum()), 1e-12)
    zm = _head_input(z, m, zp)
    a1 = zm @ p["W1"] + p["b1"]
    h = np.maximum(a1, 0.0)
    logits = h @ p["W2"] + p["b2"]
    if classes is not None:
        logits = np.where(np.asarray(classes, bool)[None, :], logits, -1e9)
    probs = softmax(logits)
    loss = float(-(w * np.log(probs[np.arange(n), y] + 1e-12)).sum())
    d = probs.copy()
    d[np.arange(n), y] -= 1.0
    d *= w[:, None]
    g = {k: np.zeros(s, np.float32) for k, s in param_layout(spec)}
    g["W2"] = h.T @ d
    g["b2"] = d.sum(axis=0)
    dh = (d @ p["W2"].T) * (a1 > 0)
    g["W1"] = zm.T @ dh
    g["b1"] = dh.sum(axis=0)
    return loss, flatten(spec, g)


def ae_loss_grad(
    spec: ModelSpec, flat: np.ndarray, z: np.ndarray, m: np.ndarray
) -> tuple[float, np.ndarray]:
    """Mean masked reconstruction error of the autoencoder and its gradient (flat)."""
    p = unflatten(spec, flat)
    n = z.shape[0]
    enc = np.tanh(z @ p["We"] + p["be"])
    recon = enc @ p["Wd"] + p["bd"]
    cnt = np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    diff = (recon - z) * m
    loss = float(((diff * (recon - z)) / cnt).sum() / n)
    dr = 2.0 * diff / cnt / n
    g = {k: np.zeros(s, np.float32) for k, s in param_layout(spec)}
    g["Wd"] = enc.T @ dr
    g["bd"] = dr.sum(axis=0)
    de = (dr @ p["Wd"].T) * (1.0 - enc**2)
    g["We"] = z.T @ de
    g["be"] = de.sum(axis=0)
    return loss, flatten(spec, g)


@dataclass
class Adam:
    """Adam over the flat vector (Kingma & Ba 2015, arXiv:1412.6980); state is plain arrays."""

    size: int
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    v: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        if self.m.shape != (self.size,):
            self.m = np.zeros(self.size, np.float32)
            self.v = np.zeros(self.size, np.float32)

    def step_inplace(self, flat: np.ndarray, grad: np.ndarray, max_norm: float = 5.0) -> None:
        """Update ``flat`` in place; gradients are norm-clipped so one odd batch cannot blow up."""
        norm = float(np.linalg.norm(grad))
        if not np.isfinite(norm):
            return
        if norm > max_norm:
            grad = grad * (max_norm / norm)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad * grad
        mh = self.m / (1 - self.beta1**self.t)
        vh = self.v / (1 - self.beta2**self.t)
        flat -= (self.lr * mh / (np.sqrt(vh) + self.eps)).astype(np.float32)


def ae_param_mask(spec: ModelSpec) -> np.ndarray:
    """1 for the autoencoder's entries of the flat vector, 0 for the head's."""
    return group_mask(spec, ("ae",))


def group_mask(spec: ModelSpec, groups: Iterable[str]) -> np.ndarray:
    """1 for the entries of the flat vector that belong to any of ``groups``
    (``model.meta.PARAM_GROUPS``), else 0; all 0 for no group.

    Why groups and not a free mask: a round announces which groups it trains,
    the same for every box, so secure-aggregation sums line up and noise goes
    only where training happened (``fl.privacy``).
    """
    names = sorted(set(groups))
    mask = np.zeros(n_params(spec), np.float32)
    if names:
        mask[group_indices(spec, names)] = 1.0
    return mask


def head_param_mask(spec: ModelSpec) -> np.ndarray:
    """1 for the classifier head's entries of the flat vector, 0 for the autoencoder's."""
    return group_mask(spec, ("head",))
