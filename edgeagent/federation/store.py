"""The aggregator's durable side: ``aggregator.json``, model files, the signed publication.

State (next round id, model versions, DP events and the privacy budget's
standing, round history, refusal counts, reputation scores) is one JSON file
written atomically after every state change, so a restart between rounds
continues where it stopped (epsilon spent included); a round
cut by a restart is recorded as ``interrupted`` and its id is never reused
(boxes refuse stale rounds). Global models are content-addressed files
(``models/<sha256>.onnx``), checked against their hash when loaded, and
published retained on ``model/current`` with an Ed25519 signature over that
hash, which is what every box verifies before taking a model; the same
release goes out on ``model/params`` as the parameter vector boxes rebuild
the file from (4 bytes per parameter instead of the whole file).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgeagent.atomic import write_atomic, write_json_atomic
from edgeagent.errors import ModelError, TransportError
from edgeagent.federation.accountant import SAMPLING, DpAccountant
from edgeagent.fl.identity import Identity
from edgeagent.fl.wire import ModelPublication, ParamsPublication, encode_model, encode_params
from edgeagent.model.graph import frame_sha256, get_params, parse_model, rebuild, sha256_hex
from edgeagent.model.signing import sign_hash, sign_release
from edgeagent.transport import topics
from edgeagent.transport.mqtt import MqttLink

log = logging.getLogger(__name__)

STATE_FILE = "aggregator.json"
MODELS_DIR = "models"
#: Round records kept in the state file (older ones are summarised in totals only).
HISTORY = 500
#: Seconds to wait for the broker's PUBACK of a published model.
PUBACK_S = 10.0


def read_state(state_dir: Path) -> dict[str, Any]:
    """The aggregator's persisted state (empty dict before the first start)."""
    p = Path(state_dir) / STATE_FILE
    try:
        return dict(json.loads(p.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"aggregator state {p} is unreadable: {exc}") from exc


def status_report(state_dir: Path) -> dict[str, Any]:
    """What ``edgeagent aggregator status`` shows, read from the state file alone."""
    s = read_state(state_dir)
    rounds = s.get("rounds", [])
    dropouts = sum(sum(len(v) for v in r.get("dropped", {}).values()) for r in rounds)
    return {
        "state_dir": str(state_dir),
        "next_round": s.get("next_round", 1),
        "model": s.get("model"),
        "totals": s.get("totals", {}),
        "dropouts": dropouts,
        "refused": s.get("refused", {}),
        "epsilon": rounds[-1].get("epsilon") if rounds else None,
        # how epsilon was composed: q = 1, no amplification by sampling (see docs/security.md)
        "dp_sampling": SAMPLING,
        # budget, spent, left and why a round was not started (the aggregator writes it)
        "dp": s.get("dp", {}),
        "in_progress": s.get("in_progress"),
        "reputation": s.get("reputation", {}),
        "rounds": rounds,
    }


class AggregatorStore:
    """``aggregator.json`` plus the content-addressed global models beside it.

    Loading restores the DP accountant from the recorded events and records a
    round a restart cut short; ``state`` is the plain dict that is saved, so
    what the status command reads is exactly what the service keeps.
    """

    def __init__(self, state_dir: Path, dp_delta: float) -> None:
        self.state_dir = Path(state_dir)
        self.state = read_state(self.state_dir)
        s = self.state
        s.setdefault("next_round", 1)
        s.setdefault("rounds", [])
        s.setdefault("dp_events", [])
        s.setdefault("totals", {"completed": 0, "aborted": 0, "interrupted": 0, "rejected": 0})
        s.setdefault("refused", {})
        s.setdefault("clear_announce", [])
        cut = s.pop("in_progress", None)
        if cut is not None:
            log.warning("round %s was interrupted by a restart; it will not resume", cut["round"])
            self.record(
                {
                    "round": cut["round"],
                    "status": "interrupted",
                    "participants": cut.get("participants", []),
                    "started": cut.get("started"),
                    "survivors": [],
                    "dropped": {},
                    "refused": {},
                }
            )
            s["clear_announce"].append(cut["round"])
        self.accountant = DpAccountant(dp_delta)
        for z, q in s["dp_events"]:
            self.accountant.step(z, q)
        model = s.get("model")
        self.model_bytes: bytes | None = None
        if model is not None:
            data = (self.state_dir / model["file"]).read_bytes()
            if sha256_hex(data) != model["sha256"]:
                raise ModelError(f"global model file {model['file']} does not match its hash")
            self.model_bytes = data
        self.save()

    # -- the state file ---------------------------------------------------------------------------

    def save(self) -> None:
        write_json_atomic(self.state_dir / STATE_FILE, self.state)

    def record(self, rec: dict[str, Any]) -> None:
        """Append a round record (bounded history) and count its status in the totals."""
        s = self.state
        s["rounds"].append(rec)
        del s["rounds"][:-HISTORY]
        s["totals"][rec["status"]] = s["totals"].get(rec["status"], 0) + 1

    def count_refused(self, reason: str, n: int = 1) -> None:
        self.state["refused"][reason] = self.state["refused"].get(reason, 0) + n

    def completed(self) -> int:
        return int(self.state["totals"].get("completed", 0))

    def reputation(self) -> dict[str, float]:
        """Each box's ``reputation`` score, kept across restarts (created on first use)."""
        book: dict[str, float] = self.state.setdefault("reputation", {})
        return book

    def begin_round(self, round_id: int, participants: list[str], started: float,
                    groups: list[list[str]] | None = None) -> None:  # fmt: skip
        """Reserve the round id and mark the round in progress (a restart records it cut)."""
        self.state["next_round"] = round_id + 1
        self.state["in_progress"] = {
            "round": round_id,
            "participants": participants,
            "started": started,
        }
        if groups is not None:
            self.state["in_progress"]["groups"] = groups
        self.save()

    def end_round(self, rec: dict[str, Any]) -> None:
        """Persist a finished round's record and add its refusals to the running totals."""
        self.state.pop("in_progress", None)
        self.record(rec)
        for reason, n in rec["refused"].items():
            self.count_refused(reason, n)
        self.save()

    # -- privacy ----------------------------------------------------------------------------------

    def account(self, noise_multiplier: float, q: float) -> None:
        """One released round: a Gaussian step at ``noise_multiplier`` and sampling rate ``q``
        (an unnoised release is counted instead, which voids any epsilon claim)."""
        if noise_multiplier > 0:
            self.accountant.step(noise_multiplier, q)
            self.state["dp_events"].append([noise_multiplier, q])
        else:
            self.state["unnoised_rounds"] = self.state.get("unnoised_rounds", 0) + 1

    def epsilon(self) -> float | None:
        """Privacy spent so far at ``dp_delta`` (None when rounds ran without noise)."""
        if self.state.get("unnoised_rounds"):
            return None
        return self.accountant.epsilon()

    # -- global models ----------------------------------------------------------------------------

    def current_eval(self) -> dict[str, Any]:
        return dict((self.state.get("model") or {}).get("eval") or {})

    def version(self) -> int:
        return int(self.state["model"]["version"])

    def store_model(self, data: bytes, version: int, round_id: int, ev: dict[str, Any]) -> None:
        """Write ``models/<sha256>.onnx`` and make it the current global model."""
        sha = sha256_hex(data)
        rel = f"{MODELS_DIR}/{sha}.onnx"
        write_atomic(self.state_dir / rel, data)
        self.state["model"] = {
            "version": version,
            "sha256": sha,
            "file": rel,
            "round": round_id,
            "eval": ev,
        }
        self.model_bytes = data

    def publication(self, identity: Identity, fleet: str) -> bytes:
        """The current global model signed with ``identity``, encoded for the wire.

        Two signatures: over the hash (what the box's model registry checks) and
        over fleet, version, round and hash (what the box's version order and
        round bookkeeping act on: a replayed model cannot be relabelled).
        """
        assert self.model_bytes is not None
        return encode_model(
            ModelPublication(onnx=self.model_bytes, **self._release(identity, fleet))
        )

    def _release(self, identity: Identity, fleet: str) -> dict[str, Any]:
        """The fields both publications carry: the current model's labels and signatures."""
        m = self.state["model"]
        version, round_id = int(m["version"]), int(m["round"])
        return {
            "round_id": round_id,
            "version": version,
            "sha256": m["sha256"],
            "signature": sign_hash(identity.key, m["sha256"]),
            "cert_der": identity.cert_der,
            "eval": dict(m.get("eval") or {}),
            "release_sig": sign_release(identity.key, fleet, version, round_id, m["sha256"]),
        }

    def params_publication(self, identity: Identity, fleet: str) -> bytes | None:
        """The current global model as its signed parameter vector, or None if not rebuildable.

        Same release and signatures as ``publication``; the vector is the float32
        parameters stored in the file and ``frame`` the hash of everything else.
        None when rebuilding from the vector does not give this file's exact bytes
        (a starting model serialised by another tool, say): boxes then take the file.
        """
        m = self.state["model"]
        assert self.model_bytes is not None
        model = parse_model(self.model_bytes)
        flat = get_params(model).astype("<f4")
        if sha256_hex(rebuild(model, flat)) != m["sha256"]:
            return None
        pub = ParamsPublication(
            frame=frame_sha256(model), params=flat.tobytes(), **self._release(identity, fleet)
        )
        return encode_params(pub)

    def publish(self, link: MqttLink, fleet: str, identity: Identity) -> int:
        """Sign the current global model; publish it retained on ``model/current`` (the file)
        and on ``model/params`` (the parameter vector boxes rebuild it from).

        The file goes first, so a box that falls back to it after seeing the vector
        finds the same version retained. Returns the bytes sent. A missing or
        refusing PUBACK is logged, not raised: the retained copies are re-published
        at the next start or model version. When the model cannot be rebuilt from
        its vector, ``model/params`` is cleared instead, so no box waits on an old one.
        """
        m = self.state["model"]
        sent = 0
        params = self.params_publication(identity, fleet)
        for topic, data in (
            (topics.model_current(fleet), self.publication(identity, fleet)),
            (topics.model_params(fleet), params if params is not None else b""),
        ):
            sent += len(data)
            ack = link.publish(topic, data, retain=True)
            try:
                code = ack.wait(PUBACK_S)
            except TransportError as exc:
                log.error("model v%s: no PUBACK for %s: %s", m["version"], topic, exc)
                continue
            if code >= 0x80:
                log.error("model v%s refused by the broker on %s: %#04x", m["version"], topic,
                          code)  # fmt: skip
        log.info("published global model v%s (%s)", m["version"], m["sha256"][:12])
        return sent
