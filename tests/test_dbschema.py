"""Schema versions: every store opens a file of the previous version and migrates it forward."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from edgeagent.dbschema import migrate, schema_version
from edgeagent.errors import EdgeAgentError, ModelError, OutboxError
from edgeagent.model import registry as registry_mod
from edgeagent.model.registry import ModelRegistry
from edgeagent.pipeline import alerts as alerts_mod
from edgeagent.pipeline.alerts import AlertStore
from edgeagent.transport import outbox as outbox_mod
from edgeagent.transport.outbox import Outbox
from tests.plugins.ops import REPO

MODEL = REPO / "models" / "baseline.onnx"


def test_migrate_steps_forward_and_refuses_newer_files(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    steps = ("CREATE TABLE t (a INTEGER);", "ALTER TABLE t ADD COLUMN b TEXT;")
    assert migrate(db, "x", steps[:1]) == 0 and schema_version(db) == 1
    db.execute("INSERT INTO t (a) VALUES (7)")
    assert migrate(db, "x", steps) == 1 and schema_version(db) == 2
    assert db.execute("SELECT a, b FROM t").fetchall() == [(7, None)]
    assert migrate(db, "x", steps) == 2  # idempotent at the target
    with pytest.raises(OutboxError, match="newer than this agent"):
        migrate(db, "x", steps[:1], OutboxError)
    with pytest.raises(EdgeAgentError):
        migrate(db, "x", ())


def test_registry_of_the_previous_version_migrates_and_keeps_its_models(
    tmp_state: Path,
) -> None:
    reg = ModelRegistry(tmp_state)
    rec = reg.activate(reg.add(MODEL.read_bytes(), "test").version, "test")
    # What an older release left: the v1 schema (no events index, no decision figures),
    # user_version 1.
    db = sqlite3.connect(tmp_state / registry_mod.DB_NAME, isolation_level=None)
    db.execute("DROP INDEX events_version")
    db.execute("ALTER TABLE events DROP COLUMN figures")
    db.execute("PRAGMA user_version=1")
    db.close()
    reg = ModelRegistry(tmp_state)
    db = sqlite3.connect(tmp_state / registry_mod.DB_NAME)
    assert schema_version(db) == len(registry_mod.MIGRATIONS) == 3
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    columns = {r[1] for r in db.execute("PRAGMA table_info(events)")}
    db.close()
    assert "events_version" in indexes and "figures" in columns
    assert reg.active() == rec and reg.load_bytes(rec) == MODEL.read_bytes()
    # and a file from a newer agent is refused, not guessed at
    db = sqlite3.connect(tmp_state / registry_mod.DB_NAME, isolation_level=None)
    db.execute("PRAGMA user_version=9")
    db.close()
    with pytest.raises(ModelError, match="v9, newer"):
        ModelRegistry(tmp_state)


def test_outbox_and_alert_store_from_before_versioning_come_forward(tmp_state: Path) -> None:
    # Version 0: the tables exist (a release before user_version was set), rows in them.
    for name, schema in ((outbox_mod.DB_NAME, outbox_mod._SCHEMA),
                         (alerts_mod.DB_NAME, alerts_mod._SCHEMA)):  # fmt: skip
        db = sqlite3.connect(tmp_state / name, isolation_level=None)
        db.executescript(schema)
        assert schema_version(db) == 0
        db.close()
    db = sqlite3.connect(tmp_state / outbox_mod.DB_NAME, isolation_level=None)
    db.execute("INSERT INTO messages (msg_id, kind, priority, topic, payload, created)"
               " VALUES ('m1', 'alert', 0, 't', x'00', ?)", (time.time(),))  # fmt: skip
    db.close()
    ob = Outbox.in_state_dir(tmp_state)
    assert ob.count() == 1 and ob.peek(1)[0].msg_id == "m1"
    ob.close()
    store = AlertStore(tmp_state)
    assert store.count() == 0
    store.close()
    for name, migrations in ((outbox_mod.DB_NAME, outbox_mod.MIGRATIONS),
                             (alerts_mod.DB_NAME, alerts_mod.MIGRATIONS)):  # fmt: skip
        db = sqlite3.connect(tmp_state / name)
        assert schema_version(db) == len(migrations)
        db.close()
