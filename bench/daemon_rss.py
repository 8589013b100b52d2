"""Resident memory of the real daemon with 4 wearables, and where it goes, by module.

1. ``daemon``: ``edgeagent run --config`` as systemd starts it, federation on (a real Mosquitto
   with mTLS), 4 simulated serial wearables on real ptys (``firmware_sim.serialdev.PtyDevice``,
   real-time pace, 4 patients, all streams), the shipped baseline model. RSS (and USS, PSS) of
   the daemon process, sampled every second; the figure is the peak over the run. The daemon
   starts twice on one state directory: the first start seeds the model registry from
   ``detection.model_path``, the second is the box as it runs from then on (every later
   start). Both read the model with the registry's own reader (``edgeagent.model.wire``) and
   onnxruntime; whether the ``onnx`` package got loaded anyway is read from the process's
   memory map and reported (``onnx_loaded``). Target: at most 120 MB.
2. ``mappings``: at the end of the run, the daemon's ``/proc/<pid>/smaps`` grouped by what is
   mapped: each Python package's extension modules and bundled libraries (numpy,
   onnxruntime, cryptography, ...), the interpreter, system libraries, and anonymous memory
   (the Python heap, numpy arrays, onnxruntime's arenas, malloc).
3. ``imports``: a fresh interpreter importing, one after the other, what the daemon imports:
   RSS after each import (the growth is that import's cost, its dependencies not yet loaded
   included) and the Python-object memory of the same import (tracemalloc).

Run: python bench/daemon_rss.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results" / "daemon_rss.json"
MODEL = ROOT / "models" / "baseline.onnx"
TARGET_MB = 120.0
FIRST_START_S = 30.0
#: What ``edgeagent run`` loads, third-party first, in the order a daemon meets them.
IMPORTS = (
    "sqlite3", "json", "ssl", "asyncio", "numpy", "onnxruntime", "cryptography.x509",
    "cbor2", "paho.mqtt.client", "serial", "bleak", "pydantic", "psutil", "typer", "rich",
    "edgeagent.cli", "edgeagent.daemon.wiring", "edgeagent.federation.client",
    "onnx",  # last: no start loads it (model.wire reads models); an arriving global model does
)  # fmt: skip

IMPORT_CHILD = """
import importlib, json, sys, tracemalloc
import psutil
p = psutil.Process()
tracemalloc.start()
rows = [{"module": "(interpreter + psutil)", "rss_mb": p.memory_info().rss / 2**20, "py_mb": 0.0}]
for name in sys.argv[1:]:
    before = tracemalloc.get_traced_memory()[0]
    importlib.import_module(name)
    rows.append({"module": name, "rss_mb": p.memory_info().rss / 2**20,
                 "py_mb": (tracemalloc.get_traced_memory()[0] - before) / 2**20})
