"""Serial ingest throughput: how many real-time wearables one core keeps up with.

Each simulated wearable streams ECG 250 Hz + ACC 50 Hz + skin temperature 1 Hz
(the sizing target; other streams can be added with --streams). Its bytes are
pre-encoded by the device simulator (firmware_sim, untimed), then fed in
read-sized chunks through the agent's stages, timed with ``time.process_time``
(CPU, not wall clock), each stage including the previous ones:

  1. decode     FrameDecoder (COBS + CRC + parse)             <- baseline
  2. +source    FrameMapper: seq/dup tracking, agent-clock mapping, Gaps
  3. +windows   Windower push + pop_ready (10 s windows, 2 s hop)
  4. +features  features.extract on every window (reported separately)

Reported per stage: samples/s, CPU seconds per wearable-second, the fraction
of one core that 50 wearables streaming in real time would use, and the ratio
of each stage's CPU to the decode baseline measured in the same run.
Target: stage 3 for 50 wearables under 0.25 of a core.

Run: ``python bench/ingest.py [--wearables 50] [--seconds 60]``.
Writes bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from edgeagent.codecs.serial_frame import FrameDecoder
from edgeagent.pipeline.windows import Windower
from edgeagent.sources.serial import FrameMapper
from edgeagent.streams import Gap, LinkCounters, SampleBlock
from firmware_sim.physiology import Generator, make_patient
from firmware_sim.serialdev import Framer

# At real-time rates each pyserial read returns about one packet (the device
# writes a packet at a time and the source reads whatever is waiting), so by
# default every packet is fed on its own: the per-read overhead is counted in
# full. ``--read-size N`` feeds N-byte chunks instead (a backlog after a stall).
POP_EVERY_S = 1.0  # the service asks each windower for ready windows once a second
TARGET_WEARABLES = 50
TARGET_CORE_FRACTION = 0.25
DISTINCT_PATIENTS = 5  # generate this many, reuse their bytes for the others


class _OnlyStreams:
    """Keep the chunk's streams that the benchmark asked for."""

    def __init__(self, chunk: object, keep: tuple[str, ...]) -> None:
        streams: dict[str, tuple[np.ndarray, np.ndarray]] = chunk.streams  # type: ignore[attr-defined]
        self.streams = {k: v for k, v in streams.items() if k in keep}


def encode_wearable(
    index: int, seconds: float, streams: tuple[str, ...]
) -> tuple[list[bytes], int]:
    """Device-side packets for ``seconds`` of one patient, and the samples they carry."""
    gen = Generator(make_patient(index, seed=17))
    framer = Framer()
    out: list[bytes] = []
    n = 0
    for _ in range(round(seconds / 0.2)):
        chunk = _OnlyStreams(gen.advance(0.2), streams)
        for f in framer.frames(chunk):
            out.append(f.data)
            n += 0 if f.values is None else f.values.shape[0]
    return out, n


def reads(packets: list[bytes], read_size: int) -> list[bytes]:
    """What successive port reads return: one packet each, or fixed-size chunks."""
    if read_size <= 0:
        return packets
    blob = b"".join(packets)
    return [blob[i : i + read_size] for i in range(0, len(blob), read_size)]


