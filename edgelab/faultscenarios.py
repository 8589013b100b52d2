"""The fault scenarios, once: the tests assert on what they return, the benchmark records it.

Each function drives a :class:`~edgelab.faultrig.FaultRig` through one fault,
lets the box recover, and returns a dict of what was measured: the rig's
per-alert accounting plus the scenario's own figures (recovery seconds, log
lines, status flags). Nothing here asserts: judging is the caller's job.
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
from datetime import datetime
from pathlib import Path
from typing import Any

from edgeagent.ops import dbcheck
from edgelab.faultrig import CLI, FaultRig, wait_for

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def stamp(line: str) -> float:
    """Wall-clock seconds of a daemon log line (the logging module's local time)."""
    m = _TS.match(line)
    if m is None:
        raise ValueError(f"no timestamp in {line!r}")
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def lines(rig: FaultRig, needle: str) -> list[str]:
    return [ln for ln in rig.log_text().splitlines() if needle in ln]


def live_status(rig: FaultRig) -> dict[str, Any]:
    """The running daemon's status over its control socket (status.json may be unwritable)."""
    res = subprocess.run(
        [*CLI, "status", "--json", "--socket", str(rig.socket), "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip()}
    return dict(json.loads(res.stdout))


def finish(rig: FaultRig, out: dict[str, Any]) -> dict[str, Any]:
    """Let every stored alert reach the consumer, stop cleanly, and account by alert id."""
    rig.settle()
    out["exit_code"] = rig.sigterm()
    out.update(rig.account().as_dict())
    out["tracebacks"] = rig.log_text().count("Traceback")
    return out


def start(rig: FaultRig, first_alerts: int = 2) -> None:
    rig.start_consumer()
    rig.start_devices()
    rig.start_daemon()
    wait_for(lambda: len(rig.delivered()) >= first_alerts, 90, "first alerts at the consumer")


def broker_outage(rig: FaultRig, outage_s: float) -> dict[str, Any]:
    """Kill the broker for ``outage_s``; how fast is the box back, and what did it say?"""
    start(rig)
    faults = lambda: rig.status().get("liveness", {}).get("faults", {})  # noqa: E731
    rig.broker.stop()
    t_down = time.time()
    out: dict[str, Any] = {"outage_s": outage_s}
    with contextlib.suppress(AssertionError):
        wait_for(lambda: "broker" in faults(), 15, "the broker fault")
    out["fault_flag_raised"] = "broker" in faults()
    time.sleep(max(0.0, outage_s - (time.time() - t_down)))
    rig.broker.start()
    t_up = time.time()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: bool(lines(rig, "back after")), 60, "the recovery log line")
    back = lines(rig, "back after")
    out["recovery_s"] = round(stamp(back[-1]) - t_up, 3) if back else None
    out["log_lost_lines"] = len(lines(rig, "lost the broker"))
    out["log_back_lines"] = len(back)
    out["log_back_line"] = back[-1].split(": ", 1)[-1] if back else None
    with contextlib.suppress(AssertionError):
        wait_for(lambda: "broker" not in faults(), 10, "the broker fault to clear")
    out["fault_flag_cleared"] = "broker" not in faults()
    return finish(rig, out)


def kills(rig: FaultRig, n: int, seed: int) -> dict[str, Any]:
    """``kill -9`` the daemon ``n`` times at random points, restarting it each time."""
    rnd = random.Random(seed)
    start(rig, first_alerts=1)
    out: dict[str, Any] = {"kills": n, "integrity_failures": 0, "open_at_kill": 0,
                           "open_not_closed_at_start": 0, "restart_s": []}  # fmt: skip
    for _ in range(n):
        time.sleep(rnd.uniform(0.5, 5.0))
        rig.kill9()
        open_ids = {a for a, closed, _k in rig.alerts() if not closed}
        out["open_at_kill"] += len(open_ids)
        for name in ("outbox.sqlite3", "alerts.sqlite"):
            out["integrity_failures"] += int(not dbcheck.check(rig.state / name).ok)
        t0 = time.monotonic()
        rig.start_daemon()
        out["restart_s"].append(round(time.monotonic() - t0, 2))
        if open_ids:
            said = lines(rig, "left open by the previous run")
            closing = said[-1] if said else ""
            out["open_not_closed_at_start"] += sum(a not in closing for a in open_ids)
    return finish(rig, out)


def full_disk(rig: FaultRig, watch_s: float = 6.0) -> dict[str, Any]:
    """The daemon on a small tmpfs: its own WALs, then a filler that takes every byte."""
    state = rig.state
    start(rig)
    out: dict[str, Any] = {"disk_bytes": os.statvfs(state).f_blocks * os.statvfs(state).f_frsize}
    deadline = time.monotonic() + watch_s
    biggest = 0
    while time.monotonic() < deadline:
        for wal in state.glob("*-wal"):
            with contextlib.suppress(FileNotFoundError):
                biggest = max(biggest, wal.stat().st_size)
        time.sleep(0.2)
    out["max_wal_bytes"] = biggest
    # what the daemon alone put on the disk, to tell which store a pressure came from
    out["files_before_filler"] = {
        p.name: p.stat().st_size for p in sorted(state.iterdir()) if p.is_file()
    }
    out["pressure_before_filler"] = bool(live_status(rig).get("liveness", {}).get("faults", {})
                                         .get("disk"))  # fmt: skip
    # The filler takes every byte left, once (a runaway copy or log burst). What the
    # daemon later frees by truncating its WALs stays free: a floor well above a WAL's
    # bound keeps the disk "short" all the same.
    _fill(state / "filler")
    before = rig.delivered()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: bool(lines(rig, "disk pressure:")), 15, "the disk pressure line")
    out["log_pressure_line"] = bool(lines(rig, "disk pressure:"))
    st = live_status(rig)
    disk = st.get("components", {}).get("outbox", {}).get("disk") or {}
    out["status_disk"] = disk
    out["status_fault"] = st.get("liveness", {}).get("faults", {}).get("disk")
    out["status_summary"] = st.get("liveness", {}).get("summary")
    t_fill = time.monotonic()
    try:
        wait_for(lambda: any(m.endswith(".opened") for m in rig.delivered() - before), 90,
                 "an alert raised on the full disk")  # fmt: skip
        out["first_alert_on_full_disk_s"] = round(time.monotonic() - t_fill, 2)
    except AssertionError:
        out["first_alert_on_full_disk_s"] = None
    out["alerts_delivered_on_full_disk"] = sum(
        m.endswith(".opened") for m in rig.delivered() - before
    )
    out["reserve_released"] = bool(lines(rig, "released the"))
    (state / "filler").unlink()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: bool(lines(rig, "disk pressure over")), 15, "the pressure to end")
    out["log_pressure_over_line"] = bool(lines(rig, "disk pressure over"))
    return finish(rig, out)


