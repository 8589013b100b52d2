"""``edgeagent pilot``: run the pilot evaluation and write its results table.

The whole system on simulated non-IID patients with held-out test patients:
local-only vs centralised vs federated (+ personalisation), accuracy under
attack for every robust mode, edge vs centralised alert latency over a real
local broker, modality contribution and DP epsilon. Writes ``pilot.json``,
``pilot.md`` and PNG plots to ``--out``; docs/pilot.md explains each figure.
Progress lines (at most one every 10 s per batch of training runs) go to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeagent.cli import app
from edgeagent.errors import EdgeAgentError

_OUT = typer.Option(Path("pilot-results"), "--out", help="Output directory.")
_DELAYS = typer.Option(
    None, "--delay-ms", help="Added one-way network delay (repeatable; default 0 and 50)."
)


@app.command()
def pilot(
    hubs: int | None = typer.Option(
        None, "--hubs", help="Hubs, one simulated patient each \\[default: 20; --small 6]."
    ),
    rounds: int | None = typer.Option(
        None, "--rounds", help="Federated rounds \\[default: 20; --small 4]."
    ),
    out: Path = _OUT,
    seed: int = typer.Option(0, "--seed", help="Seed of patients, schedules and training."),
    seeds: int | None = typer.Option(
        None,
        "--seeds",
        help="Training seeds for the centralised and federated rows; targets use their mean "
        "\\[default: 3; --small 2].",
    ),
    cohorts: int | None = typer.Option(
        None,
        "--cohorts",
        help="Simulated cohorts (other patients, data seeds SEED + 100 k) for the centralised "
        "and federated rows; accuracy targets use their mean \\[default: 3; --small 2].",
    ),
    small: bool = typer.Option(
        False,
        "--small",
        help="The CI-sized pilot (61 s measured on a 2-core machine, --processes 2).",
    ),
    no_latency: bool = typer.Option(
        False, "--no-latency", help="Skip the broker latency experiment."
    ),
    delay_ms: list[float] | None = _DELAYS,
    processes: int = typer.Option(2, "--processes", help="Worker processes for training."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """Run the pilot and write the results table (Markdown + JSON) and plots."""
    from edgelab.pilot.config import PilotConfig
    from edgelab.pilot.report import render_markdown
    from edgelab.pilot.runner import run_pilot

    over: dict[str, object] = {"seed": seed, "processes": processes}
    if hubs is not None:
        over["hubs"] = hubs
    if rounds is not None:
        over["rounds"] = rounds
    if seeds is not None:
        over["seeds"] = seeds
    if cohorts is not None:
        over["cohorts"] = cohorts
    if delay_ms:
        over["latency_delays_ms"] = tuple(delay_ms)
    try:
        cfg = PilotConfig.small(**over) if small else PilotConfig(**over)  # type: ignore[arg-type]
        cfg.validate()
        log = (lambda s: None) if as_json else (lambda s: typer.echo(s, err=True))
        results = run_pilot(cfg, out, latency=not no_latency, log=log)
    except (ValueError, EdgeAgentError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(results))
        return
    typer.echo(render_markdown(results))
    typer.echo(f"wrote {out / 'pilot.json'}, {out / 'pilot.md'} and plots")
