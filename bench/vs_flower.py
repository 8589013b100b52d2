"""Side by side with Flower: same model, same non-IID data, same clients and rounds, one run.

What each side runs (all processes on this machine, 127.0.0.1 only):

* **edgeagent** (``edgeagent``): a real Mosquitto broker with the shipped
  mTLS + ACL config; the real aggregator service (``federation.aggregator.Aggregator``,
  SecAgg+ on) in its own process; one process per client running the real
  box client (``federation.client.FlClient``: signed hello, announcement checks,
  SecAgg+ stages, signed model download and verification).
  ``edgeagent_plain`` = the same with secure aggregation off
  (``[aggregator] secure_aggregation = false``, boxes with
  ``allow_plaintext``): each box sends one signed envelope with its clipped
  float32 update over the same mTLS broker, n_k-weighted FedAvg.
* **Flower** (``flwr`` from PyPI, Deployment Runtime as its documentation
  recommends for real deployments: ``flower-superlink`` + one
  ``flower-supernode`` per client, each running the ClientApp in its default
  subprocess isolation; the run submitted with ``flwr run``; ``--insecure``,
  i.e. no TLS, on loopback):
  ``flower`` = the Message API (``flwr.serverapp.strategy.FedAvg`` +
  ``@app.train`` ClientApp), the current recommended way;
  ``flower_secagg`` = SecAgg+ as in Flower's secure-aggregation example
  (``LegacyContext`` + ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)``,
  ``NumPyClient`` with ``secaggplus_mod``), the only way Flower offers SecAgg+.
  Each Flower side also runs ``_tuned`` (TLS, one CPU per SuperNode, the
  SuperExec poll at its minimum) and ``_patched`` (tuned, with the two
  hard-coded 3 s polls shortened): see ``FLOWER_SETTINGS``.

Same work on every side: the project's detector (``edgeagent.model``: MLP
head + autoencoder, flat float32 parameter vector), initialised identically;
each client is one simulated patient (``firmware_sim.physiology`` ->
``pipeline.windows`` -> ``pipeline.features``, population standardisation),
so the partition is naturally non-IID; local training is the same function
(``edgelab.train.fit``, same epochs, batch, learning rate and seed
per client and round); the global model is the sample-weighted mean.

Measured in the same run, per side: accuracy and balanced accuracy of the
final global model on held-out patients' windows; wall time per round
(from the moment every client is connected to the final global model,
divided by the number of rounds); bytes on the wire per client per round
(every client's TCP connection goes through a counting proxy, both
directions, TLS/gRPC framing included, so it is what a cellular modem
would bill); peak resident memory per client (the client's whole process
tree) and of the server side (aggregator + Mosquitto; SuperLink + SuperExec +
ServerApp), and every process's own peak RSS and PSS;
CPU seconds per client per round (process tree). Ratios are edgeagent over
Flower.

Run: python bench/vs_flower.py [--clients 6] [--rounds 5] [--seconds 1200] [--epochs 2]
(``flwr`` comes with ``pip install -e '.[bench]'``; it pins typer/rich down, so a
``python -m venv --system-site-packages`` venv for it keeps the CLI's versions.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
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

from edgeagent.model.meta import ModelMeta, ModelSpec, init_params  # noqa: E402
from edgeagent.model.nn import forward  # noqa: E402
from edgelab.train import fit  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vs_flower.json"
HIDDEN, LATENT = 32, 12
BATCH, LR = 64, 3e-3
HOLDOUT_PATIENTS = (100, 101)


# -- the shared work: data, local training, evaluation ------------------------------------------


def spec_of(meta_json: str) -> ModelSpec:
    return ModelMeta.from_json(meta_json).spec


def local_train(
    spec: ModelSpec, w: np.ndarray, data: dict[str, np.ndarray], epochs: int, seed: int
) -> tuple[np.ndarray, int]:
    """The one local-training step both sides run: ``fit`` from the global weights."""
    w_new, _ = fit(spec, data["z"], data["m"], data["y"], epochs=epochs, batch=BATCH, lr=LR,
                   seed=seed, flat=np.asarray(w, np.float32), zp=data["zp"])  # fmt: skip
    return np.asarray(w_new, np.float32), len(data["y"])


def evaluate(spec: ModelSpec, w: np.ndarray, hold: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over classes present) on held-out windows."""
    probs, _ = forward(spec, np.asarray(w, np.float32), hold["z"], hold["m"], hold["zp"])
    pred = probs.argmax(axis=1)
    y = hold["y"]
    recalls = [float((pred[y == c] == c).mean()) for c in np.unique(y)]
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.mean(recalls))}


