"""The report: four PNGs (matplotlib, Agg), a self-contained HTML page and ``summary.json``."""

from __future__ import annotations

import base64
import html
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgelab.demo.options import CLINICAL, FAULT_KIND_NAMES, WINDOW_S
from edgelab.demo.summary import detection_delays, match_alerts, to_json

nan = float("nan")
#: The three ways each window is scored: (legend, entry of accuracy_per_round, style).
_ARMS: tuple[tuple[str, Callable[[dict[str, Any]], Any], str], ...] = (
    ("federated (the hubs)", lambda a: a, "o-"),
    ("baseline model, frozen", lambda a: a.get("baseline"), "s--"),
    ("no federation (local learning)", lambda a: a.get("control"), "^:"),
)


def _plots(summary: dict[str, Any], hubs: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Four PNGs (matplotlib, Agg): timeline, accuracy per round, epsilon, latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    files: dict[str, Path] = {}
    n = max(1, len(hubs))
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.2 * n + 0.8), sharex=True, squeeze=False)
    seg_len = summary["options"]["seconds"] / (summary["options"]["rounds"] + 1)
    for ax, h in zip(axes[:, 0], hubs, strict=False):
        for s, e, k in h["labels"]:
            color = "0.75" if k in FAULT_KIND_NAMES else "tab:red"
            ax.axvspan(s, e, color=color, alpha=0.25, lw=0)
            ax.text(s, 1.02, k, fontsize=7, va="bottom")
        ws = [w for w in h["windows"] if w["status"] == "ok"]
        if ws:
            t = [w["end"] for w in ws]
            ax.plot(t, [w["score"] for w in ws], lw=1, color="tab:blue", label="clinical score")
            ax.plot(t, [w["p_fault"] for w in ws], lw=0.8, color="tab:gray", label="fault prob.")
        verdicts = match_alerts(h["alerts"], [tuple(x) for x in h["labels"]])["verdicts"]
        for a, ok in zip(h["alerts"], verdicts, strict=True):
            y = 0.92 if a["category"] == CLINICAL else 0.84
            ax.plot(
                [a["start"], a["end"]],
                [y, y],
                lw=4,
                color="tab:green" if ok else "tab:orange",
                solid_capstyle="butt",
            )
        for k in range(1, summary["options"]["rounds"] + 1):
            ax.axvline(k * seg_len, color="k", lw=0.6, ls="--")
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(h["name"])
    axes[-1, 0].set_xlabel("simulated time (s); dashed lines: federated rounds")
    axes[0, 0].legend(
        handles=[
            Patch(color="tab:red", alpha=0.3, label="clinical episode (truth)"),
            Patch(color="0.75", alpha=0.5, label="sensor fault (truth)"),
            Patch(color="tab:green", label="alert, true positive"),
            Patch(color="tab:orange", label="alert, false positive"),
        ],
        loc="upper right",
        fontsize=7,
        ncol=4,
    )
    fig.suptitle("Detection timeline: alerts against ground truth")
    fig.tight_layout()
    files["timeline"] = out / "timeline.png"
    fig.savefig(files["timeline"], dpi=90)
    plt.close(fig)

    acc = summary["accuracy_per_round"]
    fig, (ax, axf) = plt.subplots(1, 2, figsize=(11, 3.4))
    xs = [a["segment"] for a in acc]
    for name, get, style in _ARMS:
        ys = [get(a) for a in acc]
        if all(y is None for y in ys):
            continue
        ax.plot(xs, [y["accuracy"] if y and y["accuracy"] is not None else nan for y in ys],
                style, label=name)  # fmt: skip
        axf.plot(xs, [y["false_alarms_per_hour"] if y else nan for y in ys], style, label=name)
    for a_ in (ax, axf):
        a_.set_xticks(xs, [a["model"] for a in acc], fontsize=7)
        a_.legend(fontsize=7)
    lows = [y for line in ax.get_lines() for y in line.get_ydata() if y == y]
    ax.set_ylim(max(0.0, min(lows, default=0.0) - 0.05), 1.0)  # the arms differ by points
    ax.set_title("Window accuracy per segment, same windows")
    axf.set_ylim(bottom=0)
    axf.set_title("False alarms per hour per segment")
    fig.tight_layout()
    files["accuracy"] = out / "accuracy.png"
    fig.savefig(files["accuracy"], dpi=90)
    plt.close(fig)

    rounds = summary["federation"]["rounds"]
    priv = summary.get("privacy", {"dp": True, "statement": ""})
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.set_title("Privacy of the rounds (user-level DP)")
    if not priv["dp"]:
        ax.set_axis_off()
        ax.text(0.5, 0.5, textwrap.fill(priv["statement"], 48), ha="center", va="center",
                transform=ax.transAxes)  # fmt: skip
    else:
        rx = [r["round"] for r in rounds if r.get("epsilon") is not None]
        ax.plot(rx, [r["epsilon"] for r in rounds if r.get("epsilon") is not None], "o-")
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon (delta = 1e-5)")
        ax.text(0.02, 0.98, textwrap.fill(priv["statement"], 60), va="top", fontsize=7,
                transform=ax.transAxes)  # fmt: skip
        if not rx:
            ax.text(0.5, 0.5, "no round completed", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    files["epsilon"] = out / "epsilon.png"
    fig.savefig(files["epsilon"], dpi=90)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
    lat = [w["latency_ms"] for h in hubs for w in h["windows"]]
    a1.hist(lat or [0.0], bins=40, color="tab:blue")
    a1.set_xlabel("ms per window (features + ONNX scoring)")
    a1.set_title("Per-window processing latency")
    delays = [d for h in hubs for d in detection_delays(h["windows"], h["labels"], WINDOW_S)]
    a2.hist(delays or [0.0], bins=15, color="tab:red")
    a2.set_xlabel("seconds from episode onset to alert")
    a2.set_title("Detection delay")
    fig.tight_layout()
    files["latency"] = out / "latency.png"
    fig.savefig(files["latency"], dpi=90)
    plt.close(fig)
    return files


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def render_html(summary: dict[str, Any], images: dict[str, bytes]) -> str:
    """A self-contained page: every image inlined as base64, no external resources."""
    e = html.escape
    rows = []
    for p in summary["parts"]:
        rows.append(
            f"<tr><td>{e(p['name'])}</td><td class='{e(p['how'])}'>{e(p['how'])}</td>"
            f"<td>{e(p['reason'])}</td></tr>"
        )
    hub_rows = []
    for h in summary["hubs"]:
        st = h["serial"]["streams"]
        link = h["serial"]["link"]
        cl = h["alerts"][CLINICAL]
        sf = h["alerts"]["sensor_fault"]
        hub_rows.append(
            "<tr>"
            + "".join(
                f"<td>{_fmt(v)}</td>"
                for v in (
                    h["name"],
                    h["patient"],
                    sum(s["sent_intact"] for s in st.values()),
                    sum(s["received"] for s in st.values()),
                    link.get("bad_crc", 0) + link.get("malformed", 0),
                    link.get("frames_missing", 0),
                    h["windows"],
                    f"{cl['tp']}/{cl['fp']}",
                    f"{cl['detected']}/{cl['events']}",
                    f"{sf['tp']}/{sf['fp']}",
                    h["models"][-1]["label"] if h["models"] else "-",
                )
            )
            + "</tr>"
        )
    ble_alerts = {h["name"]: h["ble_alerts"] for h in summary["hubs"]}
    ble_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{e(b['device'])}</td>"
        f"<td>{sum(v['sent'] for v in b['streams'].values())}</td>"
        f"<td>{sum(v['received'] for v in b['streams'].values())}</td>"
        f"<td>{b['windows']}</td><td>{ble_alerts.get(name, 0)}</td></tr>"
        for name, b in (summary.get("ble") or {}).items()
    )
    ble_table = (
        "<h2>BLE chest straps (bleak, private D-Bus)</h2><table><tr><th>hub</th><th>device</th>"
        f"<th>samples sent</th><th>received</th><th>windows</th><th>alerts</th></tr>{ble_rows}"
        "</table><p>Strap windows are scored by the hub's detector as a second patient "
        "record; ground truth is kept on the serial path only.</p>"
        if ble_rows
        else ""
    )
    acc_rows = "".join(
        f"<tr><td>{e(a['model'])}</td><td>{a['windows']}</td>"
        + "".join(f"<td>{_fmt((get(a) or {}).get('accuracy'))}</td>" for _, get, _ in _ARMS)
        + "".join(
            f"<td>{_fmt((get(a) or {}).get('false_alarms_per_hour'), 1)}</td>"
            for _, get, _ in _ARMS
        )
        + f"<td>{a['feedback']['acked']} ({a['feedback']['dismissed']} dismissed)</td></tr>"
        for a in summary["accuracy_per_round"]
    )
    priv = summary.get("privacy", {"dp": True, "statement": ""})
    ref = summary.get("reference", {})
    rnd_rows = "".join(
        f"<tr><td>{r['round']}</td><td>{e(str(r['status']))}</td>"
        f"<td>{e(str(r.get('reason', '')))}</td>"
        f"<td>{len(r.get('survivors', []))}/{len(r.get('participants', []))}</td>"
        f"<td>{_fmt(r.get('epsilon'), 2) if priv['dp'] else 'DP off'}</td>"
        f"<td>{_fmt(r.get('model_version'))}</td>"
        f"<td>{_fmt(r.get('seconds'), 2)}</td></tr>"
        for r in summary["federation"]["rounds"]
    )
    imgs = "".join(
        f"<h2>{e(name)}</h2><img alt='{e(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'>"
        for name, data in images.items()
    )
    inf, dly = summary["latency"]["inference_ms"], summary["latency"]["detection_delay_s"]
    bad = summary.get("consistency", [])
    cons = "all figures consistent" if not bad else "INCONSISTENT: " + "; ".join(bad)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeagent demo report</title>
