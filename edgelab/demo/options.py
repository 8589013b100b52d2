"""What the demo is asked to do and the records its stages hand each other.

Constants and plain dataclasses only (no numpy): ``edgelab.verbs.demo`` imports
this module whenever the ``edgeagent`` command starts, to show the defaults in
``--help``, so it must cost next to nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLEET = "demo"
WINDOW_S = 10.0
HOP_S = 2.0
#: Simulated seconds per hub by default: 4 segments of 225 s keep the demo under a minute.
DEFAULT_SECONDS = 900.0
#: Light byte faults on every serial link, so the report shows real rejections.
SERIAL_FAULTS = {"bit_flip": 0.002, "garbage": 0.002, "dup_frame": 0.002}
#: Episodes that resolve within a segment (fever/hypothermia ramp over many minutes).
EPISODE_KINDS = ("tachycardia", "bradycardia", "af", "pvc", "st_change", "fall", "lead_off")
#: Federated settings for a few-box demo. The clip matches the size of a segment's
#: local update (~0.01-0.04 in L2).
CLIP_NORM = 1.0
#: DP is off by default: user-level DP protects one box among all of a round's
#: boxes, and with a handful of boxes the noise that would give a meaningful
#: epsilon (z near 1) swamps the averaged update (noise/signal about
#: z * sqrt(n_params) / n_boxes), while a z small enough to keep the update
#: useful gives an epsilon in the thousands, which guarantees nothing.
#: ``--noise-multiplier`` turns it on to show the trade-off.
NOISE_MULTIPLIER = 0.0
#: The epsilon (delta 1e-5) beyond which the demo calls DP "no meaningful guarantee"
#: (the aggregator's default budget).
EPSILON_BUDGET = 8.0
DP_DELTA = 1e-5
#: Where the fleet sizes at which user-level DP stops costing accuracy are tabled.
DP_TABLE = "docs/security.md, fleet-scale table"
#: Simulated nurse feedback: the share of clinical alerts acknowledged, and how often
#: a verdict is wrong (a true alert dismissed or a false one confirmed).
FEEDBACK_SHARE = 0.5
FEEDBACK_ERROR = 0.05
N_CAP = 64
STAGE_TIMEOUT_S = 15.0
#: Bounds on waiting (wall seconds): a stuck part is reported, never waited on forever.
SEGMENT_TIMEOUT_S = 120.0
ROUND_TIMEOUT_S = 90.0
#: Wall seconds between the hubs' periodic model checks while a segment streams.
CHECK_EVERY_S = 0.5
#: BLE streams on the wall clock: before stopping, wait (bounded) until every strap's
#: data made this many windows, so its path is shown end to end even in a short demo.
BLE_MIN_WINDOWS = 3
BLE_MAX_WAIT_S = 45.0
CLINICAL = "clinical"
FAULT_KIND_NAMES = ("lead_off", "motion_artifact", "saturation")


# --------------------------------------------------------------------------- records


@dataclass
class DemoOptions:
    """What ``edgeagent demo`` was asked to do (CLI flags, validated)."""

    hubs: int = 3
    seconds: float = DEFAULT_SECONDS
    rounds: int = 3
    out: Path = Path("demo-out")
    realtime: bool = False
    ble: bool = True
    broker: str = "embedded"  # "embedded" | "mosquitto" | "HOST:PORT" | "none"
    seed: int = 0
    noise_multiplier: float = NOISE_MULTIPLIER
    feedback_share: float = FEEDBACK_SHARE
    feedback_error: float = FEEDBACK_ERROR

    def __post_init__(self) -> None:
        # Absolute from the start: the aggregator and hub daemons refuse relative state dirs
        # (a service's cwd is '/'), and the default --out is relative.
        self.out = Path(self.out).absolute()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad option and what is allowed."""
        if not 1 <= self.hubs <= 20:
            raise ValueError(f"--hubs must be 1..20, got {self.hubs}")
        if self.rounds < 0 or self.rounds > 20:
            raise ValueError(f"--rounds must be 0..20, got {self.rounds}")
        segs = self.rounds + 1
        if not math.isfinite(self.seconds) or self.seconds / segs < 2 * WINDOW_S:
            raise ValueError(
                f"--seconds {self.seconds} leaves under {2 * WINDOW_S:.0f} s per segment "
                f"({segs} segments for {self.rounds} rounds); "
                f"use at least {2 * WINDOW_S * segs:.0f}"
            )
        if not math.isfinite(self.noise_multiplier) or not 0 <= self.noise_multiplier <= 100:
            raise ValueError(f"--noise-multiplier must be in [0, 100], got {self.noise_multiplier}")
        if not math.isfinite(self.feedback_share) or not 0 <= self.feedback_share <= 1:
            raise ValueError(f"--feedback-share must be in [0, 1], got {self.feedback_share}")
        if not math.isfinite(self.feedback_error) or not 0 <= self.feedback_error <= 0.5:
            raise ValueError(f"--feedback-error must be in [0, 0.5], got {self.feedback_error}")
        if self.broker not in ("embedded", "mosquitto", "none"):
            host, _, port = self.broker.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"--broker must be embedded, mosquitto or HOST:PORT, got {self.broker!r}"
                )


def privacy_statement(
    noise_multiplier: float, boxes: int, epsilon: float | None
) -> tuple[bool, str]:
    """(DP on, one line saying what the rounds' privacy amounts to): the only way the
    demo presents epsilon, so a number that guarantees nothing never reads like one."""
    if noise_multiplier <= 0:
        return False, (
            f"DP off: {boxes} box{'es' if boxes != 1 else ''}: user-level DP gives no "
            f"meaningful guarantee; see {DP_TABLE}"
        )
    if epsilon is None:
        return True, f"DP on (z = {noise_multiplier:g}): no round released a model yet"
    if epsilon > EPSILON_BUDGET:
        return True, (
            f"DP on (z = {noise_multiplier:g}) but no meaningful guarantee: epsilon exceeds "
            f"{EPSILON_BUDGET:g} at delta {DP_DELTA:g} with {boxes} boxes; see {DP_TABLE}"
        )
    return True, f"DP on (z = {noise_multiplier:g}): epsilon {epsilon:.2f} at delta {DP_DELTA:g}"


@dataclass
class Part:
    """One part of the system and whether it ran: ``how`` is real, in-memory or skipped."""

    name: str
    ran: bool
    how: str
    reason: str = ""


@dataclass
class ModelInfo:
    """The baseline model the demo starts from, and whether it had to be built."""

    path: Path
    data: bytes
    sha256: str
    built: bool
    note: str


@dataclass
class BrokerInfo:
    """Where the federated part talks, or why it runs in memory."""

    host: str | None
    port: int | None
    how: str  # "real" | "in-memory"
    reason: str
    broker: Any = None  # edgelab.broker.Broker we started, if any