def prepare(tmp: Path, n_clients: int, seconds: float, hidden: int = HIDDEN,
            latent: int = LATENT) -> tuple[list[Path], Path, bytes, str]:  # fmt: skip
    """Simulate + featurise patients; write one .npz per client and the holdout; model v0."""
    from edgeagent.model.graph import build_model, to_bytes
    from edgeagent.pipeline import features
    from edgelab import baseline as build

    jobs = [("train", i, seconds) for i in range(n_clients)]
    jobs += [("held", i, seconds) for i in HOLDOUT_PATIENTS]
    data = build.make_data(jobs, processes=2)
    train, held = data[:n_clients], data[n_clients:]
    mu, sigma = build.population_stats(train)
    paths = []
    for k, d in enumerate(train):
        z, zp, m, y = build.training_arrays([d], mu, sigma, personal=False)
        p = tmp / f"client{k}.npz"
        np.savez(p, z=z, zp=zp, m=m, y=y)
        paths.append(p)
    z, zp, m, y = build.training_arrays(held, mu, sigma, personal=False)
    hold = tmp / "holdout.npz"
    np.savez(hold, z=z, zp=zp, m=m, y=y)
    meta = ModelMeta(tuple(features.FEATURE_NAMES), build.CLASSES, mu.tolist(), sigma.tolist(),
                     hidden=hidden, latent=latent)  # fmt: skip
    w0 = init_params(meta.spec, seed=0)
    return paths, hold, to_bytes(build_model(meta, w0)), meta.to_json()