print(json.dumps(rows))
"""


def mapping_group(path: str) -> str:
    """Which package or part of the system a mapping belongs to."""
    if not path or path.startswith("[anon") or path == "[heap]":
        return "anonymous (Python heap, arrays, arenas, malloc)"
    if path.startswith("["):
        return path  # [stack], [vdso], ...
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            top = path.split(marker, 1)[1].split("/", 1)[0]
            return top.removesuffix(".libs").split(".")[0].lstrip("_") or top
    if "libpython" in path or "/bin/python" in path:
        return "python interpreter"
    if "/lib/python3" in path:
        return "python stdlib extensions"
    return "system libraries and files"


def smaps_by_group(pid: int) -> list[dict[str, Any]]:
    """RSS and PSS of one process from /proc/<pid>/smaps, summed per mapping group."""
    rss: dict[str, int] = defaultdict(int)
    pss: dict[str, int] = defaultdict(int)
    group = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
            group = mapping_group(parts[5] if len(parts) > 5 else "")
        elif parts and parts[0] == "Rss:":
            rss[group] += int(parts[1])
        elif parts and parts[0] == "Pss:":
            pss[group] += int(parts[1])
    rows = [{"group": g, "rss_mb": round(rss[g] / 1024, 1), "pss_mb": round(pss[g] / 1024, 1)}
            for g in rss]  # fmt: skip
    return sorted(rows, key=lambda r: -r["rss_mb"])


def import_costs() -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-c", IMPORT_CHILD, *IMPORTS], check=True,
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    prev = rows[0]["rss_mb"]
    for r in rows:
        r["rss_growth_mb"] = round(r["rss_mb"] - prev if r is not rows[0] else r["rss_mb"], 1)
        prev = r["rss_mb"]
        r["rss_mb"] = round(r["rss_mb"], 1)
        r["py_mb"] = round(r["py_mb"], 1)
    return list(rows)


def run_daemon(seconds: float, first_seconds: float = FIRST_START_S) -> dict[str, Any]:
    from edgeagent.ops.config import to_toml
    from edgeagent.ops.pki import Pki
    from edgelab.broker import Broker
    from firmware_sim.physiology import Generator, Label, SimConfig, make_patient
    from firmware_sim.serialdev import PtyDevice

    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="daemon-rss-") as tmp:
        d = Path(tmp)
        pki = Pki.init(d / "pki", fleet="rss")
        pki.issue_aggregator()
        files = pki.issue("box-rss")
        broker = Broker(pki, d / "broker").start()
        devices, serial = [], []
        for k in range(4):
            link = d / f"tty{k}"
            eps = (Label(40.0, 70.0, "fall"), Label(100.0, 130.0, "tachycardia"))
            gen = Generator(make_patient(10 + k, seed=k), SimConfig(episodes=eps))
            devices.append(PtyDevice(link, gen, device_id=f"wear-{k}", seed=k, realtime=True,
                                     duration_s=seconds + first_seconds + 60).start())  # fmt: skip
            serial.append({"port": str(link), "device_id": f"wear-{k}", "patient": f"p{k}"})
        cfg = {
            "agent": {"box_id": "box-rss", "fleet": "rss", "state_dir": str(d / "state")},
            "devices": {"serial": serial},
            "detection": {"model_path": str(MODEL)},
            "federation": {"enabled": True, "broker_host": "127.0.0.1",
                           "broker_port": broker.port, "ca_file": str(files.ca),
                           "cert_file": str(files.cert), "key_file": str(files.key)},
            "status": {"interval_s": 5.0},
            "control": {"socket_path": str(d / "ctl.sock")},
        }  # fmt: skip
        (d / "config.toml").write_text(to_toml(cfg))
        try:
            # first start: the registry is empty, the daemon seeds it from model_path
            first = _sample_daemon(d, first_seconds, smaps=True)
            # the same box restarted (state kept): what it holds from then on
            samples, mappings, status, onnx_later = _sample_daemon(d, seconds, smaps=True)
        finally:
            for dev in devices:
                dev.stop()
            broker.stop()
    peak = max(samples, key=lambda s: s["rss_mb"])
    last = samples[-1]
    counters = status.get("counters", {})
    return {
        "seconds": seconds,
        "wearables": 4,
        "first_start_peak_rss_mb": round(max(s["rss_mb"] for s in first[0]), 1),
        "first_start_mappings": first[1],
        "onnx_loaded": {"first_start": first[3], "later_start": onnx_later},
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "first_start_s": first_seconds,
        "peak_rss_mb": round(peak["rss_mb"], 1),
        "end_rss_mb": round(last["rss_mb"], 1),
        "end_uss_mb": round(last["uss_mb"], 1),
        "end_pss_mb": round(last["pss_mb"], 1),
        "rss_at_s": {str(int(s["t"])): round(s["rss_mb"], 1) for s in samples[::10]},
        "detection_windows": counters.get("detection_windows"),
        "mappings": mappings,
        "target_mb": TARGET_MB,
    }


Samples = list[dict[str, float]]


def _sample_daemon(
    d: Path, seconds: float, smaps: bool
) -> tuple[Samples, list[dict[str, Any]], dict[str, Any], bool]:
    """Run ``edgeagent run`` on d/config.toml for ``seconds``; memory every second, and
    whether the ``onnx`` package's extension is mapped at the end."""
    import contextlib

    import psutil

    log = open(d / "daemon.log", "a+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", "from edgeagent.cli import main; main()", "run", "--config",
         str(d / "config.toml")], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    p = psutil.Process(proc.pid)
    samples: list[dict[str, float]] = []
    mappings: list[dict[str, Any]] = []
    status: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"daemon exited {proc.returncode}: {log.read()[-3000:]}")
            m = p.memory_full_info()
            samples.append({"t": round(time.monotonic() - t0, 1), "rss_mb": m.rss / 2**20,
                            "uss_mb": m.uss / 2**20, "pss_mb": m.pss / 2**20})  # fmt: skip
            time.sleep(1.0)
        if smaps:
            mappings = smaps_by_group(proc.pid)
        onnx = "onnx_cpp2py_export" in Path(f"/proc/{proc.pid}/maps").read_text()
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((d / "state" / "status.json").read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return samples, mappings, status, onnx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="wall time the daemon runs")
    ap.add_argument("--first-seconds", type=float, default=FIRST_START_S,
                    help="wall time of the first start (seeding the registry)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res = {"daemon": run_daemon(a.seconds, a.first_seconds), "imports": import_costs()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    dm = res["daemon"]
    print(f"daemon first start (seeds the registry from model_path, {a.first_seconds:.0f} s): "
          f"peak RSS {dm['first_start_peak_rss_mb']} MB; onnx loaded: {dm['onnx_loaded']}; "
          f"load average {dm['load_average_before']} -> {dm['load_average_after']}")  # fmt: skip
    print(f"daemon restarted, 4 serial wearables, {a.seconds:.0f} s: "
          f"peak RSS {dm['peak_rss_mb']} MB "
          f"(end: RSS {dm['end_rss_mb']}, USS {dm['end_uss_mb']}, PSS {dm['end_pss_mb']}; "
          f"target <= {TARGET_MB:.0f} MB), {dm['detection_windows']} windows scored")  # fmt: skip
    print(f"\n{'mapped from':52}{'RSS MB':>9}{'PSS MB':>9}")
    for r in dm["mappings"]:
        if r["rss_mb"] >= 0.5:
            print(f"{r['group'][:52]:52}{r['rss_mb']:>9}{r['pss_mb']:>9}")
    print(f"\n{'import (cumulative, in order)':36}{'RSS MB':>9}{'growth':>9}{'py objs':>9}")
    for r in res["imports"]:
        print(f"{r['module']:36}{r['rss_mb']:>9}{r['rss_growth_mb']:>9}{r['py_mb']:>9}")
    print(f"wrote {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