def _fill(path: Path) -> int:
    """Append to ``path`` until the disk refuses; returns the bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9):
            while True:
                try:
                    n += f.write(b"\0" * size)
                except OSError:
                    break
    return n


def _queued_then_stopped(rig: FaultRig) -> None:
    start(rig)
    rig.broker.stop()
    wait_for(lambda: rig.queued_alert_rows() >= 1, 90, "an alert queued behind a dead broker")
    rig.sigterm()


def _after_restart(rig: FaultRig, out: dict[str, Any]) -> dict[str, Any]:
    rig.broker.start()
    rig.start_daemon()
    said = lines(rig, "was corrupt")
    out["log_line"] = said[-1].split(": ", 1)[-1] if said else None
    out["moved_aside"] = [p.name for p in rig.state.glob("outbox.sqlite3.corrupt-*")
                          if not p.name.endswith(("-wal", "-shm"))]  # fmt: skip
    out["fresh_file_ok"] = dbcheck.check(rig.state / "outbox.sqlite3").ok
    st = rig.status()
    out["status_fault"] = st.get("liveness", {}).get("faults", {}).get("outbox")
    out["status_recovered"] = st.get("components", {}).get("outbox", {}).get("recovered")
    out["resumed_line"] = bool(lines(rig, "resumed delivery of"))
    with contextlib.suppress(AssertionError):
        wait_for(lambda: any(d.get("kind") == "outbox_corrupt" for d in rig.got.values()), 30,
                 "the outbox_corrupt alert")  # fmt: skip
    out["box_alert_delivered"] = any(d.get("kind") == "outbox_corrupt" for d in rig.got.values())
    return finish(rig, out)


def corrupt_outbox(rig: FaultRig) -> dict[str, Any]:
    """16 bytes over the messages table's page header while alerts wait in the outbox."""
    _queued_then_stopped(rig)
    path = rig.state / "outbox.sqlite3"
    out: dict[str, Any] = {"queued_before": rig.queued_alert_rows()}
    db = sqlite3.connect(path)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='messages'").fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page + (100 if root == 1 else 0))
        f.write(b"\xa5" * 16)
    out["integrity_before"] = dbcheck.check(path).reason or "ok"
    return _after_restart(rig, out)


def truncated_outbox(rig: FaultRig) -> dict[str, Any]:
    """The outbox truncated to 0 bytes while alerts wait in it."""
    _queued_then_stopped(rig)
    out: dict[str, Any] = {"queued_before": rig.queued_alert_rows()}
    os.truncate(rig.state / "outbox.sqlite3", 0)
    return _after_restart(rig, out)


def read_only(rig: FaultRig) -> dict[str, Any]:
    """``edgeagent run`` on a read-only state directory: one clear line, exit 1."""
    t0 = time.monotonic()
    res = subprocess.run(
        [*CLI, "run", "--config", str(rig.config)], capture_output=True, text=True, timeout=120
    )
    text = res.stdout + res.stderr
    errors = [ln for ln in text.splitlines() if " ERROR " in ln]
    return {
        "exit_code": res.returncode,
        "seconds": round(time.monotonic() - t0, 2),
        "error_lines": len(errors),
        "error_line": errors[0].split(": ", 1)[-1] if errors else None,
        "tracebacks": text.count("Traceback"),
    }


def mount_tmpfs(path: Path, size: str, ro: bool = False) -> str | None:
    """Mount a tmpfs at ``path``; None on success, else why not (not root, no mount)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    except OSError as exc:
        return str(exc)
    return None if res.returncode == 0 else res.stderr.strip() or f"mount exit {res.returncode}"


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