def load(path: Path | str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# -- a counting TCP proxy (own process) ---------------------------------------------------------


def proxy_main(listen: int, target: int, out: Path) -> None:
    """Forward 127.0.0.1:listen -> 127.0.0.1:target, counting bytes each way; dump on SIGTERM."""
    up = [0]
    down = [0]
    conns = [0]

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, count: list[int]) -> None:
        try:
            while data := await r.read(65536):
                count[0] += len(data)
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        conns[0] += 1
        sock = cw.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sr, sw = await asyncio.open_connection("127.0.0.1", target)
        sw.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(cr, sw, up), pipe(sr, cw, down))

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()
        out.write_text(json.dumps({"up": up[0], "down": down[0], "connections": conns[0]}))

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    def __init__(self, target: int, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.out = tmp / f"proxy-{name}.json"
        self.proc = subprocess.Popen([sys.executable, __file__, "--proxy", str(self.port),
                                      str(target), str(self.out)])  # fmt: skip
        wait_port(self.port)

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        return dict(json.loads(self.out.read_text()))


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def proc_label(p: psutil.Process) -> str:
    """A readable name for one process, the same rule on both sides."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "?"
    known = ("flower-superlink", "flower-supernode", "flwr-clientapp", "flwr-serverapp",
             "mosquitto")  # fmt: skip
    for token in cmd[:3]:
        base = os.path.basename(token)
        if base in known:
            return base
        if base == "flower-superexec":
            kind = cmd[cmd.index("--plugin-type") + 1] if "--plugin-type" in cmd else ""
            return f"flower-superexec {kind}".strip()
    if "--box" in cmd:
        return "edgeagent box"
    if "--aggregator" in cmd:
        return "edgeagent aggregator"
    return os.path.basename(cmd[0]) if cmd else p.name()


class TreeMonitor:
    """Peak RSS of process trees (sum over a root and its descendants), sampled every 100 ms.

    Every process seen is also kept on its own (label, peak RSS, peak PSS every 0.5 s, CPU), so
    each side's processes are listed and counted by the same rule.
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = {k: psutil.Process(p) for k, p in roots.items()}
        self.peak = dict.fromkeys(roots, 0)
        self.cpu: dict[str, dict[int, float]] = {k: {} for k in roots}
        self.procs: dict[int, dict[str, Any]] = {}
        self._n = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self._n += 1
        for k, root in self.roots.items():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss
                    total += rss
                    t = p.cpu_times()
                    self.cpu[k][p.pid] = t.user + t.system
                    rec = self.procs.get(p.pid)
                    if rec is None:
                        rec = self.procs[p.pid] = {"root": k, "label": proc_label(p),
                                                   "rss": 0, "pss": 0}  # fmt: skip
                    rec["rss"] = max(rec["rss"], rss)
                    rec["cpu_s"] = t.user + t.system
                    if self._n % 5 == 0:
                        rec["pss"] = max(rec["pss"], p.memory_full_info().pss)
            self.peak[k] = max(self.peak[k], total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.1)

    def start(self) -> TreeMonitor:
        self._t.start()
        return self

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        self._t.join()

    def cpu_s(self, key: str) -> float:
        return float(sum(self.cpu[key].values()))

    def processes(self, keys: list[str]) -> list[dict[str, Any]]:
        """Every process under these roots, grouped by label: count, peak RSS/PSS (max, sum)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for rec in self.procs.values():
            if rec["root"] in keys and rec["rss"] > 0:  # a process gone before its first sample
                groups.setdefault(rec["label"], []).append(rec)
        return [
            {"process": label, "count": len(rs),
             "peak_rss_mb_max": round(max(r["rss"] for r in rs) / 2**20, 1),
             "peak_rss_mb_sum": round(sum(r["rss"] for r in rs) / 2**20, 1),
             "peak_pss_mb_max": round(max(r["pss"] for r in rs) / 2**20, 1),
             "cpu_s_sum": round(sum(r.get("cpu_s", 0.0) for r in rs), 2)}
            for label, rs in sorted(groups.items())
        ]  # fmt: skip


# -- edgeagent side -----------------------------------------------------------------------------


class TrainingLearner:
    """``UpdateSource`` for ``FlClient``: trains ``local_train`` from every global model."""

    def __init__(self, spec: ModelSpec, w0: np.ndarray, data: dict[str, np.ndarray],
                 epochs: int, client: int) -> None:  # fmt: skip
        self.spec, self.data, self.epochs, self.client = spec, data, epochs, client
        self.round = 0
        self.n_k = 0
        self.reset_global(w0)

    def reset_global(self, w_global: np.ndarray) -> None:
        self.round += 1
        self.w_global = np.asarray(w_global, np.float32).copy()
        self.w_local, self.n_k = local_train(self.spec, self.w_global, self.data, self.epochs,
                                             seed=1000 * self.round + self.client)  # fmt: skip

    def delta(self) -> np.ndarray:
        return self.w_local - self.w_global


def box_main(a: argparse.Namespace) -> None:
    from edgeagent.federation.client import FlClient
    from edgeagent.fl.identity import load_ca, load_identity
    from edgeagent.model.graph import get_params, parse_model, sha256_hex
    from edgeagent.ops.pki import Pki
    from edgeagent.transport.mqtt import MqttLink

    pki = Pki.open(Path(a.pki))
    files = pki.client_files(a.box)
    ca = load_ca(pki.ca_cert)
    model = Path(a.model).read_bytes()
    spec = spec_of(Path(a.meta).read_text())
    learner = TrainingLearner(spec, get_params(parse_model(model)), load(a.data), a.epochs,
                              a.client)  # fmt: skip
    link = MqttLink(a.box, "127.0.0.1", a.port, files, a.fleet, identity=a.box, keepalive_s=120)
    c = FlClient(a.box, a.fleet, load_identity(files.cert, ca, a.box), ca, learner, link,
                 global_sha256=sha256_hex(model), allow_plaintext=a.plaintext)  # fmt: skip
    c.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    c.stop()


def aggregator_main(a: argparse.Namespace) -> None:
    from edgeagent.federation.aggregator import Aggregator
    from edgeagent.ops.config import parse_config

    agg = Aggregator(parse_config(json.loads(Path(a.config).read_text())))
    agg.start()
    end = time.monotonic() + 300
    while len(agg.eligible()) < a.clients and time.monotonic() < end:
        agg.step()
    Path(a.ready).write_text(str(time.time()))
    agg.run()
    agg.close()


def run_edgeagent(args: argparse.Namespace, tmp: Path, paths: list[Path], model: bytes,
                  meta: str, secure: bool = True) -> dict[str, Any]:  # fmt: skip
    from edgeagent.fl.constants import AGGREGATOR
    from edgeagent.model.graph import get_params, parse_model
    from edgeagent.ops.pki import Pki
    from edgelab.broker import Broker

    fleet = "versus" if secure else "versusplain"
    d = tmp / ("edge" if secure else "edge-plain")
    d.mkdir()
    pki = Pki.init(d / "pki", fleet=fleet)
    pki.issue_aggregator()
    boxes = [f"box{k}" for k in range(args.clients)]
    for b in boxes:
        pki.issue(b)
    (d / "model.onnx").write_bytes(model)
    (d / "meta.json").write_text(meta)
    broker = Broker(pki, d / "broker").start()
    proxy = Proxy(broker.port, d, "edge")
    files = pki.client_files(AGGREGATOR)
    cfg = {
        "agent": {"box_id": AGGREGATOR, "fleet": fleet, "state_dir": str(d / "agg")},
        "federation": {"enabled": True, "broker_host": "127.0.0.1", "broker_port": broker.port,
                       "ca_file": str(files.ca), "cert_file": str(files.cert),
                       "key_file": str(files.key), "noise_multiplier": 0.0, "clip_norm": 1000.0},
        "aggregator": {"min_boxes": args.clients, "max_boxes": args.clients,
                       "min_survivors": args.clients, "rounds": args.rounds,
                       "stage_timeout_s": 120.0, "round_interval_s": 0.0, "n_cap": 100_000,
                       "initial_model": str(d / "model.onnx"),
                       "secure_aggregation": secure, "noise": "central"},
    }  # fmt: skip
    (d / "agg.json").write_text(json.dumps(cfg))
    t_start = time.time()
    agg = subprocess.Popen([sys.executable, __file__, "--aggregator", "--config",
                            str(d / "agg.json"), "--clients", str(args.clients),
                            "--ready", str(d / "ready")])  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--box",
                b,
                "--client",
                str(k),
                "--pki",
                str(d / "pki"),
                "--port",
                str(proxy.port),
                "--fleet",
                fleet,
                "--model",
                str(d / "model.onnx"),
                "--meta",
                str(d / "meta.json"),
                "--data",
                str(paths[k]),
                "--epochs",
                str(args.epochs),
                *([] if secure else ["--plaintext"]),
            ]
        )
        for k, b in enumerate(boxes)
    ]
    roots = {"server": agg.pid, "broker": broker.pid}
    roots.update({b: p.pid for b, p in zip(boxes, procs, strict=True)})
    mon = TreeMonitor(roots).start()
    try:
        agg.wait(args.timeout)
        t_end = time.time()
    finally:
        mon.stop()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if agg.poll() is None:
            agg.kill()
        wire = proxy.stop()
        broker.stop()
    state = json.loads((d / "agg" / "aggregator.json").read_text())
    done = [r for r in state["rounds"] if r.get("status") == "completed"]
    if len(done) != args.rounds:
        raise RuntimeError(f"edgeagent: rounds {state['rounds']}")
    w = get_params(parse_model((d / "agg" / state["model"]["file"]).read_bytes()))
    ready_t = float((d / "ready").read_text())
    name = ("edgeagent (SecAgg+ on, Mosquitto mTLS)" if secure
            else "edgeagent (SecAgg off: plaintext updates over Mosquitto mTLS)")  # fmt: skip
    return side_result(
        name, args, mon, boxes, wire,
        wall=t_end - ready_t, startup=ready_t - t_start, w=w, meta=meta,
        in_round=[r["seconds"] for r in done], server=["server", "broker"],
    )  # fmt: skip


def side_result(name: str, args: argparse.Namespace, mon: TreeMonitor, clients: list[str],
                wire: dict[str, int], *, wall: float, startup: float, w: np.ndarray, meta: str,
                in_round: list[float] | None = None,
                server: tuple[str, ...] | list[str] = ("server",)) -> dict[str, Any]:  # fmt: skip
    hold = load(args.holdout_path)
    acc = evaluate(spec_of(meta), w, hold)
    n, r = len(clients), args.rounds
    return {
        "side": name,
        **acc,
        "wall_s_per_round": round(wall / r, 3),
        "startup_s": round(startup, 3),
        "in_round_s": in_round,
        "bytes_per_client_round": round((wire["up"] + wire["down"]) / n / r),
        "bytes_up_per_client_round": round(wire["up"] / n / r),
        "bytes_down_per_client_round": round(wire["down"] / n / r),
        "client_peak_rss_mb": round(float(np.mean([mon.peak[c] for c in clients])) / 2**20, 1),
        "client_peak_rss_mb_max": round(max(mon.peak[c] for c in clients) / 2**20, 1),
        "server_peak_rss_mb": round(sum(mon.peak[k] for k in server) / 2**20, 1),
        "client_cpu_s_per_round": round(float(np.mean([mon.cpu_s(c) for c in clients])) / r, 3),
        "server_cpu_s_per_round": round(sum(mon.cpu_s(k) for k in server) / r, 3),
        "client_processes": mon.processes(clients),
        "server_processes": mon.processes(list(server)),
    }


# -- Flower side --------------------------------------------------------------------------------

SERVER_APP = '''
"""Flower ServerApp written as Flower's documentation shows (Message API / SecAgg+ example)."""
import json, sys, time
from pathlib import Path
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _save(cfg, rnd, arrays):
    out = Path(cfg["out-dir"])
    np.save(out / "final.npy", arrays[0])
    with open(out / "rounds.jsonl", "a") as f:
        f.write(json.dumps({"round": rnd, "t": time.time()}) + "\\n")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n, rounds = int(cfg["num-clients"]), int(cfg["num-server-rounds"])
    w0 = [np.load(cfg["initial"])]
    if int(cfg["secagg"]):
        from flwr.common import ndarrays_to_parameters
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.strategy import FedAvg
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        def evaluate_fn(rnd, ndarrays, config):
            _save(cfg, rnd, ndarrays)
            return None

        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n,
                          min_available_clients=n, initial_parameters=ndarrays_to_parameters(w0),
                          evaluate_fn=evaluate_fn,
                          on_fit_config_fn=lambda rnd: {"server_round": rnd})
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                            strategy=strategy)
        fit_workflow = SecAggPlusWorkflow(num_shares=int(cfg["num-shares"]),
                                          reconstruction_threshold=int(cfg["threshold"]),
                                          max_weight=float(cfg["max-weight"]))
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, ctx)
    else:
        from flwr.serverapp.strategy import FedAvg

        def evaluate_fn(rnd, arrays: ArrayRecord):
            _save(cfg, rnd, arrays.to_numpy_ndarrays())
            return MetricRecord({})

        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                          min_available_nodes=n)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(w0), num_rounds=rounds,
                       train_config=ConfigRecord({}), evaluate_fn=evaluate_fn)
    (Path(cfg["out-dir"]) / "done").write_text("1")
