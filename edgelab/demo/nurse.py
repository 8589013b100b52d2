"""The simulated ward: which alerts a nurse acknowledges, and what she says about them.

Pure (no devices, threads or files): the demo's wearables know the ground truth
of every episode, so a nurse's verdict is the truth about the alert, flipped
with a configurable error rate, on a configurable share of the alerts. A
confirmed alert names the episode's kind as the ground truth has it (a nurse
corrects the kind); a dismissed one is a false alarm and labels its windows
"normal", which is what teaches a detector to raise fewer of them.

The same truth rule scores the demo (:func:`alert_truth` is what
``summary.match_alerts`` counts as a true positive), so the feedback and the
figures cannot disagree about which alerts were right.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgelab.demo.options import CLINICAL, FAULT_KIND_NAMES

#: The label a dismissed alert gives its windows (the classifier's normal class).
NORMAL = "normal"


def alert_truth(alert: dict[str, Any], labels: Iterable[tuple[float, float, str]]) -> str | None:
    """The kind of the ground-truth label an alert overlaps in its own category, or None.

    A clinical alert is true when it overlaps a clinical episode, a sensor-fault
    alert when it overlaps a sensor fault (a clinical alert raised by a lead-off
    is a false alarm). Times are on the simulation clock.
    """
    want_fault = alert["category"] == "sensor_fault"
    for s, e, k in labels:
        if alert["start"] < e and s < alert["end"] and (k in FAULT_KIND_NAMES) == want_fault:
            return k
    return None


@dataclass(frozen=True)
class Verdict:
    """A nurse's answer to one alert: ``true`` as she gave it, ``label`` for its windows."""

    alert: int  # index into the alerts judged
    true: bool
    label: str  # the class its windows are labelled with
    correct: bool  # whether her answer matches the ground truth


def nurse_verdicts(
    alerts: Sequence[dict[str, Any]],
    labels: Sequence[tuple[float, float, str]],
    share: float,
    error: float,
    draws: Sequence[tuple[float, float]],
) -> list[Verdict]:
    """Verdicts on the clinical alerts a nurse acknowledged.

    ``draws`` holds two uniform numbers in [0, 1) per alert (same order): the
    first decides whether she acknowledges it (``< share``), the second whether
    she gets it wrong (``< error``). Passing the draws in keeps this function
    pure and its tests exact; the demo draws them from a seeded generator.
    """
    if len(draws) != len(alerts):
        raise ValueError(f"{len(draws)} draws for {len(alerts)} alerts")
    out: list[Verdict] = []
    for i, (a, (u_ack, u_err)) in enumerate(zip(alerts, draws, strict=True)):
        if a["category"] != CLINICAL or u_ack >= share:
            continue
        kind = alert_truth(a, labels)
        truth = kind is not None
        said = truth != (u_err < error)
        # confirmed: the episode's kind as the ground truth has it (or the alert's own,
        # when she confirms a false alarm); dismissed: its windows were normal
        label = (kind if kind is not None else str(a["kind"])) if said else NORMAL
        out.append(Verdict(i, said, label, said == truth))
    return out
