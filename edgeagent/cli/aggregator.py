"""``edgeagent aggregator run|status``: the fleet's federated aggregator.

``run`` is the systemd unit's ExecStart (Type=notify: READY once connected and
the global model is published, WATCHDOG while the loop turns, STOPPING on
SIGTERM). ``status`` reads the aggregator's state file only, so it works
whether or not the service is running.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer

from edgeagent.cli import app
from edgeagent.cli.config import CONFIG_OPTION, JSON_OPTION, echo_json, fail, load_or_exit
from edgeagent.cli.human import human

agg_app = typer.Typer(
    help="Federated aggregator: run rounds, show their history.", no_args_is_help=True
)
app.add_typer(agg_app, name="aggregator")

log = logging.getLogger(__name__)


@agg_app.command("run")
def run(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Log one JSON object per line."),
) -> None:
    """Run the aggregator in the foreground until SIGTERM/SIGINT (or aggregator.rounds done)."""
    cfg = load_or_exit(config, as_json)
    from edgeagent.cli.run import setup_logging
    from edgeagent.daemon.sdnotify import Notifier, watchdog_interval
    from edgeagent.errors import EdgeAgentError
    from edgeagent.federation.aggregator import Aggregator

    setup_logging(cfg.agent.log_level, as_json, cfg.agent.box_id)
    notifier = Notifier()
    try:
        agg = Aggregator(cfg)
        agg.start()
    except EdgeAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: agg.request_stop())
    notifier.ready(status="aggregator running")
    period = (watchdog_interval() or 0) / 2
    last = [0.0]

    def ping() -> None:
        now = time.monotonic()
        if period and now - last[0] >= period:
            notifier.watchdog()
            last[0] = now

    try:
        agg.run(on_tick=ping)
    except EdgeAgentError as exc:  # e.g. an intake worker died: exit non-zero, systemd restarts
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        notifier.stopping(status="aggregator stopping")
        agg.close()
        notifier.close()


def _fmt_groups(rec: dict[str, Any]) -> str:
    """``median 3/4`` = rule and groups whose mean was used / groups formed; ``-`` for FedAvg.

    Plaintext rounds: ``median plain 6`` (rule over 6 single updates), ``plain`` for FedAvg.
    """
    rob = rec.get("robust")
    if rec.get("secure_aggregation") is False:
        return f"{rob['rule']} plain {rob.get('updates', 0)}" if rob else "plain"
    if not rob:
        return "-"
    return f"{rob['rule']} {len(rob.get('used_groups', []))}/{len(rob.get('groups', []))}"


def _fmt_eps(eps: Any) -> str:
    """A round's epsilon, or ``no DP`` for a release that carried no noise."""
    return "no DP" if eps is None else f"{eps:.3f}"


def _privacy_lines(dp: dict[str, Any], sampling: str) -> list[str]:
    """Epsilon spent, the budget left and the rounds left, or why there is no DP claim."""
    z = dp.get("noise_multiplier")
    spent = dp.get("epsilon_spent")
    delta = dp.get("delta", 1e-5)
    lines = []
    if z is None:
        lines.append("privacy     unknown (the aggregator has not started with this state)")
    elif z <= 0:
        lines.append("privacy     DP off (federation.noise_multiplier = 0): no epsilon claim")
    elif spent is None:
        lines.append("privacy     no epsilon claim: a round was released without noise")
    else:
        budget = dp.get("epsilon_budget")
        lines.append(f"epsilon     {spent:.3f} spent at delta {delta:g}, z = {z:g}, {sampling}")
        if budget is None:
            lines.append("budget      none (aggregator.epsilon_budget = inf)")
        else:
            left = dp.get("rounds_left")
            lines.append(
                f"budget      {budget:g}: {dp.get('budget_left', 0.0):.3f} left, "
                f"{left if left is not None else '-'} more round(s) fit"
            )
    refused = dp.get("refused")
    if refused:
        lines.append(
            f"stopped     round {refused.get('round')} not started "
            f"({dp.get('refusals', 0)} time(s)): {refused.get('reason')}"
        )
    return lines


@agg_app.command("status")
def status(
    config: Path | None = CONFIG_OPTION,
    as_json: bool = JSON_OPTION,
    last: int = typer.Option(10, "--last", help="How many recent rounds to list."),
) -> None:
    """Rounds, participants, dropouts, rejections, epsilon spent and the budget left."""
    cfg = load_or_exit(config, as_json)
    from edgeagent.errors import EdgeAgentError
    from edgeagent.federation.aggregator import status_report

    try:
        rep = status_report(cfg.agent.state_dir)
    except EdgeAgentError as exc:
        raise fail(exc, as_json, 1) from exc
    rep["rounds"] = rep["rounds"][-last:] if last > 0 else []
    if as_json:
        echo_json(rep)
        return
    model = rep["model"] or {}
    typer.echo(f"model       v{model.get('version', '-')} {str(model.get('sha256', '-'))[:16]}")
    typer.echo(f"next round  {human(rep['next_round'])}")
    typer.echo(f"totals      {human(rep['totals'])}")
    typer.echo(f"dropouts    {human(rep['dropouts'])}")
    typer.echo(f"refused     {human(rep['refused'])}")
    for line in _privacy_lines(rep["dp"], rep["dp_sampling"]):
        typer.echo(line)
    distrusted = sorted(b for b, v in rep["reputation"].items() if v <= 0)
    if rep["reputation"]:  # robust = "reputation": the boxes whose updates it now drops
        typer.echo(f"distrusted  {', '.join(distrusted) or '-'}")
    if rep["in_progress"]:
        typer.echo(f"in progress round {rep['in_progress']['round']}")
    typer.echo("")
    head = ("round", "status", "boxes", "surv", "drop", "refused", "epsilon", "model", "groups")
    typer.echo("{:>5} {:11} {:>5} {:>4} {:>4} {:>7} {:>8} {:>5} {:>14}  seconds".format(*head))
    for r in rep["rounds"]:
        drop = sum(len(v) for v in r.get("dropped", {}).values())
        typer.echo(
            f"{r['round']:>5} {r['status']:11} {len(r.get('participants', [])):>5} "
            f"{len(r.get('survivors', [])):>4} {drop:>4} {sum(r.get('refused', {}).values()):>7} "
            f"{_fmt_eps(r.get('epsilon')):>8} {r.get('model_version', '-')!s:>5} "
            f"{_fmt_groups(r):>14}  {r.get('seconds', '-')}"
        )
        if r.get("reason"):
            typer.echo(f"      reason: {r['reason']}")