'''

CLIENT_APP = '''
"""Flower ClientApp: Message API @app.train, or NumPyClient + secaggplus_mod for SecAgg+."""
import sys
sys.path.insert(0, "@BENCH@")
import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import vs_flower as common

_SPEC = common.spec_of(open("@META@").read())
_DATA = {}


def _data(context):
    path = context.node_config["data-path"]
    if path not in _DATA:
        _DATA[path] = common.load(path)
    return _DATA[path]


def _train(context, w, rnd):
    k = int(context.node_config["partition-id"])
    epochs = int(context.run_config["local-epochs"])
    return common.local_train(_SPEC, w, _data(context), epochs, seed=1000 * rnd + k)


if "@SECAGG@" == "1":
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod

    class EdgeClient(NumPyClient):
        def __init__(self, context):
            self.context = context

        def fit(self, parameters, config):
            rnd = int(config.get("server_round", 0))
            w, n = _train(self.context, parameters[0], rnd)
            return [w], n, {}

    def client_fn(context: Context):
        return EdgeClient(context).to_client()

    app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
else:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        w = msg.content["arrays"].to_numpy_ndarrays()[0]
        rnd = int(msg.content["config"].get("server-round", 0))
        w_new, n = _train(context, w, rnd)
        content = RecordDict({"arrays": ArrayRecord([w_new]),
                              "metrics": MetricRecord({"num-examples": n})})
        return Message(content=content, reply_to=msg)
