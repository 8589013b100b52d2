"""Accelerated soak of the daemon: memory growth and outbox behaviour over simulated hours.

The daemon's own components (``edgeagent.daemon.wiring.daemon_factory``: detection
per patient, local learner, SQLite outbox, MQTT transport with the federated
client, plus the service's pipeline and supervisor loop) run in this process
exactly as ``edgeagent run`` builds them, against a real Mosquitto broker
(mTLS, shipped ACL). The sources are replaced by a feeder thread that plays
``--wearables`` simulated patients (physiology with random anomalies and
sensor faults) onto the BlockBus ``--speed`` times faster than real time, so
a few minutes of wall time are hours of wearable data. Each patient's data
is generated once (``--pool-min`` minutes) and replayed in a loop, shifted
in time, so the simulator's own state stays out of the RSS measured.

Midway the broker is stopped for ``--outage`` of the run and started again:
alerts and status queue in the outbox, then drain. An aggregator-identity
subscriber counts what reached the fleet.

Measured, against a baseline from the same run:

* RSS: sampled every second; the baseline is the median over the window just
  after warm-up (``--warmup`` of the run), growth is the median over the last
  window relative to it (target < 5 %), plus a least-squares slope.
* Outbox: depth over time, peak during the outage, drops, and whether every
  alert message queued was received (deduplicated on ``msg-id``).

Run: ``python bench/soak.py [--minutes 3] [--wearables 5] [--speed 40]``.
Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeagent.daemon.components import BlockBus, Context, Counters, PipelineComponent  # noqa: E402
from edgeagent.daemon.health import Liveness  # noqa: E402
from edgeagent.daemon.supervisor import Supervisor  # noqa: E402
from edgeagent.daemon.wiring import daemon_factory, describe  # noqa: E402
from edgeagent.ops.config import parse_config  # noqa: E402
from edgeagent.ops.pki import Pki  # noqa: E402
from edgeagent.streams import SampleBlock, Stream  # noqa: E402
from edgeagent.transport import topics  # noqa: E402
from edgeagent.transport.mqtt import Message, MqttLink  # noqa: E402
from edgelab.broker import Broker  # noqa: E402
from firmware_sim.physiology import Generator, SimConfig, make_patient  # noqa: E402

FLEET = "soak"
BOX = "box-soak"
MODEL = REPO / "models" / "baseline.onnx"
#: Device seconds generated per feeder step and wearable (one block per stream).
CHUNK_S = 1.0


class Feeder(threading.Thread):
    """Plays simulated wearables onto the bus at ``speed`` x real time (agent clock = epoch).

    Each wearable's data is generated once (``pool_s`` seconds of physiology
    with random anomalies) and replayed in a loop, shifted in time, so the
    simulator's own memory and CPU stay out of what the soak measures (the
    physiology generator's state grows with the time it has simulated).
    """

    def __init__(
        self, bus: BlockBus, devices: list[str], speed: float, seed: int, pool_s: float
    ) -> None:
        super().__init__(name="soak-feeder", daemon=True)
        self.bus = bus
        self.devices = devices
        self.speed = speed
        self.pool_s = float(int(pool_s))
        self.pools: list[list[list[tuple[Stream, np.ndarray, np.ndarray]]]] = []
        for i in range(len(devices)):
            gen = Generator(make_patient(i, seed=seed), SimConfig(anomaly_rate_per_hour=8.0))
            seconds = []
            for _ in range(int(self.pool_s)):
                chunk = gen.advance(CHUNK_S)
                seconds.append([(Stream(n), t, v) for n, (t, v) in chunk.streams.items() if len(t)])
            self.pools.append(seconds)
        self.stop_evt = threading.Event()
        self.sim_s = 0.0
        self.blocks = 0
        self.samples = 0
        self.t0 = time.time()

    def run(self) -> None:
        start = time.monotonic()
        step = 0
        n = len(self.pools[0])
        while not self.stop_evt.is_set():
            target = (time.monotonic() - start) * self.speed
            if self.sim_s >= target:
                self.stop_evt.wait(0.01)
                continue
            shift = self.t0 + (step // n) * self.pool_s
            for dev, pool in zip(self.devices, self.pools, strict=True):
                for stream, t, v in pool[step % n]:
                    self.bus.put(SampleBlock(dev, stream, shift + t, v, step))
                    self.blocks += 1
                    self.samples += len(t)
            step += 1
            self.sim_s += CHUNK_S


class Fleet:
    """Aggregator-identity subscriber: alert messages received, deduplicated on msg-id."""

    def __init__(self, pki: Pki, broker: Broker) -> None:
        self.ids: set[str] = set()
        self.duplicates = 0
        self.lock = threading.Lock()
        self.link = MqttLink(
            "soak-fleet",
            broker.host,
            broker.port,
            pki.client_files("aggregator"),
            FLEET,
            status=False,
            on_message=self._on,
        )

    def _on(self, m: Message) -> None:
        with self.lock:
            key = m.msg_id or m.payload.hex()
            if key in self.ids:
                self.duplicates += 1
            self.ids.add(key)


def _config(tmp: Path, pki: Pki, broker: Broker, n: int) -> Any:
    files = pki.client_files(BOX)
    return parse_config(
        {
            "agent": {"box_id": BOX, "fleet": FLEET, "state_dir": str(tmp / "state")},
            "devices": {
                "serial": [
                    {"port": f"/dev/soak{i}", "device_id": f"wear-{i:02d}", "patient": f"p{i:02d}"}
                    for i in range(n)
                ]
            },
            "detection": {"model_path": str(MODEL)},
            "federation": {
                "enabled": True,
                "broker_host": broker.host,
                "broker_port": broker.port,
                "ca_file": str(files.ca),
                "cert_file": str(files.cert),
                "key_file": str(files.key),
            },
            "status": {"interval_s": 5.0, "stall_after_s": 30.0},
            "control": {"socket_path": str(tmp / "c.sock")},
        }
    )


def _build(cfg: Any) -> tuple[Supervisor, BlockBus]:
    """``service.build_supervisor`` minus the source factories (the feeder is the source)."""
    liveness, counters = Liveness(), Counters()
    bus = BlockBus(counters=counters)
    pipeline = PipelineComponent(bus, liveness, counters)
    liveness.register(pipeline.name, cfg.status.stall_after_s)
    ctx = Context(cfg, liveness, counters, bus, pipeline)
    comps = [pipeline, *daemon_factory(ctx)]
    sup = Supervisor(cfg, comps, liveness=liveness, counters=counters, control=False)
    sup.status_sinks.extend(ctx.status_sinks)
    return sup, bus


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="wall-clock length of the soak")
    ap.add_argument("--wearables", type=int, default=5)
    ap.add_argument("--speed", type=float, default=40.0, help="simulated seconds per wall second")
    ap.add_argument("--warmup", type=float, default=0.25, help="fraction of the run")
    ap.add_argument("--outage", type=float, default=0.2, help="fraction with the broker down")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-min", type=float, default=10.0, help="simulated minutes replayed")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    total = args.minutes * 60.0
    outage_at = (0.5 - args.outage / 2) * total
    outage_end = outage_at + args.outage * total
    proc = psutil.Process()

    with tempfile.TemporaryDirectory(prefix="soak-") as d:
        tmp = Path(d)
        pki = Pki.init(tmp / "pki", fleet=FLEET)
        pki.issue(BOX)
        pki.issue_aggregator()
        broker = Broker(pki, tmp / "broker").start()
        fleet = Fleet(pki, broker)
        fleet.link.connect()
        fleet.link.subscribe(topics.node_filter(FLEET, "alert")).wait(5)
        cfg = _config(tmp, pki, broker, args.wearables)
        sup, bus = _build(cfg)
        print(f"components: {', '.join(describe(sup.components))}")
        devices = [f"wear-{i:02d}" for i in range(args.wearables)]
        feeder = Feeder(bus, devices, args.speed, args.seed, args.pool_min * 60.0)
        feeder.t0 = time.time()
        runner = threading.Thread(target=sup.run, name="supervisor", daemon=True)
        runner.start()
        feeder.start()

        samples: list[dict[str, float]] = []
        t_start = time.monotonic()
        down = False
        peak_depth = 0
        while (el := time.monotonic() - t_start) < total:
            if not down and args.outage > 0 and outage_at <= el < outage_end:
                broker.stop()
                down = True
            elif down and el >= outage_end:
                broker.start()
                down = False
            snap = sup.snapshot()
            ob = snap.get("outbox") or {}
            depth = int(ob.get("depth", 0))
            peak_depth = max(peak_depth, depth)
            samples.append(
                {
                    "t": round(el, 2),
                    "sim_h": round(feeder.sim_s / 3600.0, 4),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                    "outbox_depth": depth,
                    "bus_depth": bus.depth(),
                    "broker_up": not down,
                }
            )
            time.sleep(1.0)
        if down:
            broker.start()
        feeder.stop_evt.set()
        feeder.join(10)
        # Let the pipeline finish what is queued and the outbox drain, bounded.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snap = sup.snapshot()
            if bus.depth() == 0 and (snap.get("outbox") or {}).get("depth", 1) == 0:
                break
            time.sleep(0.5)
        final = sup.snapshot()
        sup.request_stop("soak done")
        runner.join(30)
        time.sleep(1.0)  # the subscriber's last PUBLISHes
        fleet.link.close()
        broker.stop()

    c = final["counters"]
    queued = int(c.get("alerts_queued_opened", 0)) + int(c.get("alerts_queued_closed", 0))
    rss = [s["rss_mb"] for s in samples]
    ts = [s["t"] for s in samples]
    n = len(rss)
    w0 = int(n * args.warmup)
    win = max(3, n // 10)
    base = _median(rss[w0 : w0 + win])
    end = _median(rss[-win:])
    slope = (
        float(np.polyfit(ts[w0:], rss[w0:], 1)[0]) * 60.0 if n - w0 >= 3 else float("nan")
    )  # MB per wall minute after warm-up
    sim_hours = feeder.sim_s / 3600.0
    result = {
        "config": {
            "minutes": args.minutes,
            "wearables": args.wearables,
            "speed": args.speed,
            "warmup_fraction": args.warmup,
            "outage_fraction": args.outage,
            "seed": args.seed,
            "pool_minutes": args.pool_min,
        },
        "simulated_hours_per_wearable": round(sim_hours, 3),
        "simulated_wearable_hours": round(sim_hours * args.wearables, 3),
        "feeder": {"blocks": feeder.blocks, "samples": feeder.samples},
        "rss": {
            "baseline_mb": base,
            "end_mb": end,
            "growth_pct": round(100.0 * (end - base) / base, 2),
            "slope_mb_per_wall_min": round(slope, 4),
            "slope_mb_per_sim_hour": round(slope / (args.speed / 60.0), 4),
            "target_growth_pct": 5.0,
        },
        "outbox": {
            "peak_depth": peak_depth,
            "final": final.get("outbox"),
            "delivered": int(c.get("outbox_delivered", 0)),
            "alert_messages_queued": queued,
            "alert_messages_received": len(fleet.ids),
            "duplicates_received": fleet.duplicates,
            "alerts_outbox_errors": int(c.get("alerts_outbox_errors", 0)),
        },
        "pipeline": {
            "windows": int(c.get("detection_windows", 0)),
            "alerts_raised": int(c.get("alerts_raised", 0)),
            "bus_dropped": int(c.get("bus_dropped", 0)),
            "consumer_errors": int(c.get("pipeline_consumer_errors", 0)),
            "learner_trained": int(c.get("learn_trained", 0)),
        },
        "liveness_ok_at_end": bool(final["liveness"]["ok"]),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    r, o, p = result["rss"], result["outbox"], result["pipeline"]
    print(
        f"soak: {args.wearables} wearables x {sim_hours:.2f} simulated h "
        f"({args.speed:g}x) in {args.minutes:g} min"
    )
    print(
        f"RSS  baseline {r['baseline_mb']:.1f} MB (after warm-up) -> end {r['end_mb']:.1f} MB: "
        f"{r['growth_pct']:+.2f} % (target < 5 %), slope {r['slope_mb_per_sim_hour']:+.3f} MB/sim h"
    )
    fin = o["final"] or {}
    print(
        f"outbox peak depth {o['peak_depth']} during a {args.outage:.0%} broker outage, "
        f"final depth {fin.get('depth')}, dropped {fin.get('dropped')}"
    )
    print(
        f"alerts raised {p['alerts_raised']}, messages queued {o['alert_messages_queued']}, "
        f"received {o['alert_messages_received']} (duplicates {o['duplicates_received']})"
    )
    print(
        f"windows {p['windows']}, bus dropped {p['bus_dropped']}, "
        f"learner trained {p['learner_trained']}, liveness ok {result['liveness_ok_at_end']}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
