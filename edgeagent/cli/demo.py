"""``edgeagent demo``: the README's first command (filled in by the foundation work)."""

from __future__ import annotations

import typer

from edgeagent.cli import app


@app.command()
def demo(seconds: float = typer.Option(20.0, help="How long to stream, in seconds.")) -> None:
    """Stream simulated wearables through the agent and show rates, windows and features."""
    typer.echo("demo: not wired yet")
    raise typer.Exit(1)
