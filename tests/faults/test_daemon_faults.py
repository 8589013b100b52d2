"""Faults against the real daemon: nothing lost, every fault said in a log line and a status flag.

``edgeagent run`` in a subprocess, mTLS Mosquitto, two serial wearables on ptys
with scripted falls, and the documented consumer (``edgeagent alerts follow``,
persistent session) as a second subprocess. Outcomes are asserted alert id by
alert id (:meth:`edgelab.faultrig.FaultRig.account`): every stored alert's
``opened`` and ``closed`` message reached the consumer once, and no alert is
left open. The scenarios live in :mod:`edgelab.faultscenarios` (the benchmark
``bench/faults.py`` runs longer versions of the same ones). The default
variants are short; ``slow`` ones run the lengths the field tests used (a 30 s
broker kill, ten ``kill -9``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgelab import faultscenarios as fs
from edgelab.faultrig import FaultRig

Rig = Callable[..., FaultRig]


def _nothing_lost(doc: dict[str, Any]) -> None:
    assert doc["exit_code"] == 0, doc
    assert doc["alerts_raised"] > 0, doc
    assert doc["never_closed"] == 0, doc
    assert doc["lost_opened"] == 0 and doc["lost_closed"] == 0, doc
    assert doc["max_deliveries_per_id_at_consumer"] == 1, doc
    assert doc["tracebacks"] == 0, doc


def _outage(rig_factory: Rig, outage_s: float) -> None:
    doc = fs.broker_outage(rig_factory(), outage_s)
    _nothing_lost(doc)
    assert doc["recovery_s"] is not None and doc["recovery_s"] <= 5.0, doc
    assert doc["log_lost_lines"] == 1 and doc["log_back_lines"] == 1, doc
    assert "unreachable" in doc["log_back_line"], doc
    assert doc["fault_flag_raised"] and doc["fault_flag_cleared"], doc


def test_broker_outage_loses_nothing_and_says_so(rig_factory: Rig) -> None:
    _outage(rig_factory, outage_s=5.0)


@pytest.mark.slow
def test_broker_killed_for_30_s(rig_factory: Rig) -> None:
    _outage(rig_factory, outage_s=30.0)


def _kills(rig_factory: Rig, n: int, seed: int) -> None:
    doc = fs.kills(rig_factory(seed=seed), n, seed)
    _nothing_lost(doc)
    assert doc["integrity_failures"] == 0, doc
    assert doc["open_not_closed_at_start"] == 0, doc  # each start named every open alert


def test_kill_9_at_random_points_loses_and_leaves_open_nothing(rig_factory: Rig) -> None:
    _kills(rig_factory, 2, seed=11)


@pytest.mark.slow
def test_ten_kill_9s(rig_factory: Rig) -> None:
    _kills(rig_factory, 10, seed=12)


def test_full_disk_keeps_alerts_flowing_and_reports_pressure(
    rig_factory: Rig, tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    # The daemon alone uses about 1.1 MB here (three SQLite WALs bounded at 256 KiB with
    # their shared-memory files, the registry, the reserve): 3 MB leaves it above the floor.
    state = tmpfs(tmp_path / "state", size="3m")
    rig = rig_factory(
        state_dir=state, outbox={"min_free_bytes": 1024 * 1024, "reserve_bytes": 256 * 1024}
    )
    doc = fs.full_disk(rig)
    _nothing_lost(doc)
    assert doc["max_wal_bytes"] <= 512 * 1024, doc  # checkpointed and bounded
    # the daemon alone does not fill its disk
    assert not doc["pressure_before_filler"], json.dumps(doc["files_before_filler"])
    assert doc["log_pressure_line"] and doc["log_pressure_over_line"], doc
    assert doc["status_disk"]["short"] and doc["status_disk"]["free_bytes"] < 1024 * 1024, doc
    assert "bytes free" in doc["status_fault"] and "degraded" in doc["status_summary"], doc
    assert doc["alerts_delivered_on_full_disk"] >= 1, doc


def _recovered(doc: dict[str, Any], why: str) -> None:
    _nothing_lost(doc)
    assert doc["log_line"] and why in doc["log_line"] and "salvaged rows" in doc["log_line"], doc
    assert len(doc["moved_aside"]) == 1 and doc["fresh_file_ok"], doc
    assert doc["status_fault"] and doc["status_recovered"]["reason"], doc
    assert doc["box_alert_delivered"], doc


def test_corrupt_outbox_is_moved_aside_salvaged_and_alerted(rig_factory: Rig) -> None:
    doc = fs.corrupt_outbox(rig_factory())
    assert doc["integrity_before"] != "ok", doc
    _recovered(doc, "was corrupt")


def test_truncated_outbox_is_said_and_its_alerts_queued_again(rig_factory: Rig) -> None:
    doc = fs.truncated_outbox(rig_factory())
    _recovered(doc, "truncated")
    assert doc["resumed_line"], doc  # re-queued from the alert store


def test_read_only_state_directory_is_one_clear_line(
    rig_factory: Rig, tmpfs: Callable[..., Path], tmp_path: Path
) -> None:
    state = tmpfs(tmp_path / "state", size="1m", ro=True)
    doc = fs.read_only(rig_factory(state_dir=state))
    assert doc["exit_code"] == 1 and doc["tracebacks"] == 0, doc
    assert doc["error_lines"] == 1, doc
    assert doc["error_line"].startswith(
        f"cannot start: state directory (agent.state_dir) {state} is not writable: read-only"
    ), doc
