"""Offline (batch) training of the detector from labelled feature rows.

Used by ``edgelab.baseline`` for the baseline and by tests for small models.
Deterministic for a given seed. Pure numpy; no I/O.
"""

from __future__ import annotations

import numpy as np

from edgeagent.model.meta import ModelSpec, init_params
from edgeagent.model.nn import Adam, ae_loss_grad, head_loss_grad


def balanced_weights(y: np.ndarray, n_classes: int, cap: float = 20.0) -> np.ndarray:
    """Per-row weights so every class counts equally (capped, so rare classes do not explode)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    w = np.minimum(w, cap)
    return w[y].astype(np.float32)


def fit(
    spec: ModelSpec,
    z: np.ndarray,
    m: np.ndarray,
    y: np.ndarray,
    epochs: int = 60,
    batch: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    flat: np.ndarray | None = None,
    normal_class: int = 0,
    input_dropout: float = 0.15,
    groups: list[np.ndarray] | None = None,
    zp: np.ndarray | None = None,
    restrict_classes: bool = False,
    opt: Adam | None = None,
    class_group: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Train head (balanced cross-entropy, all rows) and autoencoder (normal rows only).

    ``z`` is personally standardised, ``zp`` population-standardised (``None``: same as z).

    ``input_dropout`` masks random features (or whole ``groups``, e.g. the
    column indices of each modality) per row during training, exactly as a
    NaN would (z=0, m=0), so the model still works when a modality is missing.

    ``restrict_classes`` runs the head's softmax over the classes present in
    ``y`` only (see ``nn.head_loss_grad``): for federated boxes that each hold
    a few of the classes, so local training does not unlearn the others.

    ``opt`` continues an optimiser from an earlier call (its moments and step
    count; updated in place); ``None`` starts a fresh Adam at ``lr``.

    ``class_group`` (per class: the index into ``groups`` of the modality that
    class is seen through, -1 for none) keeps that group when a row of the
    class is dropped out: a fever row without temperature teaches the head to
    call fever from heart rate, which is what it then did on real ECG.
    """
    rng = np.random.default_rng(seed)
    w = init_params(spec, seed) if flat is None else np.asarray(flat, np.float32).copy()
    if opt is None:
        opt = Adam(w.size, lr=lr)
    elif opt.size != w.size:
        raise ValueError(f"optimiser state is for {opt.size} parameters, the model has {w.size}")
    weights = balanced_weights(y, spec.n_classes)
    normal = np.flatnonzero(y == normal_class)
    present = np.bincount(y, minlength=spec.n_classes) > 0 if restrict_classes else None
    hist: dict[str, list[float]] = {"head": [], "ae": []}
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        lh = la = 0.0
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            zb, mb = z[idx].copy(), m[idx].copy()
            zpb = (z if zp is None else zp)[idx].copy()
            if input_dropout > 0:
                if groups:
                    drop = np.zeros(zb.shape, bool)
                    for gi, g in enumerate(groups):
                        d = rng.random(len(idx)) < input_dropout
                        if class_group is not None:
                            d &= np.asarray(class_group)[y[idx]] != gi
                        drop[:, g] |= d[:, None]
                else:
                    drop = rng.random(zb.shape) < input_dropout
                zb[drop] = 0.0
                zpb[drop] = 0.0
                mb[drop] = 0.0
            l1, g1 = head_loss_grad(spec, w, zb, mb, y[idx], weights[idx], zpb, present)
            nidx = rng.choice(normal, size=min(len(idx), len(normal)), replace=False)
            l2, g2 = ae_loss_grad(spec, w, z[nidx], m[nidx])
            opt.step_inplace(w, g1 + g2)
            lh += l1
            la += l2
        k = max(1, (n + batch - 1) // batch)
        hist["head"].append(lh / k)
        hist["ae"].append(la / k)
    return w, hist
