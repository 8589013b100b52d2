"""Versioned model store in the state directory: files by hash, history in SQLite.

Why this way: a box must survive power loss in the middle of a model update
and must be able to say, afterwards, which model made which alert. Model
files are content-addressed (``models/<sha256>.onnx``) and written with
write -> fsync -> rename, so a file either exists whole or not at all; the
"active" model is the last row of an append-only activation log, so an
activation is one SQLite transaction and every swap and rollback leaves a
record. Hashes are re-checked on every load, so a file changed on disk is
refused (and the previous model stays active). Lifecycle decisions (a
candidate promoted from shadow, rejected, rolled back) carry the figures that
decided them as JSON beside the event, so ``edgeagent model list`` can say
why each model runs or does not.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeagent.atomic import write_atomic
from edgeagent.dbschema import migrate, schema_version
from edgeagent.errors import ModelError
from edgeagent.model.meta import ModelMeta, sha256_hex
from edgeagent.model.signing import public_key_raw, verify_hash

DB_NAME = "models.sqlite"
DIR_NAME = "models"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version   INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256    TEXT NOT NULL UNIQUE,
    file      TEXT NOT NULL,
    created   REAL NOT NULL,
    source    TEXT NOT NULL,
    signature BLOB,
    signer    BLOB,
    rejected  INTEGER NOT NULL DEFAULT 0,
    info      TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS activations (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL REFERENCES models(version),
    ts      REAL NOT NULL,
    reason  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      REAL NOT NULL,
    kind    TEXT NOT NULL,
    version INTEGER,
    detail  TEXT NOT NULL
);
"""
#: v1: the tables above; v2: events found by model version (``model show``);
#: v3: the figures behind a lifecycle decision (JSON, NULL for other events).
MIGRATIONS = (
    _SCHEMA,
    "CREATE INDEX IF NOT EXISTS events_version ON events (version, id);",
    "ALTER TABLE events ADD COLUMN figures TEXT;",
)
#: Event kinds that are lifecycle decisions (shown by ``model list``).
DECISIONS = ("promoted", "rejected", "rolled_back", "superseded")


def check_model(
    data: bytes, feature_names: tuple[str, ...] | None = None
) -> tuple[ModelMeta, np.ndarray]:
    """``(meta, flat parameters)`` of a model the box can run, or ``ModelError`` saying why not.

    The fields are read with the registry's own protobuf reader (``model.wire``) and the
    graph is judged by onnxruntime, the runtime that will run it, rather than by the
    ``onnx`` package's checker: a box scores with onnxruntime and trains on the flat vector,
    and ``onnx`` would add about 14 MB to every start that checks its model
    (docs/scale.md, "Memory").
    """
    import onnxruntime as ort

    from edgeagent.model.wire import inspect_model

    meta, params = inspect_model(data, feature_names)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ModelError(f"onnxruntime cannot load the model: {str(e).splitlines()[0]}") from e
    return meta, params


@dataclass(frozen=True)
class ModelRecord:
    """One registered model. ``label`` (e.g. ``v3-1a2b3c4d``) is what alerts carry."""

    version: int
    sha256: str
    file: Path
    created: float
    source: str
    signature: bytes | None
    signer: bytes | None
    rejected: bool
    info: dict[str, Any]

    @property
    def label(self) -> str:
        return f"v{self.version}-{self.sha256[:8]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "label": self.label,
            "sha256": self.sha256,
            "file": str(self.file),
            "created": self.created,
            "source": self.source,
            "signed": self.signature is not None,
            "signer": self.signer.hex() if self.signer else None,
            "rejected": self.rejected,
            "info": self.info,
        }


