"""The rules of a verdict, without I/O: its request, the holdout split, the per-patient rate.

Apart from the store (``pipeline.feedback``) so that the ward's wire format
(``pipeline.feedback_wire``), the daemon and the validating side share them
without SQLite: a request is checked the same way whichever way it came in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeagent.errors import FeedbackError, FeedbackReason, ProtocolReason

if TYPE_CHECKING:  # only a type here: the rules need no onnxruntime
    from edgeagent.pipeline.detect import ValidatedWindow

TRAIN, HOLDOUT = "train", "holdout"
SPLITS = (TRAIN, HOLDOUT)

#: Domain separation of the split hash: no other use of an alert id's hash lines up with it.
_SPLIT_CONTEXT = b"edgeagent/feedback/split/v1\x00"
#: Alert ids are uuid4 hex; a unique prefix of at least this many characters will do.
MIN_PREFIX = 6
ALERT_ID_RE = re.compile(r"^[0-9a-f]{6,64}$")
#: Names (kind, patient, source) are short printable words; anything else is malformed.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,64}$")
#: A verdict is a handful of short fields; a request larger than this is refused unread.
MAX_REQUEST_BYTES = 1024


def split_of(alert_id: str, holdout_share: float) -> str:
    """``"holdout"`` for a fixed ``holdout_share`` of alert ids, ``"train"`` for the rest.

    Deterministic (SHA-256 of the id), so a restart, another box or the
    validating side computes the same split without asking the store.
    """
    h = hashlib.sha256(_SPLIT_CONTEXT + alert_id.encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    return HOLDOUT if u < holdout_share else TRAIN


@dataclass
class TokenBucket:
    """``burst`` verdicts at once, refilled at ``rate_per_s`` (one bucket per patient)."""

    rate_per_s: float
    burst: float
    tokens: float = -1.0
    t: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` if there is one."""
        if self.t is None:
            self.tokens, self.t = self.burst, now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.t) * self.rate_per_s)
        self.t = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class AckRequest:
    """One verdict as a clinician or a ward system gives it (checked by :func:`parse_request`)."""

    alert_id: str
    confirmed: bool
    kind: str | None = None
    source: str = "cli"
    patient: str | None = None


def _name(value: Any, key: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise FeedbackError(
            "malformed", f"{key} must be 1-64 characters from A-Z a-z 0-9 _ . : @ -, got {value!r}"
        )
    return value


def parse_request(req: Mapping[str, Any], size: int = 0) -> AckRequest:
    """A verdict from a control request or a verified ward message; ``FeedbackError`` if bad.

    ``size`` is the request's encoded length (refused as ``oversized`` above
    :data:`MAX_REQUEST_BYTES`). Keys: ``alert`` (id or a unique prefix),
    ``confirmed`` (bool), ``kind``, ``source``, ``patient`` (optional names).
    A correction goes with a confirmation: a dismissed alert is ``normal``.
    """
    if size > MAX_REQUEST_BYTES:
        raise FeedbackError("oversized", f"{size} bytes; a verdict is at most {MAX_REQUEST_BYTES}")
    alert_id = req.get("alert")
    if not isinstance(alert_id, str) or not ALERT_ID_RE.match(alert_id):
        raise FeedbackError(
            "malformed", f"alert must be an alert id (hex, at least {MIN_PREFIX} characters)"
        )
    confirmed = req.get("confirmed")
    if not isinstance(confirmed, bool):
        raise FeedbackError("malformed", "confirmed must be true or false")
    kind = _name(req.get("kind"), "kind")
    if kind is not None and not confirmed:
        raise FeedbackError(
            "malformed", "a kind corrects a confirmed alert; a dismissed one is labelled normal"
        )
    source = _name(req.get("source", "cli"), "source", optional=False)
    assert source is not None
    return AckRequest(alert_id, confirmed, kind, source, _name(req.get("patient"), "patient"))


@dataclass(frozen=True)
class Verdict:
    """What :meth:`FeedbackStore.record` decided. ``windows`` are the labelled windows."""

    accepted: bool
    alert_id: str
    #: Why it was refused: a store's reason, or a ward message's (signature, replay, ...).
    reason: FeedbackReason | ProtocolReason | None = None
    detail: str = ""
    label: str = ""
    split: str = ""
    windows: tuple[ValidatedWindow, ...] = field(default=(), repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (the windows as a count)."""
        return {
            "accepted": self.accepted,
            "alert": self.alert_id,
            "reason": str(self.reason) if self.reason is not None else None,
            "detail": self.detail,
            "label": self.label,
            "split": self.split,
            "windows": len(self.windows),
        }
