"""MQTT link: a small facade over paho-mqtt 2.x that makes delivery explicit.

Why a facade and not paho directly: paho's defaults are wrong for a box that
must not lose an alert (FIELD-NOTES "MQTT"):

* a QoS 1 publish while disconnected returns ``MQTT_ERR_NO_CONN`` yet is queued
  in memory, and ``is_published()`` on it raises. Delivery is therefore
  confirmed only by the PUBACK and its MQTT 5 reason code (``0x87`` = refused by
  the ACL), reported through a :class:`PendingAck` per message;
* MQTT 5 ``clean_start`` defaults to "first only": we pass ``clean_start=False``
  and a Session Expiry Interval on every connect so subscriptions and queued
  messages survive a reconnect;
* the built-in reconnect backoff has no jitter, so a fleet reconnects in
  lock-step after a broker restart. The link runs its own network thread with
  :func:`edgeagent.backoff.backoff_delay` (exponential, "equal jitter", the
  same function the wearable sources use);
* nothing survives a process restart: durable delivery is the job of the
  SQLite :class:`~edgeagent.transport.outbox.Outbox`, drained by
  :class:`OutboxForwarder` which deletes a row only on a successful PUBACK.

Every box connects with its own client certificate (mutual TLS); the broker's
ACL lets it publish only under ``node/<its id>/``. Its retained ``status``
topic says ``online`` while connected and is set to ``offline`` by the broker
(last will) if the box vanishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeagent.backoff import backoff_delay
from edgeagent.errors import OutboxError, TransportError
from edgeagent.ops.pki import TlsFiles
from edgeagent.transport import topics

if TYPE_CHECKING:
    from edgeagent.transport.outbox import Outbox, OutboxRow

__all__ = [
    "RC_NOT_AUTHORIZED",
    "RC_NO_MATCHING_SUBSCRIBERS",
    "Message",
    "MqttLink",
    "OutboxForwarder",
    "PendingAck",
    "TlsFiles",
    "is_transient",
]

log = logging.getLogger(__name__)

# --- policy as data ---------------------------------------------------------
#: First reconnect wait. Short: most outages on a LAN are a broker restart.
RECONNECT_MIN_S = 0.5
#: Cap of the ladder. With equal jitter a box waits 1.5-3 s between attempts
#: once the ladder tops out, so it is back within ~3 s of its broker (a long cap
#: leaves a box offline for most of a step after its broker returned); the random
#: half still spreads a fleet of thousands over the window, and a refused TCP
#: connect costs the broker almost nothing.
RECONNECT_MAX_S = 3.0
#: Keep the session (subscriptions, queued QoS 1) this long while a box is away.
SESSION_EXPIRY_S = 7 * 24 * 3600
KEEPALIVE_S = 30
#: In-flight QoS 1 window; matches max_inflight_messages in mosquitto.conf.
MAX_INFLIGHT = 32
#: MQTT user property carrying the outbox message id (receivers dedupe on it).
MSG_ID_PROPERTY = "msg-id"

RC_SUCCESS = 0x00
RC_NO_MATCHING_SUBSCRIBERS = 0x10  # delivered to the broker; nobody listening: still success
RC_NOT_AUTHORIZED = 0x87
#: PUBACK codes after which the same message may succeed later (retry, keep the row).
TRANSIENT_CODES = frozenset({0x89, 0x97})  # Server busy, Quota exceeded
#: Pseudo reason code for "the link was closed before a PUBACK came".
RC_CLOSED = -1
#: PUBACK codes that say *who* is publishing is wrong, not *what*: a box whose
#: certificate names another box, or an ACL that lacks it. The message is fine and
#: must wait for the fix (a right certificate, a corrected ACL), so its row stays.
AUTH_REFUSAL_CODES = frozenset({RC_NOT_AUTHORIZED})
#: After an authorisation refusal the forwarder offers nothing for this long (or
#: until the link reconnects): the same refusal would come back for every row.
AUTH_RETRY_S = 60.0


def is_transient(reason_code: int) -> bool:
    """True when a failed PUBACK is worth retrying (busy/quota, or link closed)."""
    return reason_code in TRANSIENT_CODES or reason_code == RC_CLOSED


@dataclass(frozen=True, slots=True)
class Message:
    """A received message, decoupled from paho's mutable MQTTMessage."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()
    expiry_s: int | None = None  # MQTT 5 Message Expiry Interval left when delivered

    @property
    def msg_id(self) -> str | None:
        """The outbox message id the sender attached, if any."""
        for k, v in self.user_properties:
            if k == MSG_ID_PROPERTY:
                return v
        return None


