"""The ``edgeagent`` command for field engineers.

Each verb group lives in its own module here and registers itself on ``app``;
this file only assembles them, so adding a verb never touches another's code.
Verbs of other installed packages (the lab's ``demo`` and ``pilot``) come in
through the ``edgeagent.verbs`` entry-point group: the runtime never imports
them by name, and a box without the lab simply has fewer verbs.
"""

from __future__ import annotations

import importlib
import json
import sys
from importlib.metadata import entry_points

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
_VERB_MODULES = ("pki", "outbox")
_VERB_MODULES += ("run", "config", "status", "doctor", "serial", "logs", "support")  # ops
_VERB_MODULES += ("model", "evaluate", "convert")  # model / detection, record import
_VERB_MODULES += ("service",)  # field install
_VERB_MODULES += ("aggregator",)  # federated aggregator
_VERB_MODULES += ("devices",)  # BLE


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


#: Entry-point group through which other packages add verbs (each names a module to import).
VERB_GROUP = "edgeagent.verbs"


def _register(argv: list[str] | None = None) -> None:
    """Import the verb modules; other packages' verbs only when they may be the one asked for.

    ``edgeagent run`` (the daemon) must not pay for importing the lab: a runtime verb on the
    command line skips the entry points, while ``--help`` or any other word loads them.
    """
    for name in _VERB_MODULES:
        importlib.import_module(f"edgeagent.cli.{name}")
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    runtime = {
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    }
    runtime |= {g.name for g in app.registered_groups if g.name}
    if words and words[0] in runtime:
        return
    for ep in entry_points(group=VERB_GROUP):
        try:
            ep.load()
        except ImportError as exc:  # the lab installed without its extra: say what to install
            _unavailable(ep.name, exc)


def _unavailable(verb: str, exc: ImportError) -> None:
    @app.command(name=verb, help=f"Not available here: {exc}. Install edgeagent[lab].")
    def _missing() -> None:
        raise typer.Exit(
            f"edgeagent {verb}: needs the lab package ({exc}); "
            "install it with: pip install 'edgeagent[lab]'"
        )


def main() -> None:
    _register()
    app()
