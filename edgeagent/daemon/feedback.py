"""Clinicians' verdicts into the running daemon: control socket, ward MQTT topic, the learner.

Two ways in, one way through: ``edgeagent alerts ack`` asks the control socket
(``alerts_ack``), a ward system publishes a signed message on
``node/<box>/feedback`` (``pipeline.feedback_wire`` checks it). Either becomes
one :class:`~edgeagent.pipeline.feedback.AckRequest` for the
:class:`~edgeagent.pipeline.feedback.FeedbackStore`; when the store accepts it,
the windows of the ``train`` split go to the learner's ``offer_labelled`` (the
``holdout`` ones never do: they judge candidate models). Every refusal, wherever
it happened, is counted as ``feedback_refused_<reason>``; a ward message is
answered on ``node/<box>/feedback_result``.

Start order 33: after the federation client (30), whose ``on_message`` this
component chains in front of, before detection (35), so the store is still
open while detection stops and hands over its last windows.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509

from edgeagent.daemon.components import Counters
from edgeagent.errors import EdgeAgentError, FeedbackError, ProtocolError
from edgeagent.pipeline.detect import ValidatedWindow
from edgeagent.pipeline.feedback import TRAIN, AckRequest, FeedbackStore, Verdict, parse_request
from edgeagent.pipeline.feedback_wire import ReplayGuard, decode_feedback
from edgeagent.transport import topics

log = logging.getLogger(__name__)

ORDER_FEEDBACK = 33
#: Expired windows and the size cap are enforced this often.
PURGE_EVERY_S = 60.0


class FeedbackComponent:
    """Takes verdicts from the control socket and the ward's MQTT topic; trains on accepted ones.

    ``learner`` is the ``LocalLearner`` (or None when learning is off): accepted
    ``train`` windows go to its ``offer_labelled``. ``link`` (the transport's
    shared MQTT link) and ``ca`` (the fleet CA) enable the MQTT path.
    """

    name = "feedback"
    order = ORDER_FEEDBACK

    def __init__(
        self,
        store: FeedbackStore,
        learner: Any,
        counters: Counters,
        *,
        box_id: str,
        fleet: str,
        link: Any = None,
        ca: x509.Certificate | None = None,
        clock: Callable[[], float] = time.time,
        purge_every_s: float = PURGE_EVERY_S,
    ) -> None:
        self.store = store
        self.learner = learner
        self.counters = counters
        self.box_id = box_id
        self.fleet = fleet
        self.link = link
        self.ca = ca
        self.clock = clock
        self.purge_every_s = purge_every_s
        self.topic = topics.feedback(fleet, box_id)
        self.result_topic = topics.feedback_result(fleet, box_id)
        self.replays = ReplayGuard(store.policy.max_skew_s)
        self._next_purge = 0.0
        self._downstream: Callable[[Any], None] | None = None
        self._learner_missing_logged = False

    # -- the detector's hook -------------------------------------------------------------------
    def keep(self, alert_id: str, patient: str, w: ValidatedWindow) -> None:
        """``Detector.on_alert_window``: keep the window; a store error never stops detection."""
        try:
            self.store.keep(alert_id, patient, w)
        except sqlite3.Error as exc:
            self.counters.add("feedback_store_errors")
            log.error("feedback: window of alert %s not kept: %s", alert_id, exc)

    # -- one verdict, wherever it came from ----------------------------------------------------
    def apply(self, req: AckRequest) -> Verdict:
        """Record the verdict; on acceptance hand its ``train`` windows to the learner."""
        try:
            v = self.store.record(req.alert_id, req.confirmed, req.kind, req.source, req.patient)
        except sqlite3.Error as exc:
            self.counters.add("feedback_store_errors")
            log.error("feedback: verdict on %s not stored: %s", req.alert_id, exc)
            v = self.store.refused("unavailable", f"the feedback store failed: {exc}", req.alert_id)
        if not v.accepted:
            self.counters.add(f"feedback_refused_{v.reason}")
            log.info("feedback on %s refused (%s): %s", v.alert_id, v.reason, v.detail)
            return v
        self.counters.add("feedback_accepted")
        log.info("feedback on %s from %s: %s (%s, %d windows)", v.alert_id, req.source, v.label,
                 v.split, len(v.windows))  # fmt: skip
        if v.split == TRAIN:
            self._train(v)
        return v

    def _train(self, v: Verdict) -> None:
        offer = getattr(self.learner, "offer_labelled", None) if self.learner is not None else None
        if offer is None:
            self.counters.add("feedback_not_trained", len(v.windows))
            if self.learner is not None and not self._learner_missing_logged:
                self._learner_missing_logged = True
                log.warning("feedback: this learner cannot train on labelled windows")
            return
        taken = sum(1 for w in v.windows if offer(w))
        self.counters.add("feedback_windows_offered", taken)
        if taken < len(v.windows):
            self.counters.add("feedback_windows_declined", len(v.windows) - taken)

    def _refuse(self, exc: FeedbackError | ProtocolError, alert_id: str = "") -> Verdict:
        self.counters.add(f"feedback_refused_{exc.reason}")
        if isinstance(exc, FeedbackError):
            return self.store.refused(exc.reason, exc.detail, alert_id)
        return Verdict(False, alert_id, exc.reason, exc.detail)

    # -- control socket ------------------------------------------------------------------------
    def commands(self) -> dict[str, Callable[[Mapping[str, Any]], Any]]:
        """``alerts_ack`` (``edgeagent alerts ack``) and ``feedback`` (the store's counts)."""
        return {"alerts_ack": self.ack, "feedback": lambda _r: self.store.counts()}

    def ack(self, req: Mapping[str, Any]) -> dict[str, Any]:
        """A verdict from the control socket; ``alert`` may be a unique prefix of the id."""
        body = {k: v for k, v in req.items() if k != "cmd"}
        try:
            size = len(json.dumps(body, default=str))
            parsed = parse_request(body, size)
        except FeedbackError as exc:
            return self._refuse(exc, str(body.get("alert", ""))[:64]).as_dict()
        full = self.store.resolve(parsed.alert_id)
        if full is not None and full != parsed.alert_id:
            parsed = AckRequest(full, parsed.confirmed, parsed.kind, parsed.source, parsed.patient)
        return self.apply(parsed).as_dict()

    # -- MQTT ----------------------------------------------------------------------------------
    def on_message(self, m: Any) -> None:
        """The link's message callback: feedback here, everything else to the one before."""
        if m.topic != self.topic:
            if self._downstream is not None:
                self._downstream(m)
            return
        self.handle(m.payload)

    def handle(self, payload: bytes) -> Verdict:
        """Verify a ward message (signature, certificate, destination, time, nonce), apply it,
        and say on ``node/<box>/feedback_result`` what became of it."""
        nonce = b""
        if self.ca is None:
            v = self._refuse(ProtocolError("unknown_sender", "no fleet CA configured"))
        else:
            now = self.clock()
            try:
                wv = decode_feedback(
                    payload, self.ca, self.box_id, now, self.store.policy.max_skew_s
                )
                self.replays.check(wv.nonce, now)
            except (ProtocolError, FeedbackError) as exc:
                log.warning("feedback message refused: %s", exc)
                v = self._refuse(exc)
            else:
                r, nonce = wv.request, wv.nonce
                source = f"ward:{r.source}"[:64]
                v = self.apply(AckRequest(r.alert_id, r.confirmed, r.kind, source, r.patient))
        self._reply(v, nonce)
        return v

    def _reply(self, v: Verdict, nonce: bytes) -> None:
        """Best effort (QoS 1, not stored): the verdict itself is on disk either way."""
        if self.link is None:
            return
        body = {"type": "feedback_result", "box_id": self.box_id, "nonce": nonce.hex() or None,
                **v.as_dict()}  # fmt: skip
        try:
            self.link.publish(self.result_topic, json.dumps(body).encode(), qos=1)
        except EdgeAgentError as exc:
            self.counters.add("feedback_result_errors")
            log.warning("feedback result not sent: %s", exc)

    # -- component -----------------------------------------------------------------------------
    def start(self) -> None:
        if self.link is not None and self.ca is not None:
            self._downstream = self.link.on_message
            self.link.on_message = self.on_message
            self.link.subscribe(self.topic)

    def tick(self) -> None:
        mono = time.monotonic()
        if mono < self._next_purge:
            return
        self._next_purge = mono + self.purge_every_s
        try:
            gone = self.store.purge()
            self.store.checkpoint()
        except sqlite3.Error as exc:
            self.counters.add("feedback_store_errors")
            log.error("feedback: purge failed: %s", exc)
            return
        if any(gone.values()):
            log.info("feedback: retention removed %s", gone)

    def stop(self) -> None:
        if self.link is not None and self._downstream is not None:
            self.link.on_message = self._downstream
        self.store.close()

    def status(self) -> Mapping[str, Any]:
        try:
            counts = self.store.counts()
        except sqlite3.Error as exc:
            counts = {"error": str(exc)}
        return {
            "feedback": counts,
            "counters": {
                "feedback_confirmed": int(counts.get("confirmed", 0)),
                "feedback_dismissed": int(counts.get("dismissed", 0)),
            },
        }
