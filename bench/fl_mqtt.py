"""SecAgg+ rounds over a real Mosquitto broker: wall time, server time and bytes per box.

OVER MQTT (the in-memory version is bench/fl_round.py): a real broker with the
shipped TLS + ACL config, the real aggregator service (``federation.aggregator``) in
this process and N real box clients (``federation.client.FlClient``, each with its own
mTLS connection, network thread and worker) spread over worker processes.
The model is a real ONNX detector with ~10k parameters; each box submits a
fixed random update with n_k = 50. Each size runs ``--rounds`` rounds.

Baseline measured in the same run, same broker, same boxes: a plaintext
round in which every box publishes its Ed25519-signed float32 update
(``node/<id>/update``) and the aggregator verifies and sums them. Ratios are
SecAgg+ over that baseline.

Reported per size: wall time per round (announcement to published model),
aggregator protocol CPU time per round, its growth relative to the smallest
size, and per box per round: envelope bytes up, stage bytes down (announcement
+ routed stages), the signed model download, and MQTT packet overhead
(PUBLISH headers + topic + PUBACK; TLS record framing not included).

Boxes run as threads, ``--per-worker`` (12) per worker process: with ~100 box
threads in one process the GIL convoys their paho threads and a 200-box round
took 26 s instead of 5.5 s; on a real fleet every box is its own process.
All processes share the machine (2 cores here) with the broker and the
aggregator, so box CPU time is included in the wall time.

Run: python bench/fl_mqtt.py [--sizes 10 50 200] [--dim 10000] [--rounds 2] [--per-worker 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeagent.federation.aggregator import Aggregator  # noqa: E402
from edgeagent.federation.client import FlClient  # noqa: E402
from edgeagent.fl.constants import AGGREGATOR, Stage  # noqa: E402
from edgeagent.fl.identity import load_ca, load_identity  # noqa: E402
from edgeagent.fl.messages import EnvelopeReceiver, Message, encode  # noqa: E402
from edgeagent.model.graph import build_model, get_params, parse_model, sha256_hex, to_bytes  # noqa: E402
from edgeagent.model.meta import ModelMeta, init_params  # noqa: E402
from edgeagent.ops.config import parse_config  # noqa: E402
from edgeagent.ops.pki import Pki  # noqa: E402
from edgeagent.transport import topics  # noqa: E402
from edgeagent.transport.mqtt import Message as MqttMessage  # noqa: E402
from edgeagent.transport.mqtt import MqttLink  # noqa: E402
from edgelab.broker import Broker  # noqa: E402

N_K = 50
RESULTS = ROOT / "bench" / "results" / "fl_mqtt.json"
#: Stages a box answers (4 PUBLISH up) and receives (announcement + 5 routed PUBLISH down).
UP_MSGS, DOWN_MSGS = 4, 6


def make_model(dim: int) -> bytes:
    """A real detector graph with about ``dim`` parameters (8 features, 5 classes)."""
    feats = tuple(f"f{i}" for i in range(8))
    hidden = max(1, round((dim - 81) / 30))  # n_params = 30 * hidden + 81 for this shape
    meta = ModelMeta(feats, ("normal", "a", "b", "c", "sensor_fault"), [0.0] * 8, [1.0] * 8,
                     hidden=hidden, latent=4)  # fmt: skip
    return to_bytes(build_model(meta, init_params(meta.spec, seed=1)))


class FixedLearner:
    """A box whose update is a fixed random vector (what it sends is all that matters here)."""

    def __init__(self, dim: int, seed: int) -> None:
        self._delta = np.random.default_rng(seed).normal(0, 0.01, dim).astype(np.float32)
        self.n_k = N_K

    def delta(self) -> np.ndarray:
        return self._delta

    def reset_global(self, w_global: np.ndarray) -> None:
        return None


def mqtt_publish_overhead(topic: str) -> int:
    """PUBLISH fixed header + topic + packet id + properties length, plus the 4-byte PUBACK."""
    return 1 + 3 + 2 + len(topic.encode()) + 2 + 1 + 4


# -- worker process: a share of the boxes -------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    if os.environ.get("FL_BENCH_LOG"):  # debugging: box-side log lines with timestamps
        import logging

        logging.basicConfig(level=os.environ["FL_BENCH_LOG"], stream=sys.stderr,
                            format="%(asctime)s %(process)d %(name)s %(message)s")  # fmt: skip
    pki = Pki.open(Path(args.pki))
    ca = load_ca(pki.ca_cert)
    model = Path(args.model).read_bytes()
    w = get_params(parse_model(model))
    clients: list[FlClient] = []
    for i, box in enumerate(args.boxes):
        files = pki.client_files(box)
        link = MqttLink(box, "127.0.0.1", args.port, files, args.fleet, identity=box,
                        keepalive_s=120)  # fmt: skip
        c = FlClient(box, args.fleet, load_identity(files.cert, ca, box), ca,
                     FixedLearner(w.size, i), link, global_sha256=sha256_hex(model))  # fmt: skip
        c.start()
        clients.append(c)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "plain":  # baseline: one signed plaintext update per box
            nonce = bytes.fromhex(cmd[1])
            for c in clients:
                body = {"delta": c.learner.delta().astype("<f4").tobytes(), "n": N_K}
                msg = Message(c.box_id, AGGREGATOR, 0, Stage.COLLECT_MASKED, 0, nonce, body)
                c.link.publish(topics.update(args.fleet, c.box_id), encode(msg, c.identity.key))
        elif cmd[0] == "stop":
            break
    out = [
        {"box": c.box_id, "rounds": c.rounds, "bytes_model": c.counters["bytes_model"]}
        for c in clients
    ]
    for c in clients:
        c.stop()
    Path(args.out).write_text(json.dumps(out))


# -- driver -------------------------------------------------------------------------------------


def spawn_workers(
    tmp: Path, pki: Pki, port: int, fleet: str, boxes: list[str], model: Path, workers: int
) -> list[tuple[subprocess.Popen[str], Path]]:
    procs = []
    for k in range(workers):
        mine = boxes[k::workers]
        if not mine:
            continue
        out = tmp / f"{fleet}-w{k}.json"
        cmd = [sys.executable, __file__, "--worker", "--pki", str(pki.root),
               "--port", str(port), "--fleet", fleet, "--model", str(model),
               "--out", str(out), "--boxes", *mine]  # fmt: skip
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append((p, out))
    for p, _ in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def plaintext_baseline(
    pki: Pki, port: int, fleet: str, boxes: list[str], procs: list[Any], dim: int
) -> dict[str, float]:
    """Signed float32 updates over the same broker, verified and summed by the aggregator."""
    ca = load_ca(pki.ca_cert)
    keys = {b: load_identity(pki.client_files(b).cert, ca, b).public_key for b in boxes}
    nonce = os.urandom(16)
    rx = EnvelopeReceiver(AGGREGATOR, keys)
    rx.begin_round(0, nonce)
    total = np.zeros(dim, np.float64)
    got: set[str] = set()
    nbytes = [0]
    server_s = [0.0]
    done = threading.Event()
    lock = threading.Lock()

    def on_msg(m: MqttMessage) -> None:
        t0 = time.perf_counter()
        msg = rx.receive(m.payload).message
        with lock:
            total[:] += N_K * np.frombuffer(msg.body["delta"], "<f4")
            got.add(msg.src)
            nbytes[0] += len(m.payload) + mqtt_publish_overhead(m.topic)
            server_s[0] += time.perf_counter() - t0
            if len(got) == len(boxes):
                done.set()

    link = MqttLink("bench-plain", "127.0.0.1", port, pki.client_files(AGGREGATOR), fleet,
                    identity=AGGREGATOR, status=False, on_message=on_msg)  # fmt: skip
    link.connect(timeout=30)
    link.subscribe(topics.node_filter(fleet, "update")).wait(10)
    t0 = time.perf_counter()
    for p, _ in procs:
        p.stdin.write(f"plain {nonce.hex()}\n")
        p.stdin.flush()
    if not done.wait(120):
        raise RuntimeError(f"plaintext baseline: only {len(got)} of {len(boxes)} updates arrived")
    wall = time.perf_counter() - t0
    link.close()
    return {
        "wall_s": wall,
        "server_s": server_s[0],
        "bytes_up_per_box": nbytes[0] / len(boxes),
    }


def run_size(tmp: Path, pki: Pki, broker: Broker, n: int, model: Path, args: Any) -> dict[str, Any]:
    fleet = f"bench{n}"
    boxes = [f"b{i:04d}" for i in range(n)]
    workers = max(1, -(-n // args.per_worker))
    procs = spawn_workers(tmp, pki, broker.port, fleet, boxes, model, workers)
    files = pki.client_files(AGGREGATOR)
    cfg = parse_config({
        "agent": {"box_id": AGGREGATOR, "fleet": fleet, "state_dir": str(tmp / f"agg{n}")},
        "federation": {"enabled": True, "broker_host": "127.0.0.1", "broker_port": broker.port,
                       "ca_file": str(files.ca), "cert_file": str(files.cert),
                       "key_file": str(files.key), "noise_multiplier": 0.0},
        "aggregator": {"min_boxes": n, "max_boxes": n, "min_survivors": 2, "rounds": args.rounds,
                       "stage_timeout_s": 120.0, "round_interval_s": 0.5, "n_cap": 100,
                       "initial_model": str(model)},
    })  # fmt: skip
    agg = Aggregator(cfg)
    agg.start()
    deadline = time.monotonic() + 120
    while len(agg.eligible()) < n and time.monotonic() < deadline:
        agg.step()
    t = threading.Thread(target=agg.run, daemon=True)
    t.start()
    t.join(600)
    agg.close()
    base = plaintext_baseline(pki, broker.port, fleet, boxes, procs,
                              get_params(parse_model(model.read_bytes())).size)  # fmt: skip
    box_stats: list[dict[str, Any]] = []
    for p, out in procs:
        p.stdin.write("stop\n")
        p.stdin.flush()
        p.wait(120)
        box_stats.extend(json.loads(out.read_text()))
    rounds = [r for r in agg.state["rounds"] if r["status"] == "completed"]
    if len(rounds) != args.rounds:
        raise RuntimeError(f"{n} boxes: rounds {agg.state['rounds']}")
    per_round = [r["seconds"] for r in rounds]
    server = [r["server_seconds"] for r in rounds]
    ups = [r["bytes_up"] for b in box_stats for r in b["rounds"] if r["status"] == "ok"]
    downs = [r["bytes_down"] for b in box_stats for r in b["rounds"] if r["status"] == "ok"]
    # each box took the starting model (retained, at connect) and one new model per round
    model_dl = float(np.mean([b["bytes_model"] for b in box_stats])) / (args.rounds + 1)
    up_topic = topics.node(fleet, boxes[0], "collect_masked")
    down_topic = topics.round_topic(fleet, 1, "collect_masked", boxes[0])
    overhead_up = UP_MSGS * mqtt_publish_overhead(up_topic)
    overhead_down = DOWN_MSGS * mqtt_publish_overhead(down_topic)
    return {
        "boxes": n,
        "params": int(get_params(parse_model(model.read_bytes())).size),
        "rounds": args.rounds,
        "worker_processes": workers,
        "wall_s_per_round": float(np.mean(per_round)),
        "stage_s": rounds[-1]["stage_seconds"],
        "server_s_per_round": float(np.mean(server)),
        "bytes_up_per_box": float(np.mean(ups)) + overhead_up,
        "bytes_down_stages_per_box": float(np.mean(downs)) + overhead_down,
        "bytes_model_download_per_box": model_dl,
        "raw_vector_bytes": 4 * int(get_params(parse_model(model.read_bytes())).size),
        "baseline_plaintext_wall_s": base["wall_s"],
        "baseline_plaintext_server_s": base["server_s"],
        "baseline_bytes_up_per_box": base["bytes_up_per_box"],
        "secagg_over_plaintext_wall": float(np.mean(per_round)) / base["wall_s"],
        "secagg_over_plaintext_bytes_up": (float(np.mean(ups)) + overhead_up)
        / base["bytes_up_per_box"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--dim", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-worker", type=int, default=12,
                    help="boxes per worker process (see the module docstring)")  # fmt: skip
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pki", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--fleet", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--boxes", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="fl-mqtt-"))
    t0 = time.perf_counter()
    pki = Pki.init(tmp / "pki", fleet="bench")
    pki.issue_aggregator()
    for i in range(max(args.sizes)):
        pki.issue(f"b{i:04d}")
    print(f"PKI for {max(args.sizes)} boxes in {time.perf_counter() - t0:.1f} s")
    model = tmp / "model.onnx"
    model.write_bytes(make_model(args.dim))
    rows = []
    with Broker(pki, tmp / "broker") as broker:
        for n in args.sizes:
            row = run_size(tmp, pki, broker, n, model, args)
            rows.append(row)
            print(
                f"{n:4d} boxes: {row['wall_s_per_round']:6.2f} s/round "
                f"(plaintext {row['baseline_plaintext_wall_s']:.2f} s, "
                f"x{row['secagg_over_plaintext_wall']:.1f}), server "
                f"{row['server_s_per_round']:.2f} s, up {row['bytes_up_per_box'] / 1e3:.1f} kB/box "
                f"(x{row['secagg_over_plaintext_bytes_up']:.3f} plaintext), down "
                f"{row['bytes_down_stages_per_box'] / 1e3:.1f} kB stages + "
                f"{row['bytes_model_download_per_box'] / 1e3:.1f} kB model"
            )
    base = rows[0]
    for row in rows:
        row["server_growth_vs_smallest"] = row["server_s_per_round"] / base["server_s_per_round"]
        row["boxes_growth_vs_smallest"] = row["boxes"] / base["boxes"]
    doc = {
        "mode": "mqtt (real mosquitto, mTLS, one connection per box)",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "boxes_per_worker_process": args.per_worker,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
