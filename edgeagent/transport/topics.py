"""MQTT topic names: pure builders and one parser (DESIGN.md §4).

Every topic lives under ``edgeagent/v1/<fleet>/``. Building and parsing in one
place keeps the ACL file (``edgeagent/data/mosquitto.acl``), the agent and the
aggregator agreeing on the layout; the version level lets a fleet run two
protocol versions side by side during an upgrade.

Layout::

    round/<r>/announce          aggregator -> boxes, retained
    round/<r>/<stage>[/<node>]  aggregator -> boxes (SecAgg stages, routed shares)
    node/<id>/update            box -> aggregator (masked model update)
    node/<id>/alert             box -> aggregator / clinicians
    node/<id>/status            box, retained, also the last will
    node/<id>/feedback          ward system -> box: a signed verdict on one of its alerts
    node/<id>/feedback_result   box -> ward system: accepted, or refused and why
    node/<id>/<other>           box -> aggregator (e.g. SecAgg stage replies)
    model/current               aggregator, retained: the signed global model (ONNX)
    model/params                aggregator, retained: its parameter vector, signed by hash
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeagent.errors import TransportError

ROOT = "edgeagent"
VERSION = "v1"

# One topic level: no separators or wildcards, no leading '$' (broker-reserved).
_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

NODE_KINDS = ("update", "alert", "status")


def _level(value: str | int, what: str) -> str:
    s = str(value)
    if not _LEVEL_RE.match(s):
        raise TransportError("bad_topic_level", f"{what} {s!r} cannot be an MQTT topic level")
    return s


def prefix(fleet: str) -> str:
    """``edgeagent/v1/<fleet>``."""
    return f"{ROOT}/{VERSION}/{_level(fleet, 'fleet')}"


def node(fleet: str, node_id: str, kind: str) -> str:
    """``.../node/<id>/<kind>``: what a box may publish (the ACL allows only its own id)."""
    return f"{prefix(fleet)}/node/{_level(node_id, 'node id')}/{_level(kind, 'kind')}"


def update(fleet: str, node_id: str) -> str:
    return node(fleet, node_id, "update")


def alert(fleet: str, node_id: str) -> str:
    return node(fleet, node_id, "alert")


def status(fleet: str, node_id: str) -> str:
    return node(fleet, node_id, "status")


def feedback(fleet: str, node_id: str) -> str:
    """Where the ward system sends verdicts on box ``node_id``'s alerts (the box reads it)."""
    return node(fleet, node_id, "feedback")


def feedback_result(fleet: str, node_id: str) -> str:
    """Where box ``node_id`` says what became of each ward message (the ward reads it)."""
    return node(fleet, node_id, "feedback_result")


def round_topic(fleet: str, round_id: int, stage: str, to_node: str | None = None) -> str:
    """``.../round/<r>/<stage>[/<node>]`` (``stage="announce"`` for the announcement)."""
    if not isinstance(round_id, int) or round_id < 0:
        raise TransportError("bad_topic_level", f"round id must be an int >= 0, got {round_id!r}")
    t = f"{prefix(fleet)}/round/{round_id}/{_level(stage, 'stage')}"
    return t if to_node is None else f"{t}/{_level(to_node, 'node id')}"


def announce(fleet: str, round_id: int) -> str:
    return round_topic(fleet, round_id, "announce")


def model_current(fleet: str) -> str:
    return f"{prefix(fleet)}/model/current"


def model_params(fleet: str) -> str:
    """The global model's retained parameter vector (``fl.wire.ParamsPublication``)."""
    return f"{prefix(fleet)}/model/params"


def node_filter(fleet: str, kind: str = "+") -> str:
    """Subscription filter for one kind from all boxes, e.g. ``.../node/+/update``."""
    return f"{prefix(fleet)}/node/+/{kind if kind in ('+', '#') else _level(kind, 'kind')}"


def round_filter(fleet: str) -> str:
    return f"{prefix(fleet)}/round/#"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic. ``area`` is ``node``, ``round`` or ``model``."""

    fleet: str
    area: str
    node_id: str | None = None
    kind: str | None = None
    round_id: int | None = None
    stage: str | None = None
    to_node: str | None = None


def parse(topic: str) -> Topic:
    """Parse a concrete topic; raises :class:`TransportError` (``bad_topic``) for anything else.

    Receivers use this instead of splitting strings, so a malformed or foreign
    topic is a counted rejection rather than an IndexError.
    """
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or parts[1] != VERSION:
        raise TransportError("bad_topic", f"{topic!r} is not under {ROOT}/{VERSION}/<fleet>/")
    try:
        fleet = _level(parts[2], "fleet")
        area, rest = parts[3], parts[4:]
        if area == "node" and len(rest) == 2:
            node_id, kind = _level(rest[0], "node id"), _level(rest[1], "kind")
            return Topic(fleet, "node", node_id=node_id, kind=kind)
        if area == "model" and rest in (["current"], ["params"]):
            return Topic(fleet, "model", kind=rest[0])
        if (
            area == "round"
            and len(rest) in (2, 3)
            and rest[0].isascii()
            and rest[0].isdigit()
            and len(rest[0]) <= 18  # a 63-bit round id; longer is not one (and int() would choke)
        ):
            return Topic(
                fleet,
                "round",
                round_id=int(rest[0]),
                stage=_level(rest[1], "stage"),
                to_node=_level(rest[2], "node id") if len(rest) == 3 else None,
            )
    except TransportError as exc:
        raise TransportError("bad_topic", f"{topic!r}: {exc.detail}") from exc
    raise TransportError("bad_topic", f"{topic!r} does not match the topic layout")
