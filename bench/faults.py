"""Fault runs against the real daemon, longer than the tests: what was raised, delivered, lost.

The scenarios of ``tests/faults/`` (:mod:`edgelab.faultscenarios`) at field
lengths: a 30 s broker kill, ten ``kill -9`` at random points, a 2 MB tmpfs
state directory filled by the daemon and then by a filler, a corrupt outbox
page, a truncated outbox and a read-only state directory. Every run is
``edgeagent run`` with mTLS Mosquitto, two serial wearables on ptys and the
documented consumer ``edgeagent alerts follow`` on a persistent session.

Per scenario: alerts raised (stored), delivered (opened and closed), lost,
duplicated on the wire and at the consumer, never closed, recovery seconds.
Targets: 0 lost, 0 never closed, at most one delivery per msg-id at the
consumer, recovery within 5 s of the broker's return, a log line and a status
flag for every fault.

Run: ``python bench/faults.py [--outage-s 30] [--kills 10] [--only NAME ...]``
(root is needed for the tmpfs scenarios; they are skipped with the reason
otherwise). Writes bench/results/faults.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent.ops.pki import Pki
from edgelab import faultscenarios as fs
from edgelab.broker import Broker
from edgelab.faultrig import FaultRig

FLEET = "benchfleet"
RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"


def _run(name: str, root: Path, pki: Pki, body: Callable[[Path, Pki, Broker], dict]) -> dict:
    """One scenario on a fresh broker and directory; errors become part of the result."""
    d = root / name
    d.mkdir()
    broker = Broker(pki, d / "broker").start()
    t0 = time.monotonic()
    try:
        doc = body(d, pki, broker)
    except Exception as exc:  # a bench records a broken run rather than losing the others
        doc = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        broker.stop()
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    return doc


def _rig(d: Path, pki: Pki, broker: Broker, **kw: Any) -> FaultRig:
    return FaultRig(d, pki, broker, fleet=FLEET, control_dir=Path("/tmp"), **kw)


def scenarios(args: argparse.Namespace) -> dict[str, Callable[[Path, Pki, Broker], dict]]:
    def outage(d: Path, pki: Pki, b: Broker) -> dict:
        rig = _rig(d, pki, b)
        try:
            return fs.broker_outage(rig, args.outage_s)
        finally:
            rig.close()

    def kills(d: Path, pki: Pki, b: Broker) -> dict:
        rig = _rig(d, pki, b, seed=args.seed)
        try:
            return fs.kills(rig, args.kills, args.seed)
        finally:
            rig.close()

    def full_disk(d: Path, pki: Pki, b: Broker) -> dict:
        state = d / "state"
        why = fs.mount_tmpfs(state, "2m")
        if why is not None:
            return {"skipped": f"cannot mount a tmpfs: {why}"}
        rig = _rig(d, pki, b, state_dir=state,
                   outbox={"min_free_bytes": 1024 * 1024, "reserve_bytes": 256 * 1024})  # fmt: skip
        try:
            return fs.full_disk(rig, watch_s=args.watch_s)
        finally:
            rig.close()
            fs.umount(state)

    def corrupt(d: Path, pki: Pki, b: Broker) -> dict:
        rig = _rig(d, pki, b)
        try:
            return fs.corrupt_outbox(rig)
        finally:
            rig.close()

    def truncated(d: Path, pki: Pki, b: Broker) -> dict:
        rig = _rig(d, pki, b)
        try:
            return fs.truncated_outbox(rig)
        finally:
            rig.close()

    def read_only(d: Path, pki: Pki, b: Broker) -> dict:
        state = d / "state"
        why = fs.mount_tmpfs(state, "1m", ro=True)
        if why is not None:
            return {"skipped": f"cannot mount a tmpfs: {why}"}
        rig = _rig(d, pki, b, state_dir=state)
        try:
            return fs.read_only(rig)
        finally:
            rig.close()
            fs.umount(state)

    return {
        "broker_outage": outage,
        "kill_9": kills,
        "full_disk": full_disk,
        "corrupt_outbox": corrupt,
        "truncated_outbox": truncated,
        "read_only_state": read_only,
    }


def verdict(name: str, doc: dict[str, Any]) -> list[str]:
    """The targets this scenario missed (empty: all met)."""
    if "skipped" in doc:
        return []
    if "error" in doc:
        return [doc["error"]]
    miss = []
    if name == "read_only_state":
        if doc["exit_code"] != 1 or doc["error_lines"] != 1 or doc["tracebacks"]:
            miss.append("not one clear line")
        return miss
    for key in ("lost_opened", "lost_closed", "never_closed", "tracebacks"):
        if doc.get(key):
            miss.append(f"{key}={doc[key]}")
    if doc.get("max_deliveries_per_id_at_consumer", 1) > 1:
        miss.append("a msg-id delivered twice at the consumer")
    if name == "broker_outage" and (doc.get("recovery_s") is None or doc["recovery_s"] > 5.0):
        miss.append(f"recovery {doc.get('recovery_s')} s > 5 s")
    return miss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--watch-s", type=float, default=10.0, help="full disk: WAL watch time")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", nargs="*", default=None, help="run only these scenarios")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs = scenarios(args)
    names = args.only or list(runs)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        root = Path(tmp)
        pki = Pki.init(root / "pki", fleet=FLEET)
        pki.issue("box-a")
        pki.issue_aggregator()
        for name in names:
            print(f"-- {name} ...", flush=True)
            doc = _run(name, root, pki, runs[name])
            doc["missed"] = verdict(name, doc)
            results[name] = doc
            print(json.dumps(doc, default=str)[:600], flush=True)
    summary = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "args": {k: str(v) for k, v in vars(args).items()},
        "scenarios": results,
        "all_targets_met": all(not d["missed"] for d in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1, default=str))
    print()
    print(f"{'scenario':18} {'raised':>6} {'opened':>6} {'closed':>6} {'lost':>4} "
          f"{'dup wire':>8} {'max/id':>6} {'open':>4} {'recov s':>7}  missed")  # fmt: skip
    for name, d in results.items():
        if "skipped" in d or "error" in d:
            print(f"{name:18} {d.get('skipped') or d.get('error')}")
            continue
        lost = d.get("lost_opened", 0) + d.get("lost_closed", 0)
        print(
            f"{name:18} {d.get('alerts_raised', '-'):>6} {d.get('delivered_opened', '-'):>6} "
            f"{d.get('delivered_closed', '-'):>6} {lost:>4} {d.get('duplicates_on_wire', '-'):>8} "
            f"{d.get('max_deliveries_per_id_at_consumer', '-'):>6} {d.get('never_closed', '-'):>4} "
            f"{d.get('recovery_s', '-')!s:>7}  {'; '.join(d['missed']) or 'none'}"
        )
    print(f"wrote {args.out}")
    return 0 if summary["all_targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
