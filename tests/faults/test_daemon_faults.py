"""Faults against the real daemon: nothing lost, every fault said in a log line and a status flag.

``edgeagent run`` in a subprocess, mTLS Mosquitto, two serial wearables on ptys
with scripted falls, and the documented consumer (``edgeagent alerts follow``,
persistent session) as a second subprocess. Outcomes are asserted alert id by
alert id (:meth:`edgelab.faultrig.FaultRig.account`): every stored alert's
``opened`` and ``closed`` message reached the consumer once, and no alert is
left open. The default variants are short; ``slow`` ones run the lengths the
field tests used (a 30 s broker kill, ten ``kill -9``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edgeagent.ops import dbcheck
from edgelab.faultrig import CLI, FaultRig, wait_for

Rig = Callable[..., FaultRig]

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float:
    m = _TS.match(line)
    assert m, line
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _lines(rig: FaultRig, needle: str) -> list[str]:
    return [ln for ln in rig.log_text().splitlines() if needle in ln]


def _assert_nothing_lost(rig: FaultRig) -> dict[str, Any]:
    rig.settle()
    assert rig.sigterm() == 0, rig.log_tail()
    acc = rig.account()
    doc = acc.as_dict()
    assert acc.raised > 0, doc
    assert acc.never_closed == [], doc
    assert acc.lost_opened == [] and acc.lost_closed == [], doc
    assert acc.consumer_max_per_id == 1, doc  # at most one delivery per msg-id at the consumer
    assert "Traceback" not in rig.log_text(), rig.log_tail(80)
    return doc


def _live_status(rig: FaultRig) -> dict[str, Any]:
    """The running daemon's status over its control socket (status.json may not be writable)."""
    res = subprocess.run(
        [*CLI, "status", "--json", "--socket", str(rig.socket)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return dict(json.loads(res.stdout))


def _broker_outage(rig_factory: Rig, outage_s: float) -> None:
    rig = rig_factory()
    broker = rig.broker
    rig.start_consumer()
    rig.start_devices()
    rig.start_daemon()
    wait_for(lambda: len(rig.delivered()) >= 2, 60, "a first alert at the consumer")
    broker.stop()
    wait_for(lambda: "broker" in rig.status().get("liveness", {}).get("faults", {}), 15,
             "the broker fault in status")  # fmt: skip
    time.sleep(outage_s)
    broker.start()
    t_up = time.time()
    wait_for(lambda: bool(_lines(rig, "back after")), 30, "the recovery log line")
    (back,) = _lines(rig, "back after")
    recovery_s = _stamp(back) - t_up
    assert recovery_s <= 5.0, f"reconnected {recovery_s:.1f} s after the broker's return"
    assert len(_lines(rig, "lost the broker")) == 1  # the loss, once
    assert re.search(r"back after \d+\.\d s unreachable", back)
    wait_for(lambda: "broker" not in rig.status().get("liveness", {}).get("faults", {"b": 1}),
             10, "the broker fault to clear")  # fmt: skip
    _assert_nothing_lost(rig)


def test_broker_outage_loses_nothing_and_says_so(rig_factory: Rig) -> None:
    _broker_outage(rig_factory, outage_s=8.0)


@pytest.mark.slow
def test_broker_killed_for_30_s(rig_factory: Rig) -> None:
    _broker_outage(rig_factory, outage_s=30.0)


def _kills(rig_factory: Rig, kills: int, seed: int) -> None:
    rnd = random.Random(seed)
    rig = rig_factory(seed=seed)
    rig.start_consumer()
    rig.start_devices()
    rig.start_daemon()
    for _ in range(kills):
        time.sleep(rnd.uniform(0.5, 5.0))
        rig.kill9()
        open_ids = {a for a, closed, _k in rig.alerts() if not closed}
        for name in ("outbox.sqlite3", "alerts.sqlite"):
            assert dbcheck.check(rig.state / name).ok, name
        rig.start_daemon()
        if open_ids:
            closing = _lines(rig, "left open by the previous run")[-1]
            assert all(a in closing for a in open_ids), (open_ids, closing)
    _assert_nothing_lost(rig)


def test_kill_9_at_random_points_loses_and_leaves_open_nothing(rig_factory: Rig) -> None:
    _kills(rig_factory, kills=3, seed=11)


@pytest.mark.slow
def test_ten_kill_9s(rig_factory: Rig) -> None:
    _kills(rig_factory, kills=10, seed=12)


def test_full_disk_keeps_alerts_flowing_and_reports_pressure(
    rig_factory: Rig, tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmpfs(tmp_path / "state", size="2m")
    rig = rig_factory(
        state_dir=state, outbox={"min_free_bytes": 512 * 1024, "reserve_bytes": 256 * 1024}
    )
    rig.start_consumer()
    rig.start_devices()
    rig.start_daemon()
    wait_for(lambda: len(rig.delivered()) >= 2, 60, "a first alert at the consumer")
    # The daemon alone: its WALs stay bounded and the disk above the floor.
    deadline = time.monotonic() + 6
    biggest = 0
    while time.monotonic() < deadline:
        for wal in state.glob("*-wal"):
            with contextlib.suppress(FileNotFoundError):
                biggest = max(biggest, wal.stat().st_size)
        time.sleep(0.2)
    assert biggest <= 512 * 1024, f"a WAL reached {biggest} bytes"
    assert not _live_status(rig)["liveness"]["faults"].get("disk")
    # A filler takes every byte left; the reserve is what alerts still have.
    with open(state / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    before = rig.delivered()
    wait_for(lambda: bool(_lines(rig, "disk pressure:")), 15, "the disk pressure log line")
    st = _live_status(rig)
    disk = st["components"]["outbox"]["disk"]
    assert disk["short"] and disk["free_bytes"] < 512 * 1024
    assert "bytes free" in st["liveness"]["faults"]["disk"]
    assert "degraded" in st["liveness"]["summary"]
    wait_for(lambda: any(m.endswith(".opened") for m in rig.delivered() - before), 60,
             "an alert raised on the full disk")  # fmt: skip
    (state / "filler").unlink()
    wait_for(lambda: bool(_lines(rig, "disk pressure over")), 15, "the pressure to end")
    doc = _assert_nothing_lost(rig)
    assert doc["alerts_raised"] >= 3


def _stop_with_rows_queued(rig: FaultRig) -> None:
    """Run until alerts are delivered, then keep some queued behind a dead broker, and stop."""
    rig.start_consumer()
    rig.start_devices()
    rig.start_daemon()
    wait_for(lambda: len(rig.delivered()) >= 2, 60, "a first alert at the consumer")
    rig.broker.stop()
    wait_for(lambda: rig.queued_alert_rows() >= 1, 60, "an alert queued while the broker is away")
    assert rig.sigterm() == 0


def test_corrupt_outbox_is_moved_aside_salvaged_and_alerted(rig_factory: Rig) -> None:
    rig = rig_factory()
    _stop_with_rows_queued(rig)
    path = rig.state / "outbox.sqlite3"
    db = sqlite3.connect(path)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='messages'").fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(path, "r+b") as f:  # 16 bytes of the messages table's page header
        f.seek((root - 1) * page + (100 if root == 1 else 0))
        f.write(b"\xa5" * 16)
    assert not dbcheck.check(path).ok
    rig.broker.start()
    rig.start_daemon()
    (line,) = _lines(rig, "was corrupt")
    assert "moved to outbox.sqlite3.corrupt-" in line and "salvaged rows" in line
    assert list(rig.state.glob("outbox.sqlite3.corrupt-*"))
    assert dbcheck.check(path).ok
    st = rig.status()
    assert "outbox" in st["liveness"]["faults"]
    assert st["components"]["outbox"]["recovered"]["reason"]
    wait_for(lambda: any(d.get("kind") == "outbox_corrupt" for d in rig.got.values()), 30,
             "the box's outbox_corrupt alert at the consumer")  # fmt: skip
    _assert_nothing_lost(rig)


def test_truncated_outbox_is_said_and_its_alerts_queued_again(rig_factory: Rig) -> None:
    rig = rig_factory()
    _stop_with_rows_queued(rig)
    path = rig.state / "outbox.sqlite3"
    os.truncate(path, 0)
    rig.broker.start()
    rig.start_daemon()
    (line,) = _lines(rig, "was corrupt")
    assert "truncated" in line
    assert _lines(rig, "resumed delivery of")  # re-queued from the alert store
    _assert_nothing_lost(rig)


def test_read_only_state_directory_is_one_clear_line(
    rig_factory: Rig, tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmpfs(tmp_path / "state", size="1m", ro=True)
    rig = rig_factory(state_dir=state)
    res = subprocess.run(
        [*CLI, "run", "--config", str(rig.config)], capture_output=True, text=True, timeout=120
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, out
    assert f"state directory (agent.state_dir) {state} is not writable: read-only" in errors[0]