def run_stage(
    blobs: list[list[bytes]], stage: str, seconds: float
) -> tuple[float, int, int, dict[str, int]]:
    """Feed every wearable's bytes round-robin; return (cpu_s, samples, windows, counters)."""
    from edgeagent.pipeline import features

    n_w = len(blobs)
    decoders = [FrameDecoder(LinkCounters()) for _ in range(n_w)]
    mappers = [FrameMapper(f"w{i}", decoders[i].counters, max_skew_s=None) for i in range(n_w)]
    windowers = [Windower(10.0, 2.0, patient=f"w{i}") for i in range(n_w)]
    base_now = 1_700_000_000.0
    samples = 0
    n_windows = 0
    offsets = [0] * n_w
    next_pop = [POP_EVERY_S] * n_w
    t0 = time.process_time()
    active = True
    while active:
        active = False
        for i in range(n_w):
            blob = blobs[i]
            a = offsets[i]
            if a >= len(blob):
                continue
            active = True
            data = blob[a]
            offsets[i] = a + 1
            dec = decoders[i]
            dec.feed(data)
            if stage == "decode":
                for f in dec.frames():
                    samples += getattr(f, "n", 0)
                continue
            elapsed = seconds * offsets[i] / len(blob)
            now = base_now + elapsed
            w = windowers[i]
            for f in dec.frames():
                for item in mappers[i].feed(f, now):
                    if isinstance(item, SampleBlock):
                        samples += len(item)
                        if stage != "source":
                            w.push(item)
                    elif isinstance(item, Gap) and stage != "source":
                        w.push_gap(item)
            if stage in ("windows", "features") and elapsed >= next_pop[i]:
                next_pop[i] += POP_EVERY_S
                ready = w.pop_ready(now)
                n_windows += len(ready)
                if stage == "features":
                    for win in ready:
                        features.extract(win)
    if stage in ("windows", "features"):
        for w in windowers:
            ready = w.flush()
            n_windows += len(ready)
            if stage == "features":
                for win in ready:
                    features.extract(win)
    cpu = time.process_time() - t0
    counters: dict[str, int] = {}
    for d in decoders:
        for k, v in d.counters.as_dict().items():
            counters[k] = counters.get(k, 0) + v
    return cpu, samples, n_windows, counters


def _child(n: int, seconds: float, directory: str, streams: tuple[str, ...]) -> None:
    """Device side of the pty stage: ``n`` real-time devices in this process."""
    from firmware_sim.serialdev import PtyDevice

    class Filtered:
        def __init__(self, index: int) -> None:
            self.gen = Generator(make_patient(index % DISTINCT_PATIENTS, seed=17))
            self.streams = streams

        def advance(self, s: float) -> _OnlyStreams:
            return _OnlyStreams(self.gen.advance(s), streams)

    devs = [
        PtyDevice(
            Path(directory) / f"tty{i}", Filtered(i), realtime=True, duration_s=seconds,
            streams=streams, seed=i,
        ).start()
        for i in range(n)
    ]  # fmt: skip
    print("ready", flush=True)
    for d in devs:
        d.wait_done(seconds + 60)
    sent = sum(d.ledger.n_samples(s) for d in devs for s in streams)
    for d in devs:
        d.stop()
    print(json.dumps({"sent": sent}), flush=True)


def run_pty(n: int, seconds: float, streams: tuple[str, ...]) -> dict[str, float]:
    """Real ptys, real pyserial threads, real time: CPU of the reader threads."""
    import subprocess
    import sys
    import tempfile
    import threading

    import psutil

    from edgeagent.sources.serial import SerialSource

    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(n), str(seconds), tmp, ",".join(streams)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        lock = threading.Lock()
        received = [0]
        windows = [0]
        sources = []
        for i in range(n):
            w = Windower(10.0, 2.0, patient=f"w{i}")
            state = {"next": 0.0}

            def on_block(b: SampleBlock, w: Windower = w, st: dict[str, float] = state) -> None:
                w.push(b)
                if b.t[-1] >= st["next"]:
                    st["next"] = float(b.t[-1]) + POP_EVERY_S
                    k = len(w.pop_ready())
                    with lock:
                        windows[0] += k
                with lock:
                    received[0] += len(b)

            src = SerialSource(str(Path(tmp) / f"tty{i}"), f"w{i}", on_block, w.push_gap)
            src.start()
            sources.append(src)
        final = json.loads(child.stdout.readline())
        child.wait(30)
        time.sleep(0.3)
        ids = {s._thread.native_id for s in sources if s._thread is not None}
        cpu = sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)
        for src in sources:
            src.stop()
    per_ws = cpu / (n * seconds)
    return {
        "wearables": n,
        "seconds": seconds,
        "sent": final["sent"],
        "received": received[0],
        "windows": windows[0],
        "reader_threads_cpu_s": cpu,
        "cpu_s_per_wearable_s": per_ws,
        "core_fraction_at_50_realtime": per_ws * TARGET_WEARABLES,
        "wearables_per_core": 1.0 / per_ws if per_ws else float("inf"),
    }