'''

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "edgeflower"
version = "1.0.0"
dependencies = ["flwr"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "edgeagent-bench"

[tool.flwr.app.components]
serverapp = "edgeflower.server_app:app"
clientapp = "edgeflower.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 3
num-clients = 2
local-epochs = 1
secagg = 0
num-shares = 3
threshold = 2
max-weight = 100000.0
initial = ""
out-dir = ""
"""


#: Flower settings. ``defaults``: as the quickstart deploys it (``--insecure``, subprocess
#: isolation, no pinning). ``tuned``: TLS on the Fleet/Control/ServerAppIo APIs, each SuperNode
#: (and the SuperExec and ClientApp processes it starts) pinned to one CPU with taskset (node k on
#: CPU k mod ncpu), the SuperExec task poll at its smallest allowed value (0.01 s,
#: ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``). The SuperNode's idle pull sleep and the ServerApp
#: grid's reply poll are ``time.sleep(3)`` in flwr 1.42's source with no setting, so ``tuned``
#: keeps them; ``patched`` is ``tuned`` plus a sitecustomize that shortens exactly those 3 s
#: sleeps to POLL_PATCH_S, which Flower's configuration does not offer: it shows what is left
#: once polling is out of the way. Subprocess isolation in every setting: ``--isolation
#: process`` launches the same ``flwr-clientapp`` per message, only from a SuperExec the
#: operator runs (supercore/superexec/executor/subprocess_executor.py), so it is not lighter.
FLOWER_SETTINGS = ("defaults", "tuned", "patched")
POLL_PATCH_S = 0.05
SITECUSTOMIZE = f"""
import time as _t
_sleep = _t.sleep
def _short(s):
    return _sleep({POLL_PATCH_S} if s == 3 else s)
_t.sleep = _short
"""


def make_tls(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 (the SuperLink's TLS), PEM files in d."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bench-ca")).issuer_name(name("bench-ca"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.DNSName("localhost")])  # fmt: skip
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).add_extension(san, critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    out = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))  # fmt: skip
    return out


def run_flower(args: argparse.Namespace, tmp: Path, paths: list[Path], meta: str,
               w0: np.ndarray, secagg: bool,
               setting: str = "defaults") -> dict[str, Any]:  # fmt: skip
    from edgeagent.fl.secagg import choose_degree, choose_threshold

    tag = "flower_secagg" if secagg else "flower"
    if setting != "defaults":
        tag += f"_{setting}"
    d = tmp / tag
    app = d / "edgeflower"
    app.mkdir(parents=True)
    (d / "out").mkdir()
    (d / "meta.json").write_text(meta)
    np.save(d / "w0.npy", w0)
    (app / "__init__.py").write_text("")
    (app / "server_app.py").write_text(SERVER_APP)
    (app / "client_app.py").write_text(
        CLIENT_APP.replace("@BENCH@", str(ROOT / "bench")).replace("@META@", str(d / "meta.json"))
        .replace("@SECAGG@", "1" if secagg else "0"))  # fmt: skip
    (d / "pyproject.toml").write_text(PYPROJECT)
    home = d / "flwr-home"
    home.mkdir()
    # Flower 1.42 serves the Runtime (ServerApp), Fleet and Control APIs over HTTP on one port
    ports = {"api": free_port()}
    tls = make_tls(d) if setting != "defaults" else None
    security = f'root-certificates = "{tls["ca"]}"' if tls else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "127.0.0.1:{ports["api"]}"\n{security}\n'
    )
    # no telemetry on any setting: nothing outside this machine can be reached
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0"}
    if setting != "defaults":
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.01"
    if setting == "patched":
        (d / "patch").mkdir()
        (d / "patch" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(d / "patch"),
                                                          env.get("PYTHONPATH")]))  # fmt: skip
    link_sec = (["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]),
                 "--ssl-keyfile", str(tls["key"])] if tls else ["--insecure"])  # fmt: skip
    node_sec = ["--root-certificates", str(tls["ca"])] if tls else ["--insecure"]
    log = open(d / "superlink.log", "w")  # noqa: SIM115
    link = subprocess.Popen(["flower-superlink", *link_sec,
                             "--host", "127.0.0.1", "--port", str(ports["api"]),
                             "--database", str(d / "state.db"),
                             "--disable-runtime-dependency-installation"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d)  # fmt: skip
    wait_port(ports["api"])
    proxy = Proxy(ports["api"], d, "fleet")
    nodes = []
    for k, p in enumerate(paths):
        nlog = open(d / f"supernode{k}.log", "w")  # noqa: SIM115
        pin = ["taskset", "-c", str(k % (os.cpu_count() or 1))] if setting != "defaults" else []
        nodes.append(subprocess.Popen(
            [*pin, "flower-supernode", *node_sec, "--superlink", f"127.0.0.1:{proxy.port}",
             "--host", "127.0.0.1", "--port", str(free_port()),
             "--node-config", f'partition-id={k} data-path="{p}"'],
            env={**env, "FLWR_HOME": str(d / f"node{k}")}, stdout=nlog,
            stderr=subprocess.STDOUT, cwd=d))  # fmt: skip
    mon = TreeMonitor({"server": link.pid, **{f"n{k}": p.pid for k, p in enumerate(nodes)}})
    mon.start()
    n = len(paths)
    degree = choose_degree(n)
    run_cfg = (f"num-server-rounds={args.rounds} num-clients={n} local-epochs={args.epochs} "
               f"secagg={int(secagg)} num-shares={degree + 1} "
               f"threshold={choose_threshold(degree)} initial=\"{d / 'w0.npy'}\" "
               f"out-dir=\"{d / 'out'}\"")  # fmt: skip
    time.sleep(2.0)  # supernodes register with the SuperLink
    t0 = time.time()
    try:
        r = subprocess.run(["flwr", "run", str(d), "bench", "--run-config", run_cfg],
                           env=env, cwd=d, capture_output=True, text=True, timeout=120)  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"flwr run failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")
        end = time.monotonic() + args.timeout
        while not (d / "out" / "done").exists():
            if time.monotonic() > end:
                raise RuntimeError(f"{tag}: no result; see {d}/superlink.log")
            time.sleep(0.1)
        t1 = time.time()
    finally:
        mon.stop()
        for p in nodes:
            p.send_signal(signal.SIGTERM)
        for p in nodes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        link.send_signal(signal.SIGTERM)
        try:
            link.wait(15)
        except subprocess.TimeoutExpired:
            link.kill()
        wire = proxy.stop()
    rounds = [json.loads(x) for x in (d / "out" / "rounds.jsonl").read_text().splitlines()]
    trained = [x for x in rounds if x["round"] >= 1]
    if len(trained) != args.rounds:
        raise RuntimeError(f"{tag}: rounds {rounds}")
    # per-round wall from the initial evaluation (round 0, ServerApp up, nodes connected)
    # to the last round's, so that process start-up is left out as on the edgeagent side
    start = [x["t"] for x in rounds if x["round"] == 0]
    t0_rounds = start[0] if start else t0
    w = np.load(d / "out" / "final.npy")
    name = ("Flower SecAgg+ (LegacyContext + SecAggPlusWorkflow, secaggplus_mod)" if secagg
            else "Flower FedAvg (Message API)") + f", {setting}"  # fmt: skip
    return side_result(name, args, mon, [f"n{k}" for k in range(n)], wire,
                       wall=trained[-1]["t"] - t0_rounds, startup=t0_rounds - t0, w=w,
                       meta=meta, in_round=[round(t1 - t0, 3)])  # fmt: skip


# -- driver -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1200.0, help="simulated time per patient")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600.0)
    all_sides = ["edgeagent", "edgeagent_plain", "flower", "flower_secagg"]
    all_sides += ["flower_tuned", "flower_patched", "flower_secagg_tuned"]
    ap.add_argument("--sides", nargs="+", default=all_sides)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--hidden", type=int, default=HIDDEN, help="model size: hidden units")
    ap.add_argument("--latent", type=int, default=LATENT)
    # internal entry points (subprocesses)
    ap.add_argument("--proxy", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--box", help=argparse.SUPPRESS)
    ap.add_argument("--aggregator", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plaintext", action="store_true", help=argparse.SUPPRESS)
    for k in ("client", "port"):
        ap.add_argument(f"--{k}", type=int, help=argparse.SUPPRESS)
    for k in ("pki", "fleet", "model", "meta", "data", "config", "ready"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.proxy:
        proxy_main(int(a.proxy[0]), int(a.proxy[1]), Path(a.proxy[2]))
        return
    if a.box:
        box_main(a)
        return
    if a.aggregator:
        aggregator_main(a)
        return
    tmp = Path(tempfile.mkdtemp(prefix="vs-flower-"))
    t0 = time.perf_counter()
    paths, hold, model, meta = prepare(tmp, a.clients, a.seconds, a.hidden, a.latent)
    a.holdout_path = hold
    from edgeagent.model.graph import get_params, parse_model

    w0 = get_params(parse_model(model))
    sizes = [len(load(p)["y"]) for p in paths]
    n_hold = len(load(hold)["y"])
    print(f"data: {a.clients} patients x {a.seconds:.0f} s -> windows per client {sizes}, "
          f"holdout {n_hold} ({time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    sides: dict[str, dict[str, Any]] = {}
    for side in a.sides:
        t = time.perf_counter()
        if side.startswith("edgeagent"):
            sides[side] = run_edgeagent(a, tmp, paths, model, meta, secure=side == "edgeagent")
        else:
            setting = side.rsplit("_", 1)[-1] if side.endswith(FLOWER_SETTINGS) else "defaults"
            sides[side] = run_flower(a, tmp, paths, meta, w0, secagg="secagg" in side,
                                     setting=setting)  # fmt: skip
        print(f"{side}: {json.dumps(sides[side])} ({time.perf_counter() - t:.1f} s)", flush=True)
    initial = evaluate(spec_of(meta), w0, load(hold))
    ratios = {}
    # like for like: SecAgg on against Flower's SecAgg+, off against Flower's plain FedAvg;
    # and each edgeagent side against the other Flower side for the cost of the choice
    flowers = [s for s in sides if s.startswith("flower")]
    pairs = [(e, f) for e in ("edgeagent", "edgeagent_plain") for f in flowers]
    for mine, other in pairs:
        if mine in sides and other in sides:
            e, f = sides[mine], sides[other]
            ratios[f"{mine}_over_{other}"] = {
                k: round(e[k] / f[k], 3) if f[k] else None
                for k in ("accuracy", "balanced_accuracy", "wall_s_per_round",
                          "bytes_per_client_round", "client_peak_rss_mb", "server_peak_rss_mb",
                          "client_cpu_s_per_round", "server_cpu_s_per_round")
            }  # fmt: skip
    doc = {
        "bench": "vs_flower",
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "flwr": __import__("flwr").__version__,
        "clients": a.clients,
        "rounds": a.rounds,
        "local_epochs": a.epochs,
        "seconds_per_patient": a.seconds,
        "windows_per_client": sizes,
        "params": int(w0.size),
        "initial_model": initial,
        "sides": sides,
        "ratios": ratios,
        "targets": {
            "accuracy": "edgeagent >= Flower",
            "client_peak_rss_mb": "edgeagent <= 0.5 x Flower's client process",
            "bytes_per_client_round": "edgeagent <= Flower",
            "wall_s_per_round": "edgeagent <= Flower",
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    keys = ("accuracy", "balanced_accuracy", "wall_s_per_round", "bytes_per_client_round",
            "client_peak_rss_mb", "server_peak_rss_mb", "client_cpu_s_per_round")  # fmt: skip
    print(f"\n{'':36}" + "".join(f"{k[:16]:>17}" for k in keys))
    for side, s in sides.items():
        print(f"{side:36}" + "".join(f"{s[k]:>17}" for k in keys))
    for name, r in ratios.items():
        print(f"{name:36}" + "".join(f"{r[k]!s:>17}" for k in keys))
    print(f"initial model: {initial}; wrote {a.out}")


if __name__ == "__main__":
    main()
