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
import re
import sys
from importlib.metadata import entry_points

import typer

from edgeagent import __version__
from edgeagent.errors import EdgeAgentError

app = typer.Typer(
    name="edgeagent",
    help="Edge runtime for wearable-health hubs. Every verb takes --help; most take --json.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Verb modules, imported for their side effect of registering on ``app``.
_VERB_MODULES = ("pki", "outbox", "alerts")
_VERB_MODULES += ("run", "config", "status", "doctor", "serial", "logs", "support")  # ops
_VERB_MODULES += ("model", "evaluate", "convert", "alerts")  # model / detection, record import
_VERB_MODULES += ("service",)  # field install
_VERB_MODULES += ("aggregator",)  # federated aggregator
_VERB_MODULES += ("devices",)  # BLE


def library_versions() -> dict[str, str]:
    """The agent's version and every runtime library it depends on (from the installed
    distributions' metadata, so a library without ``__version__`` is still named)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    out = {"edgeagent": __version__}
    try:
        reqs = requires("edgeagent") or []
    except PackageNotFoundError:
        reqs = []
    for req in reqs:
        if "extra ==" in req:
            continue  # optional extras (dev, lab) are not what the box runs on
        name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"edgeagent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    _version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:  # fmt: skip
    """Edge runtime for wearable-health hubs."""


@app.command()
def version(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print the agent's version and the versions of every library it runs on."""
    info = library_versions()
    if as_json:
        typer.echo(json.dumps(info))
    else:
        width = max(len(k) for k in info) + 1
        for k, v in info.items():
            typer.echo(f"{k:{width}} {v}")


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
    """The console script: every verb, and errors the verbs did not catch printed as one
    line (or, under ``--json``, as a JSON object with the error's type and reason)."""
    _register()
    try:
        app(standalone_mode=True)
    except EdgeAgentError as exc:
        from edgeagent.cli.config import error_doc

        if "--json" in sys.argv[1:]:
            typer.echo(json.dumps({"ok": False, "error": error_doc(exc)}))
        else:
            typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