def main() -> None:
    """Run all stages and write bench/results/ingest.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wearables", type=int, default=TARGET_WEARABLES)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--streams", default="ecg,acc,skin_temp")
    ap.add_argument("--read-size", type=int, default=0, help="0: one packet per read")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per stage")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.json"))
    ap.add_argument("--pty-wearables", type=int, default=TARGET_WEARABLES)
    ap.add_argument("--pty-seconds", type=float, default=20.0, help="0 skips the pty stage")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, secs, directory, names = args.child
        _child(int(n), float(secs), directory, tuple(names.split(",")))
        return
    streams = tuple(s.strip() for s in args.streams.split(",") if s.strip())

    t = time.perf_counter()
    distinct = [encode_wearable(i, args.seconds, streams) for i in range(DISTINCT_PATIENTS)]
    chunks = [reads(d[0], args.read_size) for d in distinct]
    blobs = [chunks[i % DISTINCT_PATIENTS] for i in range(args.wearables)]
    expected = sum(distinct[i % DISTINCT_PATIENTS][1] for i in range(args.wearables))
    encode_s = time.perf_counter() - t
    wearable_seconds = args.wearables * args.seconds
    print(
        f"{args.wearables} wearables x {args.seconds:.0f} s ({', '.join(streams)}): "
        f"{expected:,} samples, {sum(len(b) for bl in blobs for b in bl) / 1e6:.1f} MB in "
        f"{sum(map(len, blobs)):,} reads, pre-encoded in {encode_s:.1f} s"
    )

    results: dict[str, dict[str, float]] = {}
    baseline_cpu = None
    for stage in ("decode", "source", "windows", "features"):
        best = None
        for _ in range(args.repeat if stage != "features" else 1):
            cpu, samples, n_windows, counters = run_stage(blobs, stage, args.seconds)
            if samples != expected or counters["bad_crc"] or counters["malformed"]:
                raise SystemExit(f"{stage}: lost data ({samples} of {expected}) {counters}")
            if best is None or cpu < best[0]:
                best = (cpu, samples, n_windows)
        assert best is not None
        cpu, samples, n_windows = best
        if baseline_cpu is None:
            baseline_cpu = cpu
        per_ws = cpu / wearable_seconds
        results[stage] = {
            "cpu_s": cpu,
            "samples": samples,
            "windows": n_windows,
            "samples_per_cpu_s": samples / cpu,
            "cpu_s_per_wearable_s": per_ws,
            "core_fraction_at_50_realtime": per_ws * TARGET_WEARABLES,
            "wearables_per_core": 1.0 / per_ws,
            "ratio_vs_decode": cpu / baseline_cpu,
        }

    print(
        f"\n{'stage':10} {'CPU s':>7} {'Msamples/s':>11} {'core@50':>8} "
        f"{'wear/core':>10} {'x decode':>9}"
    )
    for stage, r in results.items():
        print(
            f"{stage:10} {r['cpu_s']:7.2f} {r['samples_per_cpu_s'] / 1e6:11.2f} "
            f"{r['core_fraction_at_50_realtime']:8.3f} {r['wearables_per_core']:10.0f} "
            f"{r['ratio_vs_decode']:9.2f}"
        )
    ingest = results["windows"]["core_fraction_at_50_realtime"]
    ok = ingest < TARGET_CORE_FRACTION
    print(
        f"\ndecode+source+windows for 50 real-time wearables: {ingest:.3f} of a core "
        f"(target < {TARGET_CORE_FRACTION}) -> {'PASS' if ok else 'FAIL'}; "
        f"with features: {results['features']['core_fraction_at_50_realtime']:.3f}"
    )
    pty = None
    if args.pty_seconds > 0:
        pty = run_pty(args.pty_wearables, args.pty_seconds, streams)
        print(
            f"\nreal ptys, {pty['wearables']} wearables in real time for {pty['seconds']:.0f} s: "
            f"{pty['received']:,} of {pty['sent']:,} samples, reader threads (pyserial + decode "
            f"+ source + windows) {pty['core_fraction_at_50_realtime']:.3f} of a core at 50"
        )
    out = {
        "wearables": args.wearables,
        "seconds": args.seconds,
        "streams": list(streams),
        "read_size": args.read_size or "one packet per read",
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "stages": results,
        "pty_realtime": pty,
        "target": {"wearables": TARGET_WEARABLES, "core_fraction": TARGET_CORE_FRACTION},
        "pass": ok,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
