"""Running the demo: every stage in order, segments and rounds, always stopped on the way out.

The only module that knows every stage; each stage's module knows only the
records of :mod:`edgelab.demo.options` and the stages before it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgelab.demo.ble import BleStage, start_ble
from edgelab.demo.fleet import demo_pki, start_broker
from edgelab.demo.hubs import Hub, feedback_part, hub_record, start_hubs
from edgelab.demo.model import prepare_model
from edgelab.demo.options import (
    BLE_MAX_WAIT_S,
    BLE_MIN_WINDOWS,
    SEGMENT_TIMEOUT_S,
    BrokerInfo,
    DemoOptions,
    Part,
)
from edgelab.demo.report import write_report
from edgelab.demo.rounds import RoundDriver, start_federation
from edgelab.demo.summary import build_summary, check_summary

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]


def _wait(cond: Callable[[], bool], timeout: float, tick: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        tick()
        time.sleep(0.2)
    return cond()


def run_demo(opts: DemoOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Run every stage, write the report under ``opts.out``, return the summary.

    ``progress`` receives a live snapshot about five times a second (phase,
    per-hub rates and windows, latest features, alerts, rounds).
    """
    opts.validate()
    t_start = time.monotonic()
    out = Path(opts.out)
    work = out / "run"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    parts: list[Part] = []
    rounds: list[dict[str, Any]] = []
    live: dict[str, Any] = {"phase": "starting", "segment": 0, "segments": opts.rounds + 1}
    live["rounds"] = rounds

    hubs: list[Hub] = []
    ble: BleStage | None = None
    fed: RoundDriver | None = None
    broker: BrokerInfo | None = None
    fed_info: dict[str, Any] = {}
    ble_res: dict[str, Any] | None = None

    def tick() -> None:
        """Hand a live snapshot to the progress callback."""
        if progress is None:
            return
        live["elapsed"] = time.monotonic() - t_start
        live["hubs"] = [h.snapshot() for h in hubs]
        live["ble"] = ble.snapshot() if ble is not None else {}
        progress(live)

    try:
        live["phase"] = "preparing the baseline model"
        tick()
        model = prepare_model()
        parts.append(Part("baseline model", True, "real", model.note))
        pki = demo_pki(out / "pki", [f"hub-{i + 1}" for i in range(opts.hubs)])
        live["phase"] = "starting the broker"
        tick()
        broker = start_broker(opts, work, pki)
        start_hubs(opts, work, model, into=hubs)
        parts.append(
            Part(
                "serial wearables",
                True,
                "real",
                f"{opts.hubs} simulated textiles on real ptys (COBS/CRC frames, injected byte "
                "faults), read by SerialSource",
            )
        )
        parts.append(
            Part(
                "pipeline",
                True,
                "real",
                "Windower -> features -> onnxruntime Detector (alerts in SQLite) -> LocalLearner",
            )
        )
        parts.append(
            Part(
                "reference arms",
                True,
                "real",
                "every window also scored by the baseline model, frozen, and by a "
                "no-federation control (local learning only), each with its own detector state",
            )
        )
        parts.append(feedback_part(opts, hubs))
        ble, ble_part = start_ble(hubs, opts)
        parts.append(ble_part)
        live["phase"] = "connecting the federation"
        tick()
        fed, fed_info, fed_parts = start_federation(opts, hubs, model, broker, pki, work)
        parts += fed_parts

        seg_len = opts.seconds / (opts.rounds + 1)
        for k in range(opts.rounds + 1):
            until = (k + 1) * seg_len
            live.update(phase=f"streaming segment {k + 1}/{opts.rounds + 1}", segment=k)
            for h in hubs:
                h.begin_segment(k, until)

            def seg_tick(k: int = k) -> None:
                """Progress, and each hub's periodic model check, as the daemon runs it."""
                tick()
                for h in hubs:
                    h.check_models(k)

            ok = _wait(
                lambda u=until: all(h.segment_done(u) for h in hubs), SEGMENT_TIMEOUT_S, seg_tick
            )
            if not ok:
                log.warning("segment %d did not finish within %.0f s", k, SEGMENT_TIMEOUT_S)
                fed_info.setdefault("notes", []).append(f"segment {k} timed out")
            for h in hubs:
                h.feedback(k)  # the ward's verdicts on this segment's alerts, as labels
                h.train()
                h.check_models(k, force=True)
            if k < opts.rounds:
                live["phase"] = f"federated round {k + 1}/{opts.rounds}"
                tick()
                rec = fed.run_round(k + 1, tick)
                rounds.append(rec)
                for h in hubs:
                    res = rec.get("applied", {}).get(h.name, {})
                    h.model_history.append(
                        {
                            "segment": k + 1,
                            "label": h.detector.model_label,
                            "reason": f"round {k + 1}: {res.get('result', rec['status'])}",
                        }
                    )
        for h in hubs:
            h.finish()
        if ble is not None:
            live["phase"] = f"BLE: waiting for {BLE_MIN_WINDOWS} windows per strap"
            strap = ble
            _wait(
                lambda: min(strap.windows.values(), default=0) >= BLE_MIN_WINDOWS,
                BLE_MAX_WAIT_S,
                tick,
            )
            live["phase"] = "stopping"
            tick()
            ble_res = ble.stop()
            ble = None
        done = sum(1 for r in rounds if r["status"] == "completed")
        if done < opts.rounds and not fed_info.get("reason"):
            bad = [
                f"round {r['round']}: {r['status']} {r.get('reason', '')}".strip()
                for r in rounds
                if r["status"] != "completed"
            ]
            fed_info["reason"] = "; ".join(bad) or "rounds did not complete"
        parts.append(
            Part(
                "federated rounds",
                done > 0 or opts.rounds == 0,
                fed_info.get("how", "in-memory") if (done > 0 or opts.rounds == 0) else "skipped",
                f"{done}/{opts.rounds} completed"
                + (f"; {fed_info['reason']}" if fed_info.get("reason") else ""),
            )
        )
        records = [hub_record(h) for h in hubs]
    finally:
        if ble is not None:
            with contextlib.suppress(Exception):
                ble.stop()
        for h in hubs:
            with contextlib.suppress(Exception):
                h.feed.close()
                h.device.stop()
                h.source.stop()
        if fed is not None:
            fed.close()
        if broker is not None and broker.broker is not None:
            broker.broker.stop()
        for h in hubs:
            h.close()
    model_rec = {
        "path": str(model.path),
        "sha256": model.sha256,
        "built": model.built,
        "note": model.note,
    }
    summary = build_summary(
        opts, records, parts, rounds, fed_info, ble_res, model_rec, time.monotonic() - t_start
    )
    summary["consistency"] = check_summary(summary)
    write_report(summary, records, out)
    live["phase"] = "done"
    return summary
