"""Disk floor, reserve file and the writability probe, on the real file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeagent.errors import OutboxError
from edgeagent.ops.disk import DiskReserve, check_writable, disk_state, is_disk_full
from edgeagent.transport.outbox import Outbox


def test_reserve_is_allocated_for_real_and_released_once(tmp_path: Path) -> None:
    r = DiskReserve(tmp_path, 64 * 1024)
    assert r.ensure() and r.held == 64 * 1024
    assert os.stat(r.path).st_blocks * 512 >= 64 * 1024  # blocks allocated, not sparse
    assert r.release() and r.held == 0 and not r.release()
    assert r.released == 1
    assert not DiskReserve(tmp_path, 0).ensure()


def test_reserve_not_taken_when_the_disk_is_below_the_floor(tmp_path: Path) -> None:
    st = disk_state(tmp_path, 0)
    r = DiskReserve(tmp_path, 4096)
    assert not r.ensure(floor_bytes=st.free_bytes + 1)
    assert r.held == 0


def test_disk_state_and_full_errors(tmp_path: Path) -> None:
    st = disk_state(tmp_path, 1 << 62)
    assert st.short and st.free_bytes > 0 and "bytes free" in st.describe()
    assert not disk_state(tmp_path, 0).short
    assert is_disk_full(OSError(28, "No space left on device"))
    assert is_disk_full(Exception("database or disk is full"))
    assert not is_disk_full(Exception("database is locked"))


def test_outbox_below_the_floor_refuses_all_but_alerts(tmp_state: Path) -> None:
    ob = Outbox.in_state_dir(tmp_state, min_free_bytes=1 << 62)  # always "short"
    with pytest.raises(OutboxError, match="disk short"):
        ob.put("t/status", b"s", "status")
    with pytest.raises(OutboxError, match="disk short"):
        ob.put("t/update", b"u", "update")
    ob.put_alert("t/alert", b"a", "a1", "opened")
    assert ob.count() == 1
    c = ob.counters()
    assert c["refused_disk.status"] == 1 and c["refused_disk.update"] == 1


def test_check_writable_names_the_directory_and_why(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "new" / "state", "state directory") is None
    f = tmp_path / "file"
    f.write_text("x")
    msg = check_writable(f, "state directory")
    assert msg is not None and str(f) in msg
    if os.geteuid() != 0:  # root ignores permission bits; the fault tests use a ro mount
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        msg = check_writable(ro, "state directory")
        assert msg is not None and "not writable" in msg


def test_outbox_component_raises_and_clears_the_disk_fault_once(
    tmp_state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgeagent.daemon.health import Liveness
    from edgeagent.daemon.outbound import OutboxComponent

    live = Liveness()
    ob = Outbox.in_state_dir(tmp_state, min_free_bytes=1 << 62)
    box = OutboxComponent(ob, live, reserve=DiskReserve(tmp_state, 4096))
    box.start()
    box.tick()
    assert "bytes free" in live.faults()["disk"] and box.status()["disk"]["short"]
    assert sum("disk pressure:" in r.getMessage() for r in caplog.records) == 1
    assert box.reserve is not None and box.reserve.held == 0  # no room above the floor
    ob.min_free_bytes = 0
    box.tick()
    assert "disk" not in live.faults() and box.reserve.held == 4096
    assert sum("disk pressure over" in r.getMessage() for r in caplog.records) == 1
    box.stop()


def test_daemon_refuses_to_start_on_a_directory_it_cannot_write(tmp_path: Path) -> None:
    from edgeagent.daemon.wiring import check_directories
    from edgeagent.ops.config import parse_config

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cfg = parse_config(
        {
            "agent": {"box_id": "box-1", "state_dir": str(blocker)},
            "control": {"socket_path": str(tmp_path / "run" / "ctl.sock")},
        }
    )
    (problem,) = check_directories(cfg)
    assert problem.startswith(f"state directory (agent.state_dir) {blocker}")
