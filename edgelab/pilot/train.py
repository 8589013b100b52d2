"""One hub's (or the pooled) training arrays and the local fit every pilot row shares.

Local-only, centralised and each federated hub train with the same ``fit`` from
the same initial weights, so the rows differ only in what data each fit sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgeagent.model.meta import ModelMeta
from edgeagent.model.nn import Adam, standardise
from edgeagent.pipeline import features
from edgeagent.pipeline.personal import calibrate, persistence_sums, persistence_weights, trait_mask
from edgelab.pilot.config import MODALITIES, PilotConfig
from edgelab.pilot.simulate import PatientData, modality_columns
from edgelab.train import fit


@dataclass
class TrainSet:
    """One hub's standardised training arrays."""

    z: np.ndarray
    zp: np.ndarray
    m: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Calibration:
    """How a box personalises: its personal scale from the calibration period, its threshold.

    The same rule serves the hubs' training data and the test patients, so
    the head is trained on the scale it is evaluated with. ``frac`` is the
    leading share of a recording that calibrates (its normal windows only);
    ``traits_only``, ``spread`` and ``weights`` are
    ``pipeline.personal.calibrate``'s ``mask=trait_mask(...)``, ``spread``
    and ``weights`` (the fleet's ``persistence_weights``; ``None``: full
    weight). ``threshold``: the evaluation raises the clinical threshold to
    ``personal_threshold`` of the calibration period's scores, as the
    detector does.
    """

    frac: float = 0.3
    traits_only: bool = True
    spread: bool = False
    weights: tuple[float, ...] | None = None
    threshold: bool = False

    @classmethod
    def of(cls, cfg: PilotConfig, weights: Sequence[float] | None = None) -> Calibration:
        """The rule a pilot configuration selects (``weights``: the cohort's, if it uses them)."""
        use = cfg.personal_persistence and weights is not None
        return cls(
            cfg.calibration_frac,
            cfg.personal_traits_only,
            cfg.personal_spread,
            tuple(float(v) for v in weights) if use else None,
            cfg.personal_threshold,
        )

    def cut(self, n: int) -> int:
        """How many of a recording's ``n`` leading windows form its calibration period."""
        return max(1, round(self.frac * n))

    def period(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The calibration period's normal rows (all its rows if none is normal)."""
        k = self.cut(len(x))
        cal = x[:k][y[:k] == 0]
        return cal if len(cal) else x[:k]

    def later(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The normal rows after the calibration period (what its baseline should predict)."""
        k = self.cut(len(x))
        return x[k:][y[k:] == 0]

    def __call__(
        self, x_cal: np.ndarray, pop_mu: np.ndarray, pop_sigma: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = trait_mask(features.FEATURE_NAMES) if self.traits_only else None
        w = None if self.weights is None else np.asarray(self.weights, np.float32)
        return calibrate(x_cal, pop_mu, pop_sigma, mask=mask, spread=self.spread, weights=w)


def fleet_persistence(
    hubs: Sequence[PatientData], frac: float, pop_mu: np.ndarray, pop_sigma: np.ndarray
) -> np.ndarray:
    """The training hubs' ``persistence_weights``: each hub adds its pair of sums.

    A hub holds its whole recording, so it can tell how well its own
    calibration period predicted its later baseline; only the sums over hubs
    are needed (a secure-aggregation round could carry them), and the test
    patients, who have only their calibration period, use the result.
    """
    rule = Calibration(frac)
    cr = np.zeros(len(pop_mu))
    cc = np.zeros(len(pop_mu))
    for d in hubs:
        a, b = persistence_sums(rule.period(d.x, d.y), rule.later(d.x, d.y), pop_mu, pop_sigma)
        cr += a
        cc += b
    return persistence_weights(cr, cc)


def train_arrays(
    d: PatientData,
    pop_mu: np.ndarray,
    pop_sigma: np.ndarray,
    personal: bool,
    drop: str | None = None,
    y: np.ndarray | None = None,
    rule: Calibration | None = None,
) -> TrainSet:
    """Standardise a hub's windows as its box would (personal calibration or population).

    Personal: ``rule`` (default ``Calibration()``) over the hub's own
    calibration period, exactly as the test patients are calibrated.
    """
    y = d.y if y is None else y
    x = d.x.copy()
    if drop is not None:
        x[:, modality_columns(drop)] = np.nan
    keep = y >= 0
    if personal:
        rule = rule or Calibration()
        mu, sigma = rule(rule.period(x, d.y), pop_mu, pop_sigma)
    else:
        mu, sigma = pop_mu, pop_sigma
    z, m = standardise(x[keep], mu[None], sigma[None])
    zp, _ = standardise(x[keep], pop_mu[None], pop_sigma[None])
    return TrainSet(z, zp, m, y[keep])


def concat(sets: Sequence[TrainSet]) -> TrainSet:
    """Pool several hubs' arrays (the centralised data set)."""
    return TrainSet(
        np.concatenate([s.z for s in sets]),
        np.concatenate([s.zp for s in sets]),
        np.concatenate([s.m for s in sets]),
        np.concatenate([s.y for s in sets]),
    )


def local_fit(
    cfg: PilotConfig,
    meta: ModelMeta,
    ts: TrainSet,
    w: np.ndarray,
    epochs: int,
    seed: int,
    opt: Adam | None = None,
) -> np.ndarray:
    """``epochs`` of ``model.train.fit`` from ``w`` (modality dropout as in the baseline).

    With ``cfg.restrict_classes`` the head's softmax covers only the classes
    in ``ts.y`` (no effect on pooled data, which holds every class). ``opt``
    is the hub's optimiser state from its previous round (updated in place).
    """
    groups = [modality_columns(mod) for mod in MODALITIES]
    out, _ = fit(
        meta.spec,
        ts.z,
        ts.m,
        ts.y,
        epochs=epochs,
        batch=cfg.batch,
        lr=cfg.lr,
        seed=seed,
        flat=w,
        groups=groups,
        zp=ts.zp,
        restrict_classes=cfg.restrict_classes,
        opt=opt,
    )
    return out
