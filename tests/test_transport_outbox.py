"""SQLite outbox: ordering, bounds, counters, durability under kill -9, and the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.errors import OutboxError
from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.outbox import DB_NAME, Outbox, OutboxLimits
from edgelab.broker import Broker
from tests.plugins.mqtt import TEST_FLEET as FLEET


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _open(
    tmp_state: Path, limits: OutboxLimits | None = None, clock: Clock | None = None
) -> Outbox:
    return Outbox(tmp_state / DB_NAME, limits, clock=clock or Clock())


def test_peek_orders_by_priority_then_age(tmp_state: Path) -> None:
    ob = _open(tmp_state)
    ob.put("t/tel", b"1", "telemetry", msg_id="t1")
    ob.put("t/upd", b"2", "update", msg_id="u1")
    ob.put("t/al", b"3", "alert", msg_id="a1")
    ob.put("t/upd", b"4", "update", msg_id="u2")
    ob.put("t/al", b"5", "alert", msg_id="a2")
    assert [r.msg_id for r in ob.peek(10)] == ["a1", "a2", "u1", "u2", "t1"]
    first = ob.peek(2)
    assert [r.msg_id for r in ob.peek(10, exclude=[r.id for r in first])] == ["u1", "u2", "t1"]
    assert ob.peek(1)[0].attempts == 3  # each peek that returned a1 counted as an offer


def test_ack_deletes_once_and_counts(tmp_state: Path) -> None:
    ob = _open(tmp_state)
    ob.put("t", b"abc", "alert")
    (row,) = ob.peek()
    assert ob.ack(row.id) is True
    assert ob.ack(row.id) is False
    assert ob.count() == 0
    assert ob.counters() == {"delivered.alert": 1, "stored.alert": 1}
    assert ob.stats()["bytes"] == 0


def test_row_bound_drops_lowest_priority_oldest_first(tmp_state: Path) -> None:
    ob = _open(tmp_state, OutboxLimits(max_rows=3))
    ob.put("t", b"a", "alert", msg_id="a1")
    ob.put("t", b"t", "telemetry", msg_id="t1")
    ob.put("t", b"t", "telemetry", msg_id="t2")
    ob.put("t", b"u", "update", msg_id="u1")  # evicts t1 (lowest priority, oldest)
    assert [r.msg_id for r in ob.peek(10)] == ["a1", "u1", "t2"]
    ob.put("t", b"a", "alert", msg_id="a2")  # evicts t2
    ob.put("t", b"a", "alert", msg_id="a3")  # evicts u1
    assert [r.msg_id for r in ob.peek(10)] == ["a1", "a2", "a3"]
    c = ob.counters()
    assert c["dropped_rows.telemetry"] == 2 and c["dropped_rows.update"] == 1


def test_put_that_cannot_fit_under_higher_priorities_is_refused(tmp_state: Path) -> None:
    ob = _open(tmp_state, OutboxLimits(max_rows=2))
    ob.put("t", b"a", "alert")
    ob.put("t", b"a", "alert")
    with pytest.raises(OutboxError, match="outbox full"):
        ob.put("t", b"t", "telemetry")
    assert ob.count() == 2
    assert ob.counters()["dropped_rows.telemetry"] == 1


def test_byte_bound(tmp_state: Path) -> None:
    ob = _open(tmp_state, OutboxLimits(max_bytes=100))
    for i in range(5):
        ob.put("t", b"x" * 30, "telemetry", msg_id=f"t{i}")
    assert [r.msg_id for r in ob.peek(10)] == ["t2", "t3", "t4"]
    assert ob.stats()["bytes"] == 90
    assert ob.counters()["dropped_bytes.telemetry"] == 2
    with pytest.raises(OutboxError, match="exceeds"):
        ob.put("t", b"x" * 101, "alert")


def test_age_bound_and_remaining_ttl(tmp_state: Path) -> None:
    clock = Clock()
    ob = _open(tmp_state, OutboxLimits(max_age_s=100.0), clock)
    ob.put("t", b"old", "update", msg_id="old")
    clock.t += 60
    ob.put("t", b"new", "alert", msg_id="new")
    rows = {r.msg_id: r for r in ob.peek(10)}
    assert ob.remaining_ttl(rows["old"]) == pytest.approx(40.0)
    assert ob.remaining_ttl(rows["new"]) == pytest.approx(100.0)
    clock.t += 50
    assert [r.msg_id for r in ob.peek(10)] == ["new"]
    assert ob.counters()["dropped_age.update"] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "gossip"}, "unknown message kind"),
        ({"payload": "text"}, "must be bytes"),
    ],
)
def test_bad_puts_are_refused_clearly(tmp_state: Path, kwargs: dict, match: str) -> None:
    ob = _open(tmp_state)
    args = {"topic": "t", "payload": b"x", "kind": "alert", **kwargs}
    with pytest.raises(OutboxError, match=match):
        ob.put(args.pop("topic"), args.pop("payload"), args.pop("kind"))
    assert ob.count() == 0


def test_duplicate_msg_id_rolls_back_the_whole_batch(tmp_state: Path) -> None:
    ob = _open(tmp_state)
    ob.put("t", b"x", "alert", msg_id="same")
    with pytest.raises(OutboxError, match="duplicate"):
        ob.put_many([("t", b"y", "alert", "other", False), ("t", b"z", "alert", "same", False)])
    assert [r.msg_id for r in ob.peek(10)] == ["same"]


def test_state_survives_reopen_and_purge_is_counted(tmp_state: Path) -> None:
    ob = _open(tmp_state)
    ob.put("t", b"1", "telemetry")
    ob.put("t", b"2", "update")
    ob.put("t", b"3", "telemetry", retain=True)
    ob.close()
    ob = _open(tmp_state)
    assert ob.count() == 3
    assert ob.peek(10)[-1].retain is True
    assert ob.purge(kind="telemetry") == 2
    assert ob.purge() == 1
    assert ob.counters()["purged.telemetry"] == 2
    assert ob.integrity_check() == "ok"
    with pytest.raises(OutboxError):
        ob.purge(kind="nope")


def test_newer_schema_and_garbage_files_are_refused(tmp_state: Path) -> None:
    p = tmp_state / DB_NAME
    db = sqlite3.connect(p)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(p)
    garbage = tmp_state / "garbage.sqlite3"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(garbage)


def test_limits_must_be_positive() -> None:
    with pytest.raises(OutboxError):
        OutboxLimits(max_rows=0)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["put", "ack", "purge"]),
            st.sampled_from(["alert", "update", "status", "telemetry"]),
            st.integers(0, 40),
        ),
        max_size=40,
    )
)
def test_totals_always_match_the_rows(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    """Trigger-maintained totals equal a fresh count after any op sequence within bounds."""
    ob = Outbox(tmp_path_factory.mktemp("ob") / DB_NAME, OutboxLimits(max_rows=10, max_bytes=200))
    for op, kind, n in ops:
        if op == "put":
            with contextlib.suppress(OutboxError):
                ob.put("t", b"x" * n, kind)
        elif op == "ack":
            rows = ob.peek(1)
            if rows:
                ob.ack(rows[0].id)
        else:
            ob.purge(kind=kind)
        stats = ob.stats()
        rows = ob.peek(1000)
        assert stats["rows"] == len(rows) <= 10
        assert stats["bytes"] == sum(len(r.payload) for r in rows) <= 200
    ob.close()


# --------------------------------------------------------------------------- kill -9

_WRITER = r"""
import os, random, sys
from edgeagent.transport.outbox import Outbox
ob = Outbox(sys.argv[1])
rnd = random.Random(int(sys.argv[2]))
out = sys.stdout
n = 0
print("ready", flush=True)
while True:
    k = rnd.choice(["alert", "update", "telemetry"])
    if rnd.random() < 0.3:
        batch = [(f"t/{k}", os.urandom(rnd.randint(10, 4000)), k, f"{sys.argv[2]}-{n + i}", False)
                 for i in range(rnd.randint(2, 20))]
        ids = ob.put_many(batch)
        n += len(batch)
    else:
        ids = [ob.put(f"t/{k}", os.urandom(rnd.randint(10, 4000)), k, msg_id=f"{sys.argv[2]}-{n}")]
        n += 1
    out.write("".join(f"S {i}\n" for i in ids))
    out.flush()
    if rnd.random() < 0.2:
        rows = ob.peek(3)
        for r in rows:
            out.write(f"D {r.msg_id}\n")   # announced before the delete may commit
        out.flush()
        for r in rows:
            ob.ack(r.id)
