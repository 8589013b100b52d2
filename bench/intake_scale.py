"""Update intake with one vs two aggregator workers (MQTT 5 shared subscription), same broker.

What runs (127.0.0.1, the shipped Mosquitto TLS + ACL config):
- ``--boxes`` boxes, each with its own client certificate and mTLS connection
  (``fl.fleetsim.Mux``, in a publisher process), each publishing one signed
  COLLECT_MASKED envelope of ``--dim`` masked uint32 values;
- 1 or 2 intake worker processes (``python -m edgeagent.federation.intake``) on
  ``$share/intake/.../node/+/collect_masked``: they verify every envelope
  (size, schema, Ed25519 signature, round, nonce, sequence) and add it into
  a partial sum, published signed to the coordinator;
- this process as the coordinator: opens intake, verifies and counts the
  partial sums until every box is covered.

Two measurements per worker count, alternated in one run (``--trials`` each):
- ``drain``: workers are frozen (SIGSTOP) while the boxes publish, so the
  backlog waits in the broker; then they are thawed and the clock runs until
  every box is in a partial sum. This is the intake capacity of the workers
  plus the broker's delivery, with the publishers' CPU out of the way;
- ``live``: workers run while the boxes publish; the clock runs from the
  first publish to full coverage. On this 2-core machine the publishers,
  the broker and the workers compete for the same cores, so this ratio is
  the pessimistic one.

Throughput = boxes / seconds; the ratio is 2 workers over 1 worker.

Run: python bench/intake_scale.py [--boxes 2000] [--dim 10000] [--trials 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: E402
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgeagent.federation.intake import (  # noqa: E402
    OP_CLOSE,
    OP_OPEN,
    control_topic,
    decode_partial,
    encode_control,
    partial_topic,
    raw_public,
)
from edgeagent.fl.constants import AGGREGATOR, Key, Stage  # noqa: E402
from edgeagent.fl.identity import load_ca, load_identity  # noqa: E402
from edgeagent.fl.messages import Message, encode  # noqa: E402
from edgeagent.ops.pki import Pki  # noqa: E402
from edgeagent.transport import topics  # noqa: E402
from edgeagent.transport.mqtt import MqttLink  # noqa: E402
from edgelab.broker import Broker  # noqa: E402
from edgelab.fleetsim import BoxSpec, Mux, issue_boxes  # noqa: E402

FLEET = "intake"
RESULTS = ROOT / "bench" / "results" / "intake_scale.json"


def publisher(conn: Any, host: str, port: int, ca: str, boxes: list[BoxSpec]) -> None:
    """Publisher process: one mTLS connection per box; publishes prebuilt envelopes on demand."""
    mux = Mux()
    keys = {b.node: Ed25519PrivateKey.generate() for b in boxes}
    acked = [0]
    for b in boxes:
        mux.add(b.node, host, port, ca, b.cert, b.key, None)
        mux.clients[b.node].on_publish = lambda *_a: acked.__setitem__(0, acked[0] + 1)
        mux.poll(0)
    mux.wait(lambda: len(mux.connected) == len(boxes), 120)
    conn.send({n: raw_public(k.public_key()) for n, k in keys.items()})
    rng = np.random.default_rng(0)
    while True:
        cmd = conn.recv()
        if cmd.get("stop"):
            break
        if cmd.get("next"):
            continue
        r, nonce, dim = cmd["round"], cmd["nonce"], cmd["dim"]
        envs = {}
        for b in boxes:
            body = {Key.MASKED.value: rng.integers(0, 2**32, dim, dtype=np.uint64)
                    .astype("<u4").tobytes()}  # fmt: skip
            msg = Message(b.node, AGGREGATOR, r, Stage.COLLECT_MASKED, 0, nonce, body)
            envs[b.node] = encode(msg, keys[b.node])
        conn.send({"built": True})
        conn.recv()  # go
        acked[0] = 0
        t0 = time.perf_counter()
        for b in boxes:
            mux.clients[b.node].publish(
                topics.node(FLEET, b.node, Stage.COLLECT_MASKED.value), envs[b.node], qos=1
            )
            mux.poll(0)
        mux.wait(lambda: acked[0] >= len(boxes), 120)
        conn.send({"published_s": time.perf_counter() - t0, "acked": acked[0]})
        while not conn.poll():
            mux.poll(0.02)
    mux.close()


class Collector:
    """Coordinator side: counts boxes covered by verified partial sums."""

    def __init__(self, pub: Ed25519PublicKey) -> None:
        self.pub = pub
        self.lock = threading.Lock()
        self.payloads: list[bytes] = []
        self.covered = 0
        self.done = threading.Event()
        self.target = 0
        self.t_done = 0.0

    def on_message(self, m: Any) -> None:
        with self.lock:
            self.payloads.append(m.payload)
            self.covered += self._count(m.payload)
            if self.target and self.covered >= self.target and not self.done.is_set():
                self.t_done = time.perf_counter()
                self.done.set()

    def _count(self, payload: bytes) -> int:
        import cbor2

        inner = cbor2.loads(cbor2.loads(payload)["p"])
        return len(inner["body"]["nodes"])


def cpu_of(pids: list[int | None]) -> float:
    """User + system CPU seconds of these processes so far."""
    total = 0.0
    for pid in pids:
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def start_workers(n: int, pki: Pki, broker: Broker, tmp: Path, tag: str) -> list[subprocess.Popen]:
    agg = pki.client_files(AGGREGATOR)
    procs = []
    for i in range(n):
        ready = tmp / f"{tag}-{i}.ready"
        files = pki.client_files(f"intake-{i}")  # each worker connects as itself
        if not files.cert.exists():
            pki.issue_intake(i)
        cmd = [sys.executable, "-m", "edgeagent.federation.intake", "--port", str(broker.port),
               "--fleet", FLEET, "--ca", str(files.ca), "--cert", str(files.cert),
               "--key", str(files.key), "--identity", str(agg.cert), "--worker", str(i),
               "--ready-file", str(ready)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL))
    end = time.monotonic() + 30
    while not all((tmp / f"{tag}-{i}.ready").exists() for i in range(n)):
        if time.monotonic() > end:
            raise RuntimeError("workers did not start")
        time.sleep(0.05)
    return procs


def trial(
    mode: str,
    n_workers: int,
    args: argparse.Namespace,
    ctx: dict[str, Any],
    round_id: int,
) -> dict[str, Any]:
    pki, broker, tmp, conn, link, col, ident, pubs = (
        ctx[k] for k in ("pki", "broker", "tmp", "conn", "link", "col", "ident", "pubs")
    )
    workers = start_workers(n_workers, pki, broker, tmp, f"r{round_id}")
    try:
        nonce = secrets.token_bytes(16)
        keys = {n: Ed25519PublicKey.from_public_bytes(raw) for n, raw in pubs.items()}
        ctl = encode_control(OP_OPEN, round_id, nonce, 2 * round_id, ident.key, dim=args.dim,
                             box_keys=keys)  # fmt: skip
        link.publish(control_topic(FLEET), ctl).wait(10)
        time.sleep(0.3)  # control reaches every worker (not shared) before updates
        conn.send({"round": round_id, "nonce": nonce, "dim": args.dim})
        conn.recv()  # envelopes built
        with col.lock:
            col.payloads, col.covered, col.target = [], 0, args.boxes
            col.done.clear()
        if mode == "drain":
            for w in workers:
                os.kill(w.pid, signal.SIGSTOP)
        cpu0 = cpu_of([w.pid for w in workers]), cpu_of([broker.pid])
        t0 = time.perf_counter()
        conn.send({"go": True})
        pub = conn.recv()
        if mode == "drain":
            time.sleep(0.5)  # the broker has every PUBACKed message; let it settle
            t0 = time.perf_counter()
            for w in workers:
                os.kill(w.pid, signal.SIGCONT)
        ok = col.done.wait(args.timeout)
        t1 = col.t_done if ok else time.perf_counter()
        time.sleep(0.2)  # let the last flush's CPU be counted
        w_cpu = cpu_of([w.pid for w in workers]) - cpu0[0]
        b_cpu = cpu_of([broker.pid]) - cpu0[1]
        link.publish(control_topic(FLEET), encode_control(
            OP_CLOSE, round_id, nonce, 2 * round_id + 1, ident.key)).wait(10)  # fmt: skip
        conn.send({"next": True})
        with col.lock:
            parts = [decode_partial(p, ident.public_key, round_id, nonce, args.dim)
                     for p in col.payloads]  # fmt: skip
        per_worker: dict[str, int] = {}
        for p in parts:
            per_worker[p.worker] = per_worker.get(p.worker, 0) + len(p.total.nodes)
        secs = t1 - t0
        return {
            "mode": mode,
            "workers": n_workers,
            "round": round_id,
            "complete": ok,
            "covered": col.covered,
            "seconds": round(secs, 4),
            "updates_per_s": round(col.covered / secs, 1),
            "mb_per_s": round(col.covered * 4 * args.dim / secs / 1e6, 2),
            "publish_s": round(pub["published_s"], 3),
            "per_worker": per_worker,
            # CPU per update does not depend on what else runs on the machine: with the
            # broker on the same cores, the intake ceiling is cores / (worker + broker)
            "worker_cpu_ms_per_update": round(1e3 * w_cpu / max(col.covered, 1), 3),
            "broker_cpu_ms_per_update": round(1e3 * b_cpu / max(col.covered, 1), 3),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        for w in workers:
            os.kill(w.pid, signal.SIGCONT)
            w.terminate()
        for w in workers:
            w.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["drain", "live"])
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="intake-bench-") as tmp_s:
        tmp = Path(tmp_s)
        pki = Pki.init(tmp / "pki", fleet=FLEET)
        pki.issue_aggregator()
        broker = Broker(pki, tmp / "broker").start()
        specs = issue_boxes(pki, [f"pub-{i:05d}" for i in range(args.boxes)])
        mctx = mp.get_context("spawn")
        conn, child = mctx.Pipe()
        pargs = (child, broker.host, broker.port, str(pki.ca_cert), specs)
        proc = mctx.Process(target=publisher, args=pargs, daemon=True)
        proc.start()
        pubs = conn.recv()
        files = pki.client_files(AGGREGATOR)
        ident = load_identity(files.cert, load_ca(pki.ca_cert), AGGREGATOR)
        col = Collector(ident.public_key)
        link = MqttLink("aggregator-bench", broker.host, broker.port, files, FLEET,
                        identity=AGGREGATOR, status=False, on_message=col.on_message,
                        clean_start=True)  # fmt: skip
        link.connect()
        link.subscribe(partial_topic(FLEET)).wait(10)
        ctx = {"pki": pki, "broker": broker, "tmp": tmp, "conn": conn, "link": link,
               "col": col, "ident": ident, "pubs": pubs}  # fmt: skip
        rows = []
        round_id = 1
        try:
            for _ in range(args.trials):
                for mode in args.modes:
                    for nw in (1, 2):
                        row = trial(mode, nw, args, ctx, round_id)
                        round_id += 1
                        rows.append(row)
                        print(f"{mode:>5} workers={nw}: {row['updates_per_s']:>8.1f} updates/s "
                              f"({row['mb_per_s']} MB/s, {row['seconds']} s, "
                              f"split {row['per_worker']}, worker CPU "
                              f"{row['worker_cpu_ms_per_update']} ms/update, broker "
                              f"{row['broker_cpu_ms_per_update']} ms/update, load "
                              f"{row['load_average_1m']})", flush=True)  # fmt: skip
        finally:
            conn.send({"stop": True})
            proc.join(10)
            link.close()
            broker.stop()
    summary = {}
    for mode in args.modes:
        med = {}
        for nw in (1, 2):
            vals = [r["updates_per_s"] for r in rows if r["mode"] == mode and r["workers"] == nw]
            med[nw] = statistics.median(vals)
        wcpu = [r["worker_cpu_ms_per_update"] for r in rows if r["mode"] == mode]
        bcpu = [r["broker_cpu_ms_per_update"] for r in rows if r["mode"] == mode]
        summary[mode] = {
            "worker_cpu_ms_per_update_median": statistics.median(wcpu),
            "broker_cpu_ms_per_update_median": statistics.median(bcpu),
            "one_worker_updates_per_s": med[1],
            "two_workers_updates_per_s": med[2],
            "ratio_two_over_one": round(med[2] / med[1], 3),
        }
    doc = {
        "bench": "intake_scale",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "boxes": args.boxes,
        "dim": args.dim,
        "bytes_per_update": 4 * args.dim,
        "trials": args.trials,
        "rows": rows,
        "summary": summary,
        "target": "two workers >= 1.4x the intake of one (broker on the same 2 cores)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    for mode, s in summary.items():
        print(
            f"{mode}: 1 worker {s['one_worker_updates_per_s']} /s, "
            f"2 workers {s['two_workers_updates_per_s']} /s, ratio {s['ratio_two_over_one']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