class ModelRegistry:
    """The box's model history. Safe to open from several threads/processes (SQLite WAL)."""

    def __init__(
        self,
        state_dir: Path,
        trusted_keys: list[Ed25519PublicKey] | None = None,
        require_signature: bool = False,
        *,
        readonly: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / DIR_NAME
        self.trusted_keys = list(trusted_keys or [])
        self.require_signature = require_signature
        self.db_path = self.state_dir / DB_NAME
        #: Read-only (``model list/show/verify``, doctor): creates, changes and records nothing.
        self.readonly = readonly
        if readonly:
            if not self.db_path.is_file():
                raise ModelError(f"no model registry in {self.state_dir} (no {DB_NAME})")
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            migrate(db, self.db_path, MIGRATIONS, ModelError)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            # No -wal beside it: fully checkpointed, read as is without creating the index.
            live = self.db_path.with_name(self.db_path.name + "-wal").exists()
            flags = "mode=ro" if live else "mode=ro&immutable=1"
            db = sqlite3.connect(f"file:{self.db_path}?{flags}", uri=True, timeout=10.0)
        else:
            db = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None)
        try:
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @staticmethod
    def _row(r: tuple[Any, ...]) -> ModelRecord:
        return ModelRecord(
            version=int(r[0]),
            sha256=r[1],
            file=Path(r[2]),
            created=float(r[3]),
            source=r[4],
            signature=bytes(r[5]) if r[5] is not None else None,
            signer=bytes(r[6]) if r[6] is not None else None,
            rejected=bool(r[7]),
            info=json.loads(r[8]),
        )

    _COLS = "version, sha256, file, created, source, signature, signer, rejected, info"

    def add(
        self,
        data: bytes,
        source: str,
        signature: bytes | None = None,
        feature_names: tuple[str, ...] | None = None,
    ) -> ModelRecord:
        """Validate, verify and store a model; returns the existing record for known bytes.

        Raises ``ModelError`` (and stores nothing) when the bytes do not parse or
        fit, the signature does not verify, or a signature is required and absent.
        """
        meta, params = check_model(data, feature_names)
        digest = sha256_hex(data)
        signer = None
        if signature is not None:
            idx = verify_hash(self.trusted_keys, digest, signature)
            signer = public_key_raw(self.trusted_keys[idx])
        elif self.require_signature:
            raise ModelError(f"model {digest[:12]} is unsigned and this box requires signatures")
        existing = self.find(digest)
        if existing is not None:
            if not self._intact(existing):  # the same bytes again: mend the damaged file
                write_atomic(existing.file, data)
                self.record_event("repaired", existing.version, f"source={source}")
            return existing
        path = self.dir / f"{digest}.onnx"
        write_atomic(path, data)
        # The flat vector beside the model lets the learner start without importing onnx.
        buf = io.BytesIO()
        np.save(buf, params, allow_pickle=False)
        write_atomic(path.with_suffix(".params.npy"), buf.getvalue())
        info = dict(meta.info)
        info["params_sha256"] = sha256_hex(buf.getvalue())
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO models (sha256, file, created, source, signature, signer, info)"
                " VALUES (?,?,?,?,?,?,?)",
                (digest, str(path), time.time(), source, signature, signer, json.dumps(info)),
            )
            version = int(cur.lastrowid or 0)
        self.record_event("added", version, f"source={source} signed={signature is not None}")
        return self.get(version)

    @staticmethod
    def _intact(rec: ModelRecord) -> bool:
        try:
            return sha256_hex(rec.file.read_bytes()) == rec.sha256
        except OSError:
            return False

    def last_good(self, exclude: int | None = None) -> ModelRecord | None:
        """The most recently active model, other than ``exclude``, whose file is intact
        and that was never rejected (the daemon's fallback when the active one is not)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT a.version FROM activations a JOIN models m ON m.version=a.version"
                " WHERE m.rejected = 0 ORDER BY a.id DESC"
            ).fetchall()
        seen: set[int] = set()
        for (version,) in rows:
            if version == exclude or version in seen:
                continue
            seen.add(version)
            rec = self.get(int(version))
            if self._intact(rec):
                return rec
        return None

    def find(self, sha: str) -> ModelRecord | None:
        with self._db() as db:
            r = db.execute(f"SELECT {self._COLS} FROM models WHERE sha256=?", (sha,)).fetchone()
        return self._row(r) if r else None

    def list(self) -> list[ModelRecord]:
        """Every model, oldest first."""
        with self._db() as db:
            rows = db.execute(f"SELECT {self._COLS} FROM models ORDER BY version").fetchall()
        return [self._row(r) for r in rows]

    def get(self, ref: str | int) -> ModelRecord:
        """By version number, label (``v3-...``), ``active`` or a unique hash prefix."""
        if isinstance(ref, str) and ref == "active":
            rec = self.active()
            if rec is None:
                raise ModelError("no model is active yet; run `edgeagent model activate`")
            return rec
        with self._db() as db:
            if isinstance(ref, int) or str(ref).isdigit():
                rows = db.execute(
                    f"SELECT {self._COLS} FROM models WHERE version=?", (int(ref),)
                ).fetchall()
            else:
                s = str(ref)
                if s.startswith("v") and "-" in s:
                    s = s.split("-", 1)[1]
                rows = db.execute(
                    f"SELECT {self._COLS} FROM models WHERE sha256 LIKE ?", (s.lower() + "%",)
                ).fetchall()
        if len(rows) != 1:
            what = "no model" if not rows else f"{len(rows)} models"
            raise ModelError(f"{what} match {ref!r}; see `edgeagent model list`")
        return self._row(rows[0])

    def load_bytes(self, ref: str | int | ModelRecord) -> bytes:
        """The model's bytes, refused if the file is missing or no longer matches its hash."""
        rec = ref if isinstance(ref, ModelRecord) else self.get(ref)
        try:
            data = rec.file.read_bytes()
        except OSError as e:
            raise ModelError(f"model {rec.label}: cannot read {rec.file}: {e}") from e
        if sha256_hex(data) != rec.sha256:
            self.record_event("tampered", rec.version, f"hash mismatch on {rec.file}")
            raise ModelError(f"model {rec.label}: file {rec.file} does not match its hash")
        return data

    def load_params(self, ref: str | int | ModelRecord) -> np.ndarray:
        """The model's flat parameter vector (hash-checked), for the local learner."""
        rec = ref if isinstance(ref, ModelRecord) else self.get(ref)
        p = rec.file.with_suffix(".params.npy")
        try:
            raw = p.read_bytes()
        except OSError:
            raw = b""
        if not raw or sha256_hex(raw) != rec.info.get("params_sha256"):
            from edgeagent.model.wire import inspect_model

            return inspect_model(self.load_bytes(rec))[1]
        return np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32)

    def verify(self, ref: str | int) -> dict[str, Any]:
        """Re-check hash, parse and signature of a stored model; never raises for bad models."""
        rec = self.get(ref)
        out: dict[str, Any] = {"label": rec.label, "sha256": rec.sha256}
        try:
            data = self.load_bytes(rec)
            out["hash_ok"] = True
        except ModelError as e:
            return {**out, "hash_ok": False, "ok": False, "error": str(e)}
        try:
            check_model(data)
            out["parse_ok"] = True
        except ModelError as e:
            return {**out, "parse_ok": False, "ok": False, "error": str(e)}
        if rec.signature is None:
            out["signature"] = "none"
            out["ok"] = not self.require_signature
        else:
            try:
                verify_hash(self.trusted_keys, rec.sha256, rec.signature)
                out["signature"] = "valid"
                out["ok"] = True
            except ModelError as e:
                out["signature"] = "invalid"
                out["ok"] = False
                out["error"] = str(e)
        return out

    def active(self) -> ModelRecord | None:
        with self._db() as db:
            r = db.execute("SELECT version FROM activations ORDER BY id DESC LIMIT 1").fetchone()
        return self.get(int(r[0])) if r else None

    def activate(
        self,
        ref: str | int,
        reason: str = "manual",
        figures: dict[str, Any] | None = None,
        *,
        event: str = "activated",
    ) -> ModelRecord:
        """Make a model active (one transaction); hash re-checked first.

        ``event`` names the event recorded ("promoted" for a candidate judged in
        shadow), ``figures`` what decided it."""
        rec = self.get(ref)
        self.load_bytes(rec)  # hash check before it can become active
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE models SET rejected=0 WHERE version=?", (rec.version,))
            db.execute(
                "INSERT INTO activations (version, ts, reason) VALUES (?,?,?)",
                (rec.version, time.time(), reason),
            )
            db.execute(
                "INSERT INTO events (ts, kind, version, detail, figures) VALUES (?,?,?,?,?)",
                (time.time(), event, rec.version, reason, _json(figures)),
            )
            db.execute("COMMIT")
        return self.get(rec.version)

    def reject(self, ref: str | int, reason: str, figures: dict[str, Any] | None = None) -> None:
        """Mark a model that never ran as rejected (a candidate judged worse in shadow)."""
        rec = self.get(ref)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE models SET rejected=1 WHERE version=?", (rec.version,))
            db.execute(
                "INSERT INTO events (ts, kind, version, detail, figures) VALUES (?,?,?,?,?)",
                (time.time(), "rejected", rec.version, reason, _json(figures)),
            )
            db.execute("COMMIT")

    def pending_shadow(self) -> ModelRecord | None:
        """The model last put in shadow with no decision since (a restart interrupted it)."""
        ends = ("promoted", "rejected", "superseded", "activated")
        marks = ",".join("?" * len(ends))
        with self._db() as db:
            r = db.execute(
                "SELECT e.version FROM events e JOIN models m ON m.version=e.version"
                " WHERE e.kind='shadow' AND m.rejected=0 AND NOT EXISTS (SELECT 1 FROM events f"
                f" WHERE f.version=e.version AND f.id>e.id AND f.kind IN ({marks}))"
                " ORDER BY e.id DESC LIMIT 1",
                ends,
            ).fetchone()
        return self.get(int(r[0])) if r else None

    def rollback(
        self, reason: str = "manual", figures: dict[str, Any] | None = None
    ) -> ModelRecord:
        """Mark the active model rejected and re-activate the last good one before it."""
        cur = self.active()
        if cur is None:
            raise ModelError("nothing to roll back: no model is active")
        with self._db() as db:
            rows = db.execute(
                "SELECT a.version FROM activations a JOIN models m ON m.version=a.version"
                " WHERE a.version != ? AND m.rejected = 0 ORDER BY a.id DESC",
                (cur.version,),
            ).fetchall()
        if not rows:
            raise ModelError(f"cannot roll back {cur.label}: no earlier model was ever active")
        prev = int(rows[0][0])
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE models SET rejected=1 WHERE version=?", (cur.version,))
            db.execute(
                "INSERT INTO activations (version, ts, reason) VALUES (?,?,?)",
                (prev, time.time(), f"rollback from v{cur.version}: {reason}"),
            )
            db.execute(
                "INSERT INTO events (ts, kind, version, detail, figures) VALUES (?,?,?,?,?)",
                (time.time(), "rolled_back", cur.version, f"to v{prev}: {reason}", _json(figures)),
            )
            db.execute("COMMIT")
        return self.get(prev)

    def record_event(
        self, kind: str, version: int | None, detail: str, figures: dict[str, Any] | None = None
    ) -> None:
        if self.readonly:
            return
        with self._db() as db:
            db.execute(
                "INSERT INTO events (ts, kind, version, detail, figures) VALUES (?,?,?,?,?)",
                (time.time(), kind, version, detail, _json(figures)),
            )

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent lifecycle events first (added, activated, rolled_back, tampered...)."""
        with self._db() as db:
            rows = db.execute(
                f"SELECT ts, kind, version, detail, {_figures(db)} FROM events"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_event(r) for r in rows]

    def decisions(self) -> dict[int, list[dict[str, Any]]]:
        """Per model version, its lifecycle decisions (``DECISIONS``) oldest first, each with
        the figures that decided it (None where an operator decided)."""
        marks = ",".join("?" * len(DECISIONS))
        with self._db() as db:
            rows = db.execute(
                f"SELECT ts, kind, version, detail, {_figures(db)} FROM events"
                f" WHERE kind IN ({marks}) AND version IS NOT NULL ORDER BY id",
                DECISIONS,
            ).fetchall()
        out: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(int(r[2]), []).append(_event(r))
        return out


def _figures(db: sqlite3.Connection) -> str:
    """The figures column, or NULL in a file of an earlier schema opened read-only
    (``model list`` on a copied state directory migrates nothing)."""
    return "figures" if schema_version(db) >= 3 else "NULL"


def _json(figures: dict[str, Any] | None) -> str | None:
    """Figures as strict JSON: a figure that could not be computed (NaN) is stored as null."""
    if figures is None:
        return None

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not np.isfinite(v):
            return None
        return v

    return json.dumps(clean(figures), sort_keys=True, allow_nan=False)


def _event(r: tuple[Any, ...]) -> dict[str, Any]:
    figures = json.loads(r[4]) if r[4] else None
    return {"ts": r[0], "kind": r[1], "version": r[2], "detail": r[3], "figures": figures}