class PendingAck:
    """The broker's answer to one PUBLISH or SUBSCRIBE, when it comes.

    ``reason_code`` is the MQTT 5 reason code (first one for SUBACK), or
    :data:`RC_CLOSED` when the link closed first. ``ok`` means < 0x80.
    """

    def __init__(self, mid: int, topic: str) -> None:
        self.mid = mid
        self.topic = topic
        self.reason_code: int | None = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[PendingAck], None]] = []

    def done(self) -> bool:
        return self._event.is_set()

    @property
    def ok(self) -> bool:
        return self.reason_code is not None and 0 <= self.reason_code < 0x80

    def wait(self, timeout: float | None = None) -> int:
        """Block until the ack arrives; returns the reason code.

        Raises :class:`TransportError` (``ack_timeout``) if none came in time.
        """
        if not self._event.wait(timeout):
            raise TransportError("ack_timeout", f"no ack for mid {self.mid} on {self.topic}")
        assert self.reason_code is not None
        return self.reason_code

    def add_done_callback(self, fn: Callable[[PendingAck], None]) -> None:
        """Call ``fn(self)`` once resolved (immediately if already resolved)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _resolve(self, reason_code: int) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason_code = reason_code
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a consumer bug must not kill the network thread
                log.exception("ack callback failed for mid %s", self.mid)


#: OpenSSL reasons meaning "this certificate/CA pairing is wrong" (ours or the broker's).
_CERT_REASONS = ("CERTIFICATE_VERIFY_FAILED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE")


def _is_certificate_problem(exc: ssl.SSLError) -> bool:
    text = f"{exc.reason or ''} {exc}".upper()
    return any(r in text for r in _CERT_REASONS)


def _rc_int(rc: ReasonCode | int) -> int:
    return rc.value if isinstance(rc, ReasonCode) else int(rc)


@dataclass
class LinkCounters:
    """What the link did, for `edgeagent status` and the tests."""

    connects: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    published: int = 0
    acked: int = 0
    refused: int = 0
    received: int = 0
    callback_errors: int = 0
    outages: int = 0
    last_outage_s: float | None = None
    last_error: str = ""
    refusals: dict[int, int] = field(default_factory=dict)


class MqttLink:
    """One MQTT 5 connection with mutual TLS, persistent session and a status will.

    ``client_id`` is the MQTT client id; ``identity`` is the certificate CN the
    broker sees and the ``node/<identity>/status`` the link maintains (None: no
    status/will, e.g. for the aggregator).
    """

    def __init__(
        self,
        client_id: str,
        host: str,
        port: int,
        tls: TlsFiles,
        fleet: str,
        *,
        identity: str | None = None,
        status: bool = True,
        on_message: Callable[[Message], None] | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[int], None] | None = None,
        keepalive_s: int = KEEPALIVE_S,
        session_expiry_s: int = SESSION_EXPIRY_S,
        clean_start: bool = False,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        max_inflight: int = MAX_INFLIGHT,
        rng: random.Random | None = None,
    ) -> None:
        self.client_id = client_id
        self.host = host
        self.port = port
        self.tls = tls.check()
        self.fleet = fleet
        self.identity = identity if identity is not None else client_id
        self.status_topic = topics.status(fleet, self.identity) if status else None
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.keepalive_s = keepalive_s
        self.session_expiry_s = session_expiry_s
        self.clean_start = clean_start
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.counters = LinkCounters()
        self.session_present = False
        self.connected_since: float | None = None
        #: Monotonic time the broker became unreachable (None while connected and
        #: before the first attempt); an outage is logged once when it starts and
        #: once when it ends, with its length.
        self.down_since: float | None = None
        self._failures_in_outage = 0
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pending: dict[int, PendingAck] = {}
        self._early: dict[int, int] = {}  # acks that beat publish() back to us
        self._subs: dict[str, int] = {}
        #: True from the moment ``_on_connect`` took its snapshot of ``_subs`` until the link
        #: drops; read and written under ``_lock`` with ``_subs``, so a ``subscribe`` racing a
        #: connect is either in that snapshot or sent by ``subscribe`` itself.
        self._subs_live = False
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._close_by = 0.0
        self._tls_refused = threading.Event()
        self._sub_waiters: dict[str, list[PendingAck]] = {}
        self._thread: threading.Thread | None = None
        self._client = self._make_client(max_inflight)

    # -- set-up ---------------------------------------------------------------
    def _make_client(self, max_inflight: int) -> paho.Client:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # we reconnect ourselves, with jitter
        )
        # Our own thread runs loop(), so paho believes no loop thread exists and
        # publish() from any other thread would write to the TLS socket itself,
        # racing the loop (corrupt records: "bad record mac", broker drops us).
        # A registered write callback makes publish() only queue + wake the loop.
        c.on_socket_register_write = lambda _client, _userdata, _sock: None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.tls.ca))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        except (ssl.SSLError, OSError) as exc:
            raise TransportError("bad_tls_files", f"{self.tls}: {exc}") from exc
        c.tls_set_context(ctx)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)  # unbounded: the outbox bounds what we offer
        c.suppress_exceptions = True
        if self.status_topic is not None:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            c.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True,
                       properties=will_props)  # fmt: skip
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        return c

    def _status_payload(self, state: str) -> bytes:
        return json.dumps(
            {"id": self.identity, "state": state, "t": round(time.time(), 3)}
        ).encode()

    # -- lifecycle ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self, timeout: float = 10.0, *, wait: bool = True) -> MqttLink:
        """Start the network thread; with ``wait``, block until the first CONNACK.

        Raises :class:`TransportError` (``connect_failed``) if no successful
        CONNACK arrived in ``timeout`` (wrong CA, revoked certificate, no
        broker); the link is closed in that case. Without ``wait`` the link
        keeps retrying in the background, which is what the daemon wants.
        """
        if self._thread is not None:
            return self
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        self._client.connect_async(
            self.host,
            self.port,
            keepalive=self.keepalive_s,
            clean_start=self.clean_start,
            properties=props,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while wait and not self._connected.is_set() and time.monotonic() < deadline:
            # A certificate refusal will not heal by retrying: fail now, not at timeout.
            if self._tls_refused.is_set():
                break
            self._connected.wait(0.02)
        if wait and not self._connected.is_set():
            err = self.counters.last_error or "no CONNACK"
            self.close(timeout=1.0)
            raise TransportError(
                "connect_failed", f"{self.client_id} -> {self.host}:{self.port}: {err}"
            )
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _run(self) -> None:
        attempt = 0
        sock_open = False
        while True:
            if self._closing.is_set() and (not sock_open or time.monotonic() > self._close_by):
                break
            if not sock_open:
                try:
                    self._client.reconnect()
                    sock_open = True
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self._note_failure(exc)
                    self._closing.wait(self._delay(attempt))
                    attempt += 1
                    continue
            try:
                rc = self._client.loop(timeout=0.05)
            except (OSError, ssl.SSLError, ValueError) as exc:  # TLS alerts surface here
                self._note_failure(exc)
                rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._connected.is_set():
                    attempt = 0
                continue
            sock_open = False
            self._mark_down()
            if self._closing.is_set():
                break
            self._closing.wait(self._delay(attempt))
            attempt += 1

    def _delay(self, attempt: int) -> float:
        return backoff_delay(attempt, self.reconnect_min_s, self.reconnect_max_s, self._rng)

    def _note_failure(self, exc: BaseException) -> None:
        if isinstance(exc, ssl.SSLError) and _is_certificate_problem(exc):
            self._tls_refused.set()
        self.counters.connect_failures += 1
        self.counters.last_error = f"{type(exc).__name__}: {exc}"
        self._failures_in_outage += 1
        if self.down_since is None and not self._connected.is_set():
            # Unreachable from the first attempt: the outage starts now, said once.
            self.down_since = time.monotonic()
            self.counters.outages += 1
            log.warning(
                "mqtt %s: broker %s:%d unreachable (%s); retrying every %.1f s at most",
                self.client_id, self.host, self.port, self.counters.last_error,
                self.reconnect_max_s,
            )  # fmt: skip
        log.debug("mqtt %s: %s", self.client_id, self.counters.last_error)

    def _mark_down(self) -> None:
        if self._connected.is_set():
            self._connected.clear()
            now = time.monotonic()
            up_s = now - self.connected_since if self.connected_since is not None else 0.0
            self.connected_since = None
            self.down_since = now
            self._failures_in_outage = 0
            self.counters.outages += 1
            if not self._closing.is_set():
                log.warning(
                    "mqtt %s: lost the broker %s:%d after %.1f s connected (%s)",
                    self.client_id, self.host, self.port, up_s,
                    self.counters.last_error or "connection closed",
                )  # fmt: skip

    def down_for_s(self) -> float | None:
        """Seconds the broker has been unreachable, or None while connected."""
        since = self.down_since
        return None if since is None else round(time.monotonic() - since, 3)

    def close(self, timeout: float = 5.0) -> None:
        """Say ``offline`` (retained), disconnect cleanly, stop the thread.

        Pending acks resolve with :data:`RC_CLOSED`; their messages stay in the
        outbox and are offered again by the next link.
        """
        if self._thread is None:
            return
        if self._connected.is_set() and self.status_topic is not None:
            with contextlib.suppress(TransportError):
                self.publish(self.status_topic, self._status_payload("offline"), retain=True).wait(
                    min(timeout, 2.0)
                )
        # The network thread keeps looping until the DISCONNECT is written (or the
        # deadline passes) but no longer reconnects.
        self._close_by = time.monotonic() + timeout / 2
        self._closing.set()
        with contextlib.suppress(OSError, ValueError):
            self._client.disconnect()
        self._thread.join(timeout)
        self._thread = None
        self._connected.clear()
        with self._lock:
            self._subs_live = False
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            p._resolve(RC_CLOSED)

    def __enter__(self) -> MqttLink:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (network thread) --------------------------------------
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        code = _rc_int(rc)
        if code >= 0x80:
            self.counters.connect_failures += 1
            self.counters.last_error = f"CONNACK {code:#04x} {rc}"
            return
        self.counters.connects += 1
        self.session_present = bool(getattr(flags, "session_present", False))
        # Nagle + delayed ACK hold small QoS 1 packets ~40 ms per hop (measured: a
        # SecAgg+ stage 45 ms -> 7 ms with TCP_NODELAY here and set_tcp_nodelay on the broker).
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected_since = time.monotonic()
        if self.down_since is not None:
            self.counters.last_outage_s = round(self.connected_since - self.down_since, 3)
            log.info(
                "mqtt %s: broker %s:%d back after %.1f s unreachable (%d failed attempt(s))",
                self.client_id, self.host, self.port, self.counters.last_outage_s,
                self._failures_in_outage,
            )  # fmt: skip
        else:
            log.info("mqtt %s: connected to %s:%d", self.client_id, self.host, self.port)
        self.down_since = None
        self._failures_in_outage = 0
        # Re-subscribe every time: harmless when the session survived, vital when it did not.
        with self._lock:
            subs = list(self._subs.items())
            self._subs_live = True
        for topic_filter, qos in subs:
            _rc, mid = client.subscribe(topic_filter, qos=qos)
            if mid is None:
                continue
            ack = self._track(mid, topic_filter)
            with self._lock:
                waiters = self._sub_waiters.pop(topic_filter, [])
            for w in waiters:
                ack.add_done_callback(lambda a, w=w: w._resolve(a.reason_code or 0))
        if self.status_topic is not None:
            client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        self._connected.set()
        self._safe(self.on_connect, self.session_present)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if self._connected.is_set():
            self.counters.disconnects += 1
        with self._lock:
            self._subs_live = False
        self._mark_down()
        self._safe(self.on_disconnect, _rc_int(rc))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        self._resolve(mid, _rc_int(rc))

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self._resolve(mid, _rc_int(rcs[0]) if rcs else 0x80)

    def _resolve(self, mid: int, code: int) -> None:
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early[mid] = code
                if len(self._early) > 4096:  # acks for messages nobody tracks (status, close)
                    self._early.pop(next(iter(self._early)))
                return
        self._count(code)
        pending._resolve(code)

    def _count(self, code: int) -> None:
        if code >= 0x80:
            self.counters.refused += 1
            self.counters.refusals[code] = self.counters.refusals.get(code, 0) + 1
        else:
            self.counters.acked += 1

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.counters.received += 1
        up = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        m = Message(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            user_properties=tuple((str(k), str(v)) for k, v in (up or [])),
            expiry_s=getattr(msg.properties, "MessageExpiryInterval", None),
        )
        self._safe(self.on_message, m)

    def _safe(self, fn: Callable[[Any], None] | None, arg: Any) -> None:
        if fn is None:
            return
        try:
            fn(arg)
        except Exception:
            self.counters.callback_errors += 1
            log.exception("mqtt %s: user callback failed", self.client_id)

    # -- operations -----------------------------------------------------------
    def _track(self, mid: int, topic: str) -> PendingAck:
        pending = PendingAck(mid, topic)
        with self._lock:
            early = self._early.pop(mid, None)
            if early is None:
                self._pending[mid] = pending
        if early is not None:
            self._count(early)
            pending._resolve(early)
        return pending

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        expiry_s: float | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> PendingAck:
        """Offer one message; the returned :class:`PendingAck` resolves on PUBACK.

        Works while disconnected too (paho holds it and sends it after the
        reconnect), but the ack is the only proof of delivery. ``expiry_s``
        sets the MQTT 5 Message Expiry Interval (rounded up, at least 1 s).
        """
        if self._closing.is_set():
            raise TransportError("closed", f"link {self.client_id} is closed")
        if qos not in (0, 1):
            raise TransportError("bad_qos", "only QoS 0 and 1 are used by edgeagent")
        props = Properties(PacketTypes.PUBLISH)
        if expiry_s is not None:
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        if user_properties:
            props.UserProperty = list(user_properties)
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except ValueError as exc:  # wildcard in topic, payload too large, ...
            raise TransportError("bad_publish", f"{topic}: {exc}") from exc
        self.counters.published += 1
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError("publish_failed", f"{topic}: {paho.error_string(info.rc)}")
        pending = self._track(info.mid, topic)
        if qos == 0 and not pending.done():
            pending._resolve(RC_SUCCESS)
        return pending

    def subscribe(self, topic_filter: str, qos: int = 1) -> PendingAck:
        """Subscribe now (or at the next connect) and on every reconnect.

        The returned ack resolves with the SUBACK reason code (0x00/0x01 granted).
        """
        with self._lock:
            self._subs[topic_filter] = qos
            if not self._subs_live:
                # _on_connect sends it; this ack follows that SUBACK.
                p = PendingAck(-1, topic_filter)
                self._sub_waiters.setdefault(topic_filter, []).append(p)
                return p
        rc, mid = self._client.subscribe(topic_filter, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError("subscribe_failed", f"{topic_filter}: {paho.error_string(rc)}")
        return self._track(mid, topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving ``topic_filter`` now and after reconnects (no-op if not subscribed).

        Why a box needs it: it subscribes to the retained full model only while it
        lacks a base to rebuild the per-round parameter vector on, so the broker
        does not send it the whole file on every reconnect.
        """
        with self._lock:
            known = self._subs.pop(topic_filter, None) is not None
            self._sub_waiters.pop(topic_filter, None)
        if known and self._connected.is_set():
            rc, _mid = self._client.unsubscribe(topic_filter)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("mqtt %s: unsubscribe %s: %s", self.client_id, topic_filter,
                            paho.error_string(rc))  # fmt: skip

    def subscribed(self, topic_filter: str) -> bool:
        """True while ``topic_filter`` is among the link's subscriptions."""
        with self._lock:
            return topic_filter in self._subs

    def set_status(self, state: str) -> PendingAck:
        """Publish this box's retained status (``online``, ``degraded``, ...)."""
        if self.status_topic is None:
            raise TransportError("no_status", f"link {self.client_id} has no status topic")
        return self.publish(self.status_topic, self._status_payload(state), retain=True)


