"""Scoring a trained model as a box would: exported to ONNX, run by onnxruntime on test patients.

The metrics are ``edgeagent.evaluate``'s definitions, so the pilot's figures mean
what the agent's own evaluation means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeagent.evaluate import auroc, binary_metrics, window_labels
from edgeagent.model.meta import FAULT, NORMAL, ModelMeta
from edgeagent.pipeline.personal import BUFFER_WINDOWS, personal_threshold
from edgelab.pilot.simulate import PatientData, modality_columns
from edgelab.pilot.train import Calibration


def model_bytes(meta: ModelMeta, w: np.ndarray) -> bytes:
    """ONNX bytes of ``w`` (the artefact a box would run)."""
    from edgeagent.model.graph import build_model, to_bytes

    return to_bytes(build_model(meta, np.asarray(w, np.float32)))


@dataclass
class HeldOutSet:
    """A test patient split into its unlabelled calibration part and its evaluation part."""

    id: str
    x_cal: np.ndarray
    x: np.ndarray
    spans: np.ndarray
    labels: list[tuple[float, float, str]]
    wy: np.ndarray  # 1 positive, 0 negative, -1 excluded (edgeagent.evaluate)


def split_test(d: PatientData, frac: float) -> HeldOutSet:
    """The first ``frac`` of the windows calibrate; the rest are evaluated.

    Calibration keeps the calibration period's normal windows only, as the
    hubs' training calibration does (``Calibration.period``; on a box, the
    detector's "normal and good quality" judgement selects them).
    """
    rule = Calibration(frac)
    k = rule.cut(len(d.x))
    spans = d.spans[k:]
    wy, _ = window_labels([tuple(s) for s in spans], d.labels)
    cal = rule.period(d.x, d.y)
    return HeldOutSet(d.id, cal, d.x[k:], spans, d.labels, wy)


def _probabilities(sess: Any, x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Class probabilities of rows ``x`` under the personal scale ``mu``, ``sigma``."""
    feeds = {
        "x": np.ascontiguousarray(x, np.float32),
        "mu": mu.reshape(1, -1).astype(np.float32),
        "sigma": sigma.reshape(1, -1).astype(np.float32),
    }
    return np.asarray(sess.run(None, feeds)[0])


def evaluate_model(
    meta: ModelMeta,
    w: np.ndarray,
    tests: Sequence[HeldOutSet],
    personal: bool,
    *,
    drop: str | None = None,
    permute: str | None = None,
    rng: np.random.Generator | None = None,
    rule: Calibration | None = None,
) -> dict[str, Any]:
    """Accuracy, F1, precision, recall, AUROC over the test patients (onnxruntime, batched).

    With ``personal`` the result also lists each test patient's clinical
    threshold (``thresholds``; the global one unless ``rule.threshold``).
    """
    from edgeagent.pipeline.detect import make_session

    sess = make_session(model_bytes(meta, w))
    pop_mu = np.asarray(meta.pop_mu, np.float32)
    pop_sigma = np.asarray(meta.pop_sigma, np.float32)
    fault_idx = meta.classes.index(FAULT)
    clinical = [i for i, c in enumerate(meta.classes) if c not in (NORMAL, FAULT)]
    ys, preds, scores, thresholds = [], [], [], []
    rule = rule or Calibration()
    for t in tests:
        x, x_cal = t.x.copy(), t.x_cal.copy()
        if drop is not None:
            cols = modality_columns(drop)
            x[:, cols] = np.nan
            x_cal[:, cols] = np.nan
        if permute is not None:
            cols = modality_columns(permute)
            order = (rng or np.random.default_rng(0)).permutation(len(x))
            x[:, cols] = x[order][:, cols]
        if personal:
            mu, sigma = rule(x_cal, pop_mu, pop_sigma)
        else:
            mu, sigma = pop_mu, pop_sigma
        threshold = meta.thresholds["clinical"]
        if personal and rule.threshold:
            # the detector's rule over the calibration period's normal windows (its buffer)
            cal_probs = _probabilities(sess, x_cal[-BUFFER_WINDOWS:], mu, sigma)
            threshold = personal_threshold(cal_probs[:, clinical].sum(axis=1), threshold)
        probs = _probabilities(sess, x, mu, sigma)
        score = probs[:, clinical].sum(axis=1)
        pred = (score >= threshold) & (probs[:, fault_idx] < meta.thresholds["fault"])
        thresholds.append(threshold)
        keep = t.wy >= 0
        ys.append(t.wy[keep] == 1)
        preds.append(pred[keep])
        scores.append(score[keep])
    y = np.concatenate(ys)
    out: dict[str, Any] = binary_metrics(y, np.concatenate(preds))
    out["auroc"] = auroc(y, np.concatenate(scores))
    out["balanced_accuracy"] = 0.5 * (
        out["tp"] / max(1, out["tp"] + out["fn"]) + out["tn"] / max(1, out["tn"] + out["fp"])
    )
    if personal:
        out["thresholds"] = [float(v) for v in thresholds]
    return out


def short_metrics(m: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "accuracy",
        "balanced_accuracy",
        "f1",
        "precision",
        "recall",
        "auroc",
        "tp",
        "fp",
        "fn",
        "tn",
        "thresholds",
    )
    return {k: m[k] for k in keys if k in m}