<style>
body{{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}
.real{{color:#060}} .in-memory{{color:#a60}} .skipped{{color:#a00}} img{{max-width:100%}}
</style></head><body>
<h1>edgeagent demo</h1>
<p>{summary["options"]["hubs"]} hubs, {summary["options"]["seconds"]:.0f} s of simulated wearable
time each ({e(summary["options"]["pacing"])} pacing), {summary["options"]["rounds"]} federated
rounds requested, {summary["totals"]["rounds_completed"]} completed; wall time
{summary["wall_seconds"]:.1f} s. Model: {e(summary["model"]["note"])}. Check: {e(cons)}.</p>
<h2>What ran</h2><table><tr><th>part</th><th>how</th><th>detail</th></tr>{"".join(rows)}</table>
<h2>Hubs</h2><table><tr><th>hub</th><th>patient</th><th>samples sent</th><th>received</th>
<th>frames rejected</th><th>frames missing</th><th>windows</th><th>clinical alerts TP/FP</th>
<th>episodes detected</th><th>fault alerts TP/FP</th><th>model now</th></tr>
{"".join(hub_rows)}</table>
{ble_table}
<h2>Accuracy and false alarms per round</h2>
<p>Window-level accuracy and clinical false alarms per hour of patient time,
summed over hubs. Each segment's windows are scored three times: by the model
the hubs ran after the round (federated); by {e(ref.get("baseline", "the baseline"))};
and by the control, {e(ref.get("control", ""))}. Nurse feedback
acknowledged {e(f"{summary['options'].get('feedback_share', 0):.0%}")} of the clinical
alerts, wrong {e(f"{summary['options'].get('feedback_error', 0):.0%}")} of the time.</p>
<table><tr><th rowspan=2>model</th><th rowspan=2>windows</th><th colspan=3>accuracy</th>
<th colspan=3>false alarms / h</th><th rowspan=2>feedback acked</th></tr>
<tr><th>federated</th><th>baseline</th><th>no federation</th>
<th>federated</th><th>baseline</th><th>no federation</th></tr>{acc_rows}</table>
<p>Privacy: {e(priv["statement"])}.</p>
<h2>Federated rounds ({e(summary["federation"].get("how", ""))})</h2>
<table><tr><th>round</th><th>status</th><th>reason</th><th>survivors</th><th>epsilon</th>
<th>model version</th><th>seconds</th></tr>{rnd_rows}</table>
<p>Latency per window (ms): p50 {_fmt(inf["p50"])}, p90 {_fmt(inf["p90"])},
p99 {_fmt(inf["p99"])}. Detection delay (s): p50 {_fmt(dly["p50"], 1)},
p90 {_fmt(dly["p90"], 1)}.</p>
{imgs}
</body></html>
"""


def write_report(
    summary: dict[str, Any], hubs: Sequence[dict[str, Any]], out: Path
) -> dict[str, str]:
    """summary.json, four PNGs and report.html (images inlined) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    files = _plots(summary, hubs, out)
    images = {name: p.read_bytes() for name, p in files.items()}
    page = render_html(summary, images)
    (out / "report.html").write_text(page, encoding="utf-8")
    listing = {name: str(p) for name, p in files.items()}
    listing["html"] = str(out / "report.html")
    listing["summary"] = str(out / "summary.json")
    summary["report"] = listing
    (out / "summary.json").write_text(to_json(summary, indent=1), encoding="utf-8")
    return listing
