"""The pilot's knobs and fixed tables: one ``PilotConfig`` records everything a run depends on.

Every other pilot module reads these; nothing here trains or measures, so a results
file's ``config`` section is enough to repeat the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeagent.fl.constants import DEFENCE_RULES
from edgelab.attacks import ATTACKS, AttackConfig
from edgelab.head_calibration import PRIORS

#: The seed paper's pilot figures, printed beside ours for comparison only (never used as results).
PAPER: dict[str, Any] = {
    "accuracy_federated": 0.92,
    "accuracy_centralised": 0.89,
    "latency_ms_federated": 220.0,
    "latency_ms_centralised": 350.0,
    "accuracy_under_attack_federated": 0.85,
    "accuracy_under_attack_centralised": 0.62,
    "modality_contribution_pct": {"ecg": 40.0, "acc": 30.0, "temp": 20.0, "env": 10.0},
}


#: FedAvg, every defence of ``fl.robust`` over single updates, grouped SecAgg.
MODES: tuple[str, ...] = ("fedavg", *DEFENCE_RULES, "secure_grouped_median")


MODALITIES: tuple[str, ...] = ("ecg", "acc", "temp", "env")


# The headline rows rerun with other training seeds (``PilotConfig.seeds``): the
# federated row moves by several points between seeds, so targets use the mean.
SEED_ROWS: dict[str, dict[str, Any]] = {
    "centralised": {"kind": "central"},
    # control: the centralised model's head re-fitted as the federated runs' is (same
    # prior, its own pooled moments), so the federated rows' gain from that step is not
    # mistaken for federation's
    "centralised_refit": {"kind": "central", "refit": True},
    "federated": {"kind": "fed"},
    "federated_personalised": {"kind": "fed", "personal": True},
}


# Cohort k's patients come from data seed ``seed + COHORT_STRIDE * k``; its training seeds
# are that plus 0..seeds-1, so cohorts never share a seed while seeds < COHORT_STRIDE.
COHORT_STRIDE = 100


FLEET = "pilot"


@dataclass
class PilotConfig:
    """Every knob of a pilot run; recorded in the results so a run can be repeated."""

    hubs: int = 20
    rounds: int = 20
    local_epochs: int = 5
    hub_seconds: float = 900.0
    test_patients: int = 12
    test_seconds: float = 1200.0
    kinds_per_hub: int = 4
    calibration_frac: float = 0.3
    seed: int = 0
    lr: float = 3e-3
    server_lr: float = 1.0  # FedAvg server step on the mean update (1 = plain FedAvg)
    server_momentum: float = 0.5  # FedAvgM (Hsu et al. 2019); 0 = plain FedAvg
    restrict_classes: bool = True  # local softmax over the classes a trainer holds (FedRS)
    keep_local_optimizer: bool = True  # a hub's Adam moments carry over between rounds
    head_calibration: bool = True  # federated runs end with a CCVR round (not under DP)
    calibration_samples: int = 1000  # virtual features per class for that round (on average)
    calibration_prior: str = "counts"  # classes' shares of them: fleet row counts or "balanced"
    personal_traits_only: bool = True  # personal calibration of trait features only
    personal_spread: bool = False  # personal spread too (False: personal location only)
    # personal location moved only the share the fleet finds persists (persistence_weights)
    personal_persistence: bool = True
    personal_threshold: bool = True  # the detector's personal clinical threshold
    batch: int = 64
    hidden: int = 32
    latent: int = 12
    threshold: float = 0.5
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3)
    attacks: tuple[str, ...] = ATTACKS
    modes: tuple[str, ...] = MODES
    assumed_malicious: float = 0.3  # what robust rules are configured to tolerate
    group_size: int = 2  # secure grouped aggregation: boxes per securely summed group
    secure_clip: float = 0.0  # 0 = median honest update norm of round 1 (stated in results)
    n_cap: int = 1000
    sign_flip_scale: float = 1.0
    scaling_boost: float = 10.0
    free_ride_inflate: float = 10.0
    dp_noise_multiplier: float = 0.3
    dp_delta: float = 1e-5
    permutation_repeats: int = 3
    latency_windows: int = 200
    latency_spacing_s: float = 0.05
    latency_delays_ms: tuple[float, ...] = (0.0, 50.0)
    processes: int = 2
    seeds: int = 3  # training seeds for the headline rows; the data stay those of ``seed``
    cohorts: int = 3  # simulated cohorts (other patients) for the headline rows; targets: mean

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting and the fix."""
        if self.hubs < 4:
            raise ValueError("hubs must be >= 4 (robust rules need a majority of honest hubs)")
        if self.rounds < 1 or self.local_epochs < 1:
            raise ValueError("rounds and local_epochs must be >= 1")
        if not 0 <= self.server_momentum < 1:
            raise ValueError("server_momentum must be in [0, 1)")
        if self.test_patients < 1:
            raise ValueError("test_patients must be >= 1")
        if self.hub_seconds < 300 or self.test_seconds < 300:
            raise ValueError("hub_seconds and test_seconds must be >= 300 (room for episodes)")
        if not 1 <= self.kinds_per_hub <= 8:
            raise ValueError("kinds_per_hub must be in 1..8")
        if not 0 < self.calibration_frac < 0.9:
            raise ValueError("calibration_frac must be in (0, 0.9)")
        for f in self.fractions:
            if not 0 < f < 0.5:
                raise ValueError(f"fraction {f} must be in (0, 0.5)")
        for a in self.attacks:
            AttackConfig(a)
        for m in self.modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
        if not 2 <= self.group_size <= self.hubs // 2:
            raise ValueError("group_size must be in 2..hubs//2 (at least two groups)")
        if self.latency_windows < 10 or self.latency_spacing_s <= 0:
            raise ValueError("latency_windows must be >= 10 and latency_spacing_s > 0")
        if any(d < 0 for d in self.latency_delays_ms):
            raise ValueError("latency_delays_ms must be >= 0")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if not 1 <= self.seeds < COHORT_STRIDE:
            raise ValueError(
                f"seeds must be in 1..{COHORT_STRIDE - 1} (training seeds for the headline rows)"
            )
        if self.calibration_samples < 10:
            raise ValueError("calibration_samples must be >= 10 (virtual features per class)")
        if self.calibration_prior not in PRIORS:
            raise ValueError(
                f"calibration_prior must be one of {', '.join(PRIORS)} (classes' shares of the "
                "virtual features)"
            )
        if self.cohorts < 1:
            raise ValueError("cohorts must be >= 1 (simulated cohorts for the headline rows)")

    @classmethod
    def small(cls, **over: Any) -> PilotConfig:
        """The CI pilot: every table row, tiny data (well under a minute and a half)."""
        base: dict[str, Any] = dict(
            hubs=6,
            rounds=4,
            local_epochs=2,
            hub_seconds=600.0,
            test_patients=2,
            test_seconds=600.0,
            kinds_per_hub=4,
            fractions=(0.1, 0.2, 0.3),
            permutation_repeats=1,
            latency_windows=30,
            latency_spacing_s=0.03,
            latency_delays_ms=(50.0,),
            seeds=2,
            cohorts=2,
            calibration_samples=200,
        )
        base.update(over)
        return cls(**base)
