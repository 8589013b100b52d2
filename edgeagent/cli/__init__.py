"""The ``edgeagent`` command for field engineers.

Each verb group lives in its own module here and registers itself on ``app``;
this file only assembles them, so adding a verb never touches another's code.
"""

from __future__ import annotations

import importlib
import json

import typer

from edgeagent import __version__

app = typer.Typer(
    name="edgeagent",
    help="Edge runtime for wearable-health hubs. Every verb takes --help; most take --json.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Verb modules, imported for their side effect of registering on ``app``.
_VERB_MODULES = ("demo", "pki", "outbox")
_VERB_MODULES += ("run", "config", "status", "doctor", "serial", "logs", "support")  # ops
_VERB_MODULES += ("model", "evaluate", "convert")  # model / detection, record import
_VERB_MODULES += ("service",)  # field install
_VERB_MODULES += ("aggregator",)  # federated aggregator
_VERB_MODULES += ("devices",)  # BLE
_VERB_MODULES += ("pilot",)  # pilot evaluation


@app.command()
def version(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print the agent's version and the versions of the libraries it runs on."""
    import bleak  # noqa: F401  (import proves it is installed)
    import numpy
    import onnxruntime
    import paho.mqtt

    info = {
        "edgeagent": __version__,
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "paho-mqtt": paho.mqtt.__version__,
    }
    if as_json:
        typer.echo(json.dumps(info))
    else:
        for k, v in info.items():
            typer.echo(f"{k:12} {v}")


def _register() -> None:
    for name in _VERB_MODULES:
        importlib.import_module(f"edgeagent.cli.{name}")


def main() -> None:
    _register()
    app()
