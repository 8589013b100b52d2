"""``edgeagent demo``: the whole system on one machine (see ``edgelab.demo``).

This module only parses flags, draws live progress with rich and prints the
summary; every stage and every figure comes from ``edgelab.demo``. At import it
reads only ``edgelab.demo.options`` (every ``edgeagent`` command imports this
module to register the verb); the stages load when the demo runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgelab.demo.options import (
    DEFAULT_SECONDS,
    FEEDBACK_ERROR,
    FEEDBACK_SHARE,
    NOISE_MULTIPLIER,
)

_STREAMS = ("ecg", "acc", "skin_temp", "env", "hr", "rr")
#: Column headers where the stream's name is longer than its numbers.
_STREAM_HEADER = {"skin_temp": "temp"}
OUT_OPTION = typer.Option(Path("demo-out"), "--out", help="Where the report is written.")


class _LiveView:
    """Per-stream sample rates, windows/s, latest features, alerts and round progress."""

    def __init__(self, console: Any, interactive: bool) -> None:
        self.console = console
        self.interactive = interactive
        self.live: Any = None
        self._prev: dict[str, tuple[float, dict[str, int], int]] = {}
        self._rates: dict[str, tuple[dict[str, float], float]] = {}
        self._last_line = 0.0

    def __enter__(self) -> _LiveView:
        if self.interactive:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def _update_rates(self, h: dict[str, Any], now: float) -> tuple[dict[str, float], float]:
        prev = self._prev.get(h["hub"])
        if prev is not None and now - prev[0] >= 0.5:
            dt = now - prev[0]
            rates = {s: (h["received"].get(s, 0) - prev[1].get(s, 0)) / dt for s in _STREAMS}
            wps = (h["windows"] - prev[2]) / dt
            self._rates[h["hub"]] = (rates, wps)
            self._prev[h["hub"]] = (now, dict(h["received"]), h["windows"])
        elif prev is None:
            self._prev[h["hub"]] = (now, dict(h["received"]), h["windows"])
        return self._rates.get(h["hub"], ({}, 0.0))

    def __call__(self, live: dict[str, Any]) -> None:
        now = time.monotonic()
        rates = {h["hub"]: self._update_rates(h, now) for h in live.get("hubs", [])}
        if self.interactive:
            self.live.update(self._render(live, rates))
        elif now - self._last_line >= 5.0:
            self._last_line = now
            hubs = " ".join(
                f"{h['hub']}:{h['windows']}w/{h['alerts']}a" for h in live.get("hubs", [])
            )
            print(f"[{live.get('elapsed', 0):6.1f}s] {live['phase']}  {hubs}", file=sys.stderr)

    @staticmethod
    def _render(live: dict[str, Any], rates: dict[str, tuple[dict[str, float], float]]) -> Any:
        """The live table, sized to fit 100 columns with every header whole: no box
        lines, one space between columns, stream names as headers (the title says the
        unit), and the latest features on one line per hub below the table."""
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(
            title=f"{live['phase']}  ({live.get('elapsed', 0):.0f} s; streams in samples/s, "
            "BLE rows in samples)",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            collapse_padding=True,
            pad_edge=False,
            expand=False,
        )
        heads = ["sim s", *(_STREAM_HEADER.get(s, s) for s in _STREAMS)]
        heads += ["windows", "win/s", "alerts"]
        for head in ("hub", "link", *heads, "model"):
            right = head in heads
            t.add_column(
                head, justify="right" if right else "left", no_wrap=True, min_width=len(head)
            )
        ble = live.get("ble", {})
        features = []
        for h in live.get("hubs", []):
            r, wps = rates.get(h["hub"], ({}, 0.0))
            t.add_row(
                h["hub"],
                h["link"],
                f"{h['sim_t']:.0f}",
                *(f"{r.get(s, 0.0):,.0f}" for s in _STREAMS),
                str(h["windows"]),
                f"{wps:.1f}",
                str(h["alerts"]),
                h["model"],
            )
            b = ble.get(h["hub"])
            if b:
                got = b["received"]
                t.add_row(
                    "  BLE",
                    "bleak",
                    "",
                    *(f"{got.get(s, 0):,}" for s in _STREAMS),
                    str(b["windows"]),
                    "",
                    "",
                    "",
                )
            if h["features"]:
                feats = "  ".join(f"{k}={v:g}" for k, v in h["features"].items())
                features.append(Text(f"{h['hub']}  {feats}"))
        lines: list[Any] = [t, *features]
        for r in live.get("rounds", []):
            eps = r.get("epsilon")
            lines.append(
                Text(
                    f"round {r['round']}: {r['status']} {r.get('reason', '')}  "
                    f"survivors {len(r.get('survivors', []))}/{len(r.get('participants', []))}  "
                    f"{'DP off' if eps is None else f'epsilon {eps:.1f}'}  "
                    f"model v{r.get('model_version', '-')}"
                )
            )
        return Group(*lines)


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    o = s["options"]
    console.print(
        f"\n[bold]edgeagent demo[/bold]: {o['hubs']} hubs x {o['seconds']:.0f} s simulated "
        f"({o['pacing']} pacing), {s['totals']['rounds_completed']}/{o['rounds']} federated "
        f"rounds, {s['wall_seconds']:.1f} s wall"
    )
    console.print(f"model: {s['model']['note']}")
    parts = Table(title="What ran")
    for col in ("part", "how", "detail"):
        parts.add_column(col)
    colour = {"real": "green", "in-memory": "yellow", "skipped": "red"}
    for p in s["parts"]:
        parts.add_row(p["name"], f"[{colour[p['how']]}]{p['how']}[/]", p["reason"])
    console.print(parts)
    # Ten columns in 100: no vertical rules, two-line headers, nothing cut.
    hubs = Table(
        title="Hubs (serial path, against ground truth)",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for col in (
        "hub",
        "samples\nsent",
        "received",
        "frames\nrejected",
        "frames\nmissing",
        "windows",
        "clinical\nTP/FP",
        "episodes\nfound",
        "fault\nTP/FP",
        "BLE\nalerts",
    ):
        hubs.add_column(col, justify="right", no_wrap=True)
    for h in s["hubs"]:
        st = h["serial"]["streams"]
        link = h["serial"]["link"]
        c, f = h["alerts"]["clinical"], h["alerts"]["sensor_fault"]
        hubs.add_row(
            h["name"],
            f"{sum(v['sent_intact'] for v in st.values()):,}",
            f"{sum(v['received'] for v in st.values()):,}",
            str(link.get("bad_crc", 0) + link.get("malformed", 0)),
            str(link.get("frames_missing", 0)),
            str(h["windows"]),
            f"{c['tp']}/{c['fp']}",
            f"{c['detected']}/{c['events']}",
            f"{f['tp']}/{f['fp']}",
            str(h["ble_alerts"]),
        )
    console.print(hubs)
    acc = Table(
        title="Accuracy and false alarms per hour (FA/h) per round, same windows: fed = the "
        "hubs, base = baseline model frozen, ctrl = no federation",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    heads = ("model", "windows", "acc\nfed", "acc\nbase", "acc\nctrl")
    heads += ("FA/h\nfed", "FA/h\nbase", "FA/h\nctrl", "acked\n(dism.)")
    for col in heads:
        acc.add_column(col, justify="right", no_wrap=True)

    def f3(v: Any, nd: int = 3) -> str:
        return "-" if v is None else f"{v:.{nd}f}"

    for a in s["accuracy_per_round"]:
        arms = [a, a.get("baseline") or {}, a.get("control") or {}]
        fb = a.get("feedback", {})
        acc.add_row(
            a["model"],
            str(a["windows"]),
            *(f3(x.get("accuracy")) for x in arms),
            *(f3(x.get("false_alarms_per_hour"), 1) for x in arms),
            f"{fb.get('acked', 0)} ({fb.get('dismissed', 0)})",
        )
    console.print(acc)
    priv = s.get("privacy")
    if priv is not None:
        console.print(f"privacy: {priv['statement']}")
    lat = s["latency"]
    console.print(
        f"per-window latency ms p50/p90/p99: {f3(lat['inference_ms']['p50'], 1)}/"
        f"{f3(lat['inference_ms']['p90'], 1)}/{f3(lat['inference_ms']['p99'], 1)}; "
        f"detection delay s p50/p90: {f3(lat['detection_delay_s']['p50'], 1)}/"
        f"{f3(lat['detection_delay_s']['p90'], 1)}"
    )
    fed = s["federation"]
    if fed.get("reason"):
        console.print(f"[yellow]federation: {fed['reason']}[/]")
    bad = s.get("consistency", [])
    console.print(
        "[green]all figures consistent[/]" if not bad else "[red]INCONSISTENT:[/] " + "; ".join(bad)
    )
    console.print(f"report: {s['report']['html']} (+ PNGs and summary.json)")


@app.command()
def demo(
    hubs: int = typer.Option(3, "--hubs", help="Simulated hubs (boxes), each with its wearables."),
    seconds: float = typer.Option(
        DEFAULT_SECONDS,
        "--seconds",
        help="Simulated wearable time per hub, split into rounds+1 segments.",
    ),
    rounds: int = typer.Option(3, "--rounds", help="Federated rounds (one after each segment)."),
    out: Path = OUT_OPTION,
    realtime: bool = typer.Option(
        False,
        "--realtime/--fast",
        help="Pace devices in real time, or (default) as fast as the agent reads them.",
    ),
    ble: bool = typer.Option(
        True, "--ble/--no-ble", help="Also run BLE wearables (needs dbus-daemon)."
    ),
    broker: str = typer.Option(
        "embedded",
        "--broker",
        help="embedded (mosquitto subprocess on 127.0.0.1), mosquitto, none, or HOST:PORT.",
    ),
    noise_multiplier: float = typer.Option(
        NOISE_MULTIPLIER,
        "--noise-multiplier",
        help="DP noise multiplier of the rounds; 0 (default) = DP off, as a few boxes get no "
        "meaningful guarantee from user-level DP.",
    ),
    feedback_share: float = typer.Option(
        FEEDBACK_SHARE,
        "--feedback-share",
        help="Share of clinical alerts a simulated nurse acknowledges (0..1).",
    ),
    feedback_error: float = typer.Option(
        FEEDBACK_ERROR,
        "--feedback-error",
        help="How often a nurse's verdict is wrong (0..0.5).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated patients."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
) -> None:
    """Run the whole system on simulated wearables: hubs, broker, aggregator, rounds, report."""
    import logging

    from rich.console import Console

    from edgeagent.errors import EdgeAgentError
    from edgelab.demo.options import DemoOptions
    from edgelab.demo.run import run_demo
    from edgelab.demo.summary import to_json

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    opts = DemoOptions(
        hubs=hubs,
        seconds=seconds,
        rounds=rounds,
        out=out,
        realtime=realtime,
        ble=ble,
        broker=broker,
        seed=seed,
        noise_multiplier=noise_multiplier,
        feedback_share=feedback_share,
        feedback_error=feedback_error,
    )
    try:
        opts.validate()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console = Console(stderr=as_json)
    interactive = console.is_terminal and not as_json
    if not as_json:
        pace = "real time" if realtime else "accelerated (as fast as the agent reads)"
        console.print(
            f"edgeagent demo: {hubs} hubs, {seconds:.0f} s simulated each, {rounds} rounds, "
            f"device pacing {pace}; report in {out}/"
        )
    try:
        with _LiveView(console, interactive) as view:
            summary = run_demo(opts, view)
    except EdgeAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt as exc:  # everything started was stopped on the way out
        typer.echo("demo interrupted; devices, broker and D-Bus were stopped", err=True)
        raise typer.Exit(130) from exc
    if as_json:
        typer.echo(to_json(summary))
    else:
        _print_summary(console, summary)
    if summary.get("consistency"):
        raise typer.Exit(1)