class OutboxForwarder:
    """Drain an :class:`~edgeagent.transport.outbox.Outbox` into an :class:`MqttLink`.

    Offers the highest-priority, oldest rows (alerts before updates before
    telemetry), at most ``window`` in flight. A row is deleted only on a
    successful PUBACK; a refusal of the message itself (bad topic, too big) is
    counted and dropped because resending cannot fix it; an authorisation
    refusal (0x87: the box's certificate or the ACL is wrong, not the data)
    keeps the row, holds the forwarder for ``AUTH_RETRY_S`` or until the next
    reconnect, and is reported in ``refusal`` until a publish on that topic
    succeeds; a transient code or a closed link leaves the row to be offered
    again. While the link is down nothing is offered, so rows queued during an
    outage go out in priority order after it. Rows still
    unacknowledged ``ack_timeout_s`` after a reconnect are offered again (the
    receiver dedupes on the ``msg-id`` user property).
    """

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        *,
        window: int = MAX_INFLIGHT,
        ack_timeout_s: float = 30.0,
        idle_wait_s: float = 0.2,
    ) -> None:
        self.outbox = outbox
        self.link = link
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.idle_wait_s = idle_wait_s
        self._inflight: dict[int, tuple[PendingAck, float]] = {}
        self._acked: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.rejected = 0
        self.reoffered = 0
        self.ack_failures = 0
        #: Rows the broker refused for authorisation and that were kept (counted per refusal).
        self.refused_kept = 0
        #: The last authorisation refusal while it lasts: code, topic, time, advice.
        self.refusal: dict[str, object] | None = None
        self._hold_until = 0.0
        self._hold_since_connect: float | None = None

    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    @property
    def running(self) -> bool:
        """True while the pump thread runs (the daemon's liveness reads this)."""
        return self._thread is not None and self._thread.is_alive()

    def flush_acks(self) -> int:
        """Delete the rows acknowledged since the last flush, in one transaction."""
        with self._lock:
            ids = list(self._acked)
        if not ids:
            return 0
        try:
            n = self.outbox.ack_many(ids)
        except OutboxError as exc:
            # Delivered but not yet deleted (a full disk): the ids stay acknowledged, so the
            # rows are not offered again, and the delete is retried on the next pump.
            self.ack_failures += 1
            if self.ack_failures == 1 or self.ack_failures % 100 == 0:
                log.error("outbox: %s; %d delivered row(s) kept until the delete succeeds "
                          "(%d failure(s))", exc, len(ids), self.ack_failures)  # fmt: skip
            return 0
        with self._lock:
            # Only now may they leave the exclusion set: the rows are gone.
            self._acked.difference_update(ids)
        self.delivered += n
        return n

    def pump_once(self) -> int:
        """Flush acks, then offer what the window allows; returns rows offered."""
        self.flush_acks()
        if not self.link.connected:
            return 0
        now = time.monotonic()
        since = self.link.connected_since or now
        if now < self._hold_until and self.link.connected_since == self._hold_since_connect:
            return 0  # held after an authorisation refusal (a reconnect lifts the hold)
        with self._lock:
            for row_id, (_ack, sent) in list(self._inflight.items()):
                if now - max(sent, since) > self.ack_timeout_s:
                    del self._inflight[row_id]
                    self.reoffered += 1
            free = self.window - len(self._inflight)
            exclude = set(self._inflight) | self._acked
        if free <= 0:
            return 0
        rows = self.outbox.peek(limit=free, exclude=exclude)
        for row in rows:
            self._offer(row)
        return len(rows)

    def _offer(self, row: OutboxRow) -> None:
        try:
            ack = self.link.publish(
                row.topic,
                row.payload,
                qos=1,
                retain=row.retain,
                expiry_s=self.outbox.remaining_ttl(row),
                user_properties=((MSG_ID_PROPERTY, row.msg_id),),
            )
        except TransportError as exc:
            if exc.reason == "closed":
                return
            # The message itself is unpublishable (bad topic/size): resending cannot help.
            self.outbox.reject(row.id, exc.reason)
            self.rejected += 1
            return
        with self._lock:
            self._inflight[row.id] = (ack, time.monotonic())
        ack.add_done_callback(lambda a, rid=row.id: self._done(rid, a))

    def _done(self, row_id: int, ack: PendingAck) -> None:
        # An acked row moves to the acked set (still excluded from peeks) and is
        # deleted in the next batch; a refused one is deleted now (rare). Either
        # way it leaves the in-flight set only after, so no pump re-sends it.
        code = ack.reason_code if ack.reason_code is not None else RC_CLOSED
        if ack.ok:
            with self._lock:
                self._acked.add(row_id)
            refusal = self.refusal
            if refusal is not None and refusal["topic"] == ack.topic:
                self.refusal = None  # the broker accepts this box again
        elif code in AUTH_REFUSAL_CODES:
            self._refused(code, ack.topic)
        elif not is_transient(code):
            log.warning("outbox row %s refused by broker: %#04x on %s", row_id, code, ack.topic)
            if self.outbox.reject(row_id, f"puback_{code:#04x}"):
                self.rejected += 1
        with self._lock:
            cur = self._inflight.get(row_id)
            if cur is not None and cur[0] is ack:
                del self._inflight[row_id]
        self._wake.set()

    def _refused(self, code: int, topic: str) -> None:
        self.refused_kept += 1
        first = self.refusal is None
        self.refusal = {
            "code": code,
            "topic": topic,
            "t": time.time(),
            "problem": f"the broker refuses this box's publishes ({code:#04x} not authorised "
            f"on {topic}); messages are kept until it accepts them",
            "fix": "check that agent.box_id equals the client certificate's CN "
            "(edgeagent doctor) and that the broker's ACL admits it",
        }
        self._hold_until = time.monotonic() + AUTH_RETRY_S
        self._hold_since_connect = self.link.connected_since
        if first:
            log.error("outbox: %s; %s", self.refusal["problem"], self.refusal["fix"])

    def _run(self) -> None:
        while not self._stop.is_set():
            offered = self.pump_once()
            if offered == 0:
                self._wake.clear()
                self.outbox.wait_for_put(self.idle_wait_s, also=self._wake)

    def start(self) -> OutboxForwarder:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="outbox-forwarder", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pumping and record the acks already received."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush_acks()

    def drain(self, timeout: float) -> bool:
        """Pump until the outbox is empty and nothing is in flight; True on success."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._thread is None:
                self.pump_once()
            else:
                self.flush_acks()
            if self.outbox.count() == 0 and self.in_flight() == 0:
                return True
            if self.refusal is not None and self.in_flight() == 0:
                return False  # held: the broker refuses this box, waiting cannot help
            if self._thread is None:
                self._wake.wait(0.02)  # woken by the next ack
                self._wake.clear()
            else:
                time.sleep(0.01)  # the pump thread owns the wake event
        return False
