"""Outbox and MQTT forwarding throughput, as ratios against a baseline from the same run.

1. Storing: one fsync'd transaction per message (``put``, the baseline) vs
   batches of 50 (``put_many``).
2. Forwarding through a real Mosquitto (TLS, ACL): one message in flight at a
   time (baseline: send, wait for PUBACK, delete) vs the forwarder's window of 32.

Run: ``python bench/outbox_throughput.py [--n 2000]``. Writes bench/results/outbox.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from edgeagent.ops.pki import Pki
from edgeagent.transport import topics
from edgeagent.transport.mqtt import MqttLink, OutboxForwarder
from edgeagent.transport.outbox import Outbox
from edgelab.broker import Broker

FLEET = "bench"
PAYLOAD = 512  # bytes: a typical alert / small telemetry record


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_store(tmp: Path, n: int) -> dict[str, float]:
    ob = Outbox(tmp / "store.sqlite3")
    payload = os.urandom(PAYLOAD)
    t = time.perf_counter()
    for _ in range(n):
        ob.put("t/x", payload, "telemetry")
    single = _rate(n, time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n // 50):
        ob.put_many([("t/x", payload, "telemetry", None, False) for _ in range(50)])
    batched = _rate((n // 50) * 50, time.perf_counter() - t)
    ob.close()
    return {"put_per_s": single, "put_many50_per_s": batched, "ratio": batched / single}


def _forward(pki: Pki, broker: Broker, tmp: Path, n: int, window: int) -> float:
    ob = Outbox(tmp / f"fwd{window}.sqlite3")
    topic = topics.update(FLEET, "box-a")
    ob.put_many([(topic, os.urandom(PAYLOAD), "update", None, False) for _ in range(n)])
    link = MqttLink("box-a", broker.host, broker.port, pki.client_files("box-a"), FLEET,
                    status=False).connect()  # fmt: skip
    try:
        fw = OutboxForwarder(ob, link, window=window)
        t = time.perf_counter()
        assert fw.drain(120), "forwarder did not drain"
        rate = _rate(n, time.perf_counter() - t)
    finally:
        link.close()
        ob.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = bench_store(tmp, args.n)
        pki = Pki.init(tmp / "pki", fleet=FLEET)
        pki.issue("box-a")
        with Broker(pki, tmp / "broker") as broker:
            w1 = _forward(pki, broker, tmp, args.n // 4, window=1)
            w32 = _forward(pki, broker, tmp, args.n, window=32)
    result = {
        "n": args.n,
        "payload_bytes": PAYLOAD,
        "store": store,
        "forward": {"window1_per_s": w1, "window32_per_s": w32, "ratio": w32 / w1},
    }
    out = Path(__file__).parent / "results" / "outbox.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"outbox store   put():          {store['put_per_s']:9.0f} msg/s (baseline)")
    print(
        f"outbox store   put_many(50):   {store['put_many50_per_s']:9.0f} msg/s "
        f"x{store['ratio']:.1f}"
    )
    print(f"forward        1 in flight:    {w1:9.0f} msg/s (baseline)")
    print(f"forward        32 in flight:   {w32:9.0f} msg/s x{w32 / w1:.1f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