"""


def test_kill_9_during_heavy_writes_loses_nothing_stored(tmp_state: Path) -> None:
    """20 writers killed at random moments: the file opens cleanly, every stored row is there."""
    db = tmp_state / DB_NAME
    rnd = random.Random(7)
    stored: set[str] = set()
    deleted: set[str] = set()
    t0 = time.monotonic()
    for i in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db), str(i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        # read through the same buffered stream as readline(): communicate(timeout=...) reads the
        # raw fd and would drop lines readline() already buffered (announced deletes among them)
        out = proc.stdout.read()
        proc.wait(timeout=10)
        for line in out.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # torn write of the last line: not acknowledged
            tag, msg_id = line.split()
            (stored if tag == "S" else deleted).add(msg_id)

        ob = Outbox(db)
        assert ob.integrity_check() == "ok"
        present = {r.msg_id for r in ob.peek(1_000_000)}
        missing = stored - deleted - present
        assert not missing, f"run {i}: {len(missing)} stored messages lost"
        stats = ob.stats()
        assert stats["rows"] == len(present)
        ob.close()
    assert len(stored) > 200, "writers barely wrote anything: the test proves little"
    assert time.monotonic() - t0 < 40


# --------------------------------------------------------------------------- CLI


def _box_config(tmp_path: Path, state: Path, pki: Pki | None = None, port: int = 8883,
                box: str = "box-b") -> Path:  # fmt: skip
    from edgeagent.ops.config import to_toml

    data: dict[str, object] = {
        "agent": {"box_id": box, "fleet": FLEET, "state_dir": str(state)},
        "control": {"socket_path": str(tmp_path / "no-daemon.sock")},
    }
    if pki is not None:
        f = pki.client_files(box)
        data["federation"] = {"enabled": True, "broker_host": "127.0.0.1", "broker_port": port,
                              "ca_file": str(f.ca), "cert_file": str(f.cert),
                              "key_file": str(f.key)}  # fmt: skip
    path = tmp_path / "config.toml"
    path.write_text(to_toml(data))
    return path


def test_cli_stats_and_purge(tmp_state: Path, tmp_path: Path) -> None:
    _register()
    ob = Outbox.in_state_dir(tmp_state)
    ob.put("t", b"xx", "alert")
    ob.put("t", b"yyy", "telemetry")
    ob.close()
    cfg = str(_box_config(tmp_path, tmp_state))
    runner = CliRunner()
    r = runner.invoke(app, ["outbox", "stats", "-c", cfg, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["rows"] == 2 and doc["bytes"] == 5
    assert doc["by_kind"]["alert"]["rows"] == 1
    r = runner.invoke(app, ["outbox", "purge", "-c", cfg])
    assert r.exit_code == 2  # needs --yes
    r = runner.invoke(app, ["outbox", "purge", "-c", cfg, "--kind", "telemetry", "--yes", "--json"])
    assert json.loads(r.output) == {"purged": 1, "rows": 1}
    r = runner.invoke(app, ["outbox", "stats", "--state-dir", str(tmp_state / "nope"), "--json"])
    assert r.exit_code == 2
    err = json.loads(r.output)["error"]
    assert err["type"] == "OutboxError" and "no outbox" in err["message"]


def test_cli_stats_reads_a_read_only_outbox_and_writes_nothing(
    tmp_state: Path, tmp_path: Path
) -> None:
    _register()
    ob = Outbox.in_state_dir(tmp_state)
    ob.put("t", b"xx", "alert")
    ob.close()
    before = sorted(p.name for p in tmp_state.iterdir())
    os.chmod(tmp_state / "outbox.sqlite3", 0o444)
    os.chmod(tmp_state, 0o555)
    try:
        r = CliRunner().invoke(app, ["outbox", "stats", "--state-dir", str(tmp_state), "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["rows"] == 1
        assert sorted(p.name for p in tmp_state.iterdir()) == before
    finally:
        os.chmod(tmp_state, 0o755)
        os.chmod(tmp_state / "outbox.sqlite3", 0o644)


def test_cli_flush_sends_everything_to_a_real_broker(
    tmp_state: Path, tmp_path: Path, mosquitto_broker: Broker, pki: Pki
) -> None:
    """Without a daemon, flush connects as the box (state, broker and PKI from -c)."""
    _register()
    ob = Outbox.in_state_dir(tmp_state)
    for i in range(5):
        ob.put(topics.alert(FLEET, "box-b"), b"a%d" % i, "alert")
    ob.close()
    cfg = _box_config(tmp_path, tmp_state, pki, mosquitto_broker.port)
    r = CliRunner().invoke(app, ["outbox", "flush", "-c", str(cfg), "--timeout-s", "10", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert {k: doc[k] for k in ("via", "before", "delivered", "rejected", "rows", "complete")} == {
        "via": "direct", "before": 5, "delivered": 5, "rejected": 0, "rows": 0, "complete": True
    }  # fmt: skip


def test_cli_flush_through_the_daemon_does_not_kick_it(
    tmp_state: Path, tmp_path: Path, mosquitto_broker: Broker, pki: Pki
) -> None:
    """With a daemon running, flush asks it over the control socket: a second client with
    the box's certificate would get the same client id and take the daemon's session."""
    from edgeagent.daemon.wiring import build_supervisor
    from edgeagent.ops.config import load_config

    _register()
    cfg_path = _box_config(tmp_path, tmp_state, pki, mosquitto_broker.port)
    sup = build_supervisor(load_config(cfg_path))
    runner = threading.Thread(target=sup.run, daemon=True)
    runner.start()
    try:
        transport = next(c for c in sup.components if c.name == "transport")
        deadline = time.monotonic() + 10
        while not transport.link.connected:
            assert time.monotonic() < deadline, "daemon did not connect"
            time.sleep(0.05)
        drops = transport.link.counters.disconnects
        box = transport.forwarder.outbox
        box.put(topics.alert(FLEET, "box-b"), b"late", "alert", msg_id="late-1")
        r = CliRunner().invoke(app, ["outbox", "flush", "-c", str(cfg_path), "--json"])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert doc["via"] == "daemon" and doc["complete"] and doc["rows"] == 0
        time.sleep(0.5)
        assert transport.link.connected and transport.link.counters.disconnects == drops
    finally:
        sup.request_stop("test")
        runner.join(15)


def test_ack_many_deletes_in_one_batch_and_counts_per_kind(tmp_state: Path) -> None:
    ob = _open(tmp_state)
    for kind in ("alert", "alert", "update", "telemetry"):
        ob.put("t", b"x", kind)
    rows = ob.peek(10)
    assert ob.ack_many([r.id for r in rows[:3]] + [9999]) == 3
    assert ob.ack_many([]) == 0
    assert ob.put_many([]) == []
    assert [r.kind for r in ob.peek(10)] == ["telemetry"]
    c = ob.counters()
    assert c["delivered.alert"] == 2 and c["delivered.update"] == 1
    assert "delivered.telemetry" not in c
