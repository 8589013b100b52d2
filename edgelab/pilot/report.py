"""The pilot's results as Markdown, JSON and PNG plots.

Reads only the results dict, so a stored ``pilot.json`` can be rendered again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgelab.pilot.config import MODALITIES, PAPER
from edgelab.pilot.summary import headline_means


def _f(v: Any, pct: bool = True, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{100 * v:.{nd}f}" if pct else f"{v:.{nd}f}"


def _budget_lines(r: dict[str, Any]) -> list[str]:
    b = r.get("budget")
    if not b:
        return []
    opt = (
        "FedAvgM, server momentum " + f"{b['server_momentum']:g}"
        if b["server_momentum"]
        else "FedAvg"
    )
    return [
        f"Budget: every variant processes the {b['training_rows']:,} training windows "
        f"{b['passes_over_hub_data']} times ({b['rows_processed']:,} rows, Adam lr "
        f"{b['local_lr']:g}, batch {b['batch']}). Centralised: {b['centralised_steps']:,} "
        f"sequential steps. Federated: {b['federated_rounds']} rounds of "
        f"{b['federated_local_steps_per_round_mean']:.0f} local steps per hub on average "
        f"({b['federated_sequential_steps']:,} sequential steps), {opt}"
        + (", local softmax over the classes each hub holds" if b["restrict_classes"] else "")
        + ".",
        "",
    ]


def _personalisation_lines(r: dict[str, Any]) -> list[str]:
    """What the personalised rows' personalisation was: the fleet's weights, the thresholds."""
    pers = r.get("personalisation")
    if not pers:
        return []
    out = ["", "Personalisation (the two personalised rows):"]
    weights = pers.get("persistence_weights")
    if weights:
        out.append(
            "personal location moved by the share of a calibration period's deviation that "
            "persists on the hubs' own recordings (`persistence_weights`): "
            + ", ".join(f"{n} {v:.2f}" for n, v in weights.items())
            + ";"
        )
    else:
        out.append("personal location at full weight;")
    th = r["accuracy"]["federated_personalised"].get("thresholds")
    if r["config"].get("personal_threshold") and th:
        g = r["config"]["threshold"]
        raised = [v for v in th if v > g]
        top = f" (up to {max(raised):.2f})" if raised else ""
        out.append(
            f"clinical threshold personal (the detector's rule): raised above {g:g} for "
            f"{len(raised)} of {len(th)} test patients{top} in the federated + "
            "personalisation run."
        )
    else:
        out.append("one global clinical threshold.")
    return out


def render_markdown(r: dict[str, Any]) -> str:
    """The results table as Markdown (what docs/pilot.md quotes)."""
    cfg = r["config"]
    acc = r["accuracy"]
    lines = [
        "# Pilot results",
        "",
        f"{cfg['hubs']} hubs (one simulated patient each, {cfg['kinds_per_hub']} of 8 "
        f"clinical kinds per hub), {cfg['test_patients']} held-out test patients, "
        f"{cfg['rounds']} rounds x "
        f"{cfg['local_epochs']} local epochs (= {cfg['rounds'] * cfg['local_epochs']} epochs for "
        f"centralised and local-only), seed {cfg['seed']}. Window-level metrics in %.",
        "",
        *_budget_lines(r),
        "## Detection quality",
        "",
        "| variant | accuracy | balanced acc. | F1 | AUROC | paper accuracy |",
        "|---|---|---|---|---|---|",
    ]
    paper = r["paper"]
    rows = [
        ("local-only (mean over hubs)", "local_only", None),
        ("centralised (pooled raw windows)", "centralised", paper["accuracy_centralised"]),
        ("federated (FedAvg, n_k-weighted)", "federated", paper["accuracy_federated"]),
        ("federated + personalisation", "federated_personalised", None),
        ("centralised + personalisation (control)", "centralised_personalised", None),
        ("centralised + head re-fit (control)", "centralised_refit", None),
    ]
    for label, key, p in rows:
        m = acc[key]
        lines.append(
            f"| {label} | {_f(m['accuracy'])} | {_f(m['balanced_accuracy'])} | {_f(m['f1'])} | "
            f"{_f(m['auroc'], False, 3)} | {_f(p, True, 0) if p else ''} |"
        )
    lines += _personalisation_lines(r)
    spread = acc.get("seed_spread")
    if spread:
        seeds = spread["centralised"]["train_seeds"]
        lines += [
            "",
            f"Training-seed spread (accuracy %; same patients, initial weights and batch order "
            f"from seeds {', '.join(map(str, seeds))}; the table above is seed {seeds[0]}; "
            "targets use the mean):",
            "",
            "| variant | " + " | ".join(f"seed {k}" for k in seeds) + " | mean | sd |",
            "|---|" + "---|" * (len(seeds) + 2),
        ]
        for key, e in spread.items():
            lines.append(
                f"| {key} | "
                + " | ".join(_f(v) for v in e["accuracy"])
                + f" | {_f(e['accuracy_mean'])} | {_f(e['accuracy_sd'])} |"
            )
    co = acc.get("cohorts")
    if co:
        lines += [
            "",
            f"Over cohorts (accuracy %, mean over the training seeds; each cohort is another "
            f"draw of hubs and test patients, data seed {cfg['seed']} is the table above; "
            "the accuracy targets use the mean over cohorts):",
            "",
            "| cohort (data seed) | centralised | federated | federated + personalisation "
            "| federated - centralised | fed. + pers. - centralised "
            "| centralised + head re-fit (control) | federated - control |",
            "|---|---|---|---|---|---|---|---|",
        ]
        table = {k: headline_means(c) for k, c in co["per_cohort"].items()}
        table["mean"] = co["accuracy_mean"]
        for key, means in table.items():
            cen, fed, per, ref = (
                means[k]
                for k in ("centralised", "federated", "federated_personalised", "centralised_refit")
            )
            lines.append(
                f"| {key} | {_f(cen)} | {_f(fed)} | {_f(per)} | {_f(fed - cen)} | {_f(per - cen)} "
                f"| {_f(ref)} | {_f(fed - ref)} |"
            )
    lines += ["", "## Accuracy under attack (%, clean accuracy in the first row)", ""]
    modes = cfg["modes"]
    lines.append(
        "| attack | malicious | "
        + " | ".join(modes)
        + " | honest hubs only (ideal defence) | centralised (poisoned data) |"
    )
    lines.append("|---|---|" + "---|" * (len(modes) + 2))
    att = r["attacks"]
    lines.append(
        "| none | 0% | "
        + " | ".join(_f(att["clean_accuracy"].get(m)) for m in modes)
        + f" | {_f(att['clean_accuracy']['fedavg'])} | {_f(att['centralised_clean'])} |"
    )
    for key, row in att["runs"].items():
        honest = row.get("honest_hubs_only", {}).get("accuracy")
        for a in cfg["attacks"]:
            lines.append(
                f"| {a} | {float(key) * 100:.0f}% | "
                + " | ".join(_f(row[a][m]["accuracy"]) for m in modes)
                + f" | {_f(honest)} | {_f(row['centralised_poisoned_data']['accuracy'])} |"
            )
    b = r.get("best_robust_at_20pct")
    if b:
        lines += [
            "",
            f"At 20% malicious hubs the best robust mode is **{b['best_robust_mode']}** "
            f"(worst-case loss {_f(b['best_robust_worst_loss'])} points vs clean FedAvg); "
            f"plain FedAvg's worst-case loss is {_f(b['fedavg_worst_loss'])} points.",
        ]
        if b.get("honest_only_loss") is not None:
            lines.append(
                "An ideal defence that drops exactly the malicious hubs (FedAvg over the honest "
                f"hubs only) loses {_f(b['honest_only_loss'])} points in this seed: what an "
                "attack costs even when every attacker is found (their patients are missing)."
            )
        o = b.get("over_seeds")
        if o:
            lines += [
                "",
                f"Over training seeds (the attack grid is seed {o['train_seeds'][0]}; "
                f"**{o['mode']}** and the ideal defence rerun at 20 % with the others; "
                "loss vs the same seed's clean FedAvg):",
                "",
                "| 20 % malicious | "
                + " | ".join(f"seed {k}" for k in o["train_seeds"])
                + " | mean loss |",
                "|---|" + "---|" * (len(o["train_seeds"]) + 1),
                "| clean FedAvg | " + " | ".join(_f(v) for v in o["clean_fedavg"]) + " | |",
                f"| {o['mode']}, worst attack | "
                + " | ".join(_f(v) for v in o["worst_attack_accuracy"])
                + f" | {_f(o['worst_loss_mean'])} |",
                *(
                    f"| {o['mode']}, {a} | " + " | ".join(_f(v) for v in accs) + " | |"
                    for a, accs in o["accuracy_per_attack"].items()
                ),
                "| honest hubs only (ideal defence) | "
                + " | ".join(_f(v) for v in o["honest_only_accuracy"])
                + f" | {_f(o['honest_only_loss_mean'])} |",
            ]
    lines += ["", "## Latency from a sample leaving the wearable to its alert (ms)", ""]
    lines.append("| added one-way delay | path | p50 | p95 | p99 | lost |")
    lines.append("|---|---|---|---|---|---|")
    for key, row in r.get("latency", {}).items():
        for path, label in (
            ("edge_on_box_decision", "edge: on-box decision (local alarm)"),
            ("edge", "edge: alert delivered (1 delayed hop)"),
            ("central", "centralised: raw window up, alert back (2 delayed hops)"),
        ):
            p = row[path]
            lost = row["lost"].get(path, 0) if path in row["lost"] else 0
            lines.append(
                f"| {key} ms | {label} | {_f(p['p50'], False)} | {_f(p['p95'], False)} | "
                f"{_f(p['p99'], False)} | {lost} |"
            )
    band = r.get("bandwidth")
    if band:
        raw = band["raw_bytes_per_h"]
        lines += [
            "",
            "## Bandwidth leaving a box (kB per patient-hour)",
            "",
            f"Raw streams, as the textile frames them, over MQTT/TLS: {raw / 1e3:,.1f} kB/h. "
            f"Sent instead: alerts for {band['episodes_per_h']} labelled episodes, one "
            f"SecAgg+ update of this model ({band['model_parameters']:,} parameters, "
            f"{band['update_bytes_per_round'] / 1e3:.1f} kB up per round) per round, "
            "and the retained status.",
            "",
            "| profile | status every | rounds/h | alerts | updates | status | total | % of raw |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, p in band["profiles"].items():
            lines.append(
                f"| {name} | {p['status_interval_s']:.0f} s | {p['rounds_per_hour']:.1f} | "
                f"{p['alerts_bytes_per_h'] / 1e3:.1f} | {p['updates_bytes_per_h'] / 1e3:.1f} | "
                f"{p['status_bytes_per_h'] / 1e3:.1f} | {p['total_bytes_per_h'] / 1e3:.1f} | "
                f"{p['ratio_to_raw'] * 100:.2f} |"
            )
    lines += ["", "## Modality contribution (% of the total accuracy drop)", ""]
    sh = r["modality"]["share_pct"]
    lines.append(
        "| modality | retrain (acc.) | retrain (F1) | permutation (acc.) | permutation (F1) "
        "| paper |"
    )
    lines.append("|---|---|---|---|---|---|")
    for m in MODALITIES:
        cells = []
        for k in ("retrain_accuracy", "retrain_f1", "permutation_accuracy", "permutation_f1"):
            cells.append(_f(sh[k][m], False) if sh[k] else "n/a")
        lines.append(
            f"| {m} | " + " | ".join(cells) + f" | {paper['modality_contribution_pct'][m]:.0f} |"
        )
    pr = r["privacy"]
    lines += [
        "",
        "## Privacy",
        "",
        f"Federated + central Gaussian DP (noise multiplier {pr['noise_multiplier']}, clip "
        f"{_f(pr['clip'], False, 3)}, n_cap {pr['n_cap']}, {pr['rounds']} rounds, sampling rate "
        f"{pr['sampling_rate']}): epsilon = {_f(pr['epsilon'], False, 2)} "
        f"at delta = {pr['delta']:g}; "
        f"accuracy {_f(pr['federated_dp']['accuracy'])}%, F1 {_f(pr['federated_dp']['f1'])}%. "
        "All other rows use no DP noise (epsilon = infinity).",
        "",
        "## Targets",
        "",
    ]
    for name, t in r["targets"].items():
        extra = ""
        if "value_main_cohort" in t:
            per = ", ".join(f"{k}: {_f(v, False, 3)}" for k, v in t["value_per_cohort"].items())
            extra = (
                f" (mean over cohorts x training seeds; per cohort {per}; "
                f"seed {cfg['seed']} of cohort {cfg['seed']}: {_f(t['value_main_seed'], False, 3)})"
            )
        elif "value_main_seed" in t:
            seed_value = _f(t["value_main_seed"], False, 3)
            extra = f" (mean over training seeds; seed {cfg['seed']}: {seed_value})"
        if "value_vs_refit_control" in t:
            extra += (
                f"; against the centralised model with its head re-fitted the same way "
                f"(control): {_f(t['value_vs_refit_control'], False, 3)} -> "
                f"{'met' if t['met_vs_refit_control'] else 'NOT met'}"
            )
        if t.get("honest_only_loss") is not None:
            extra += f" (ideal defence, honest hubs only: {_f(t['honest_only_loss'], False, 3)})"
        if "alert_delivered_ratio" in t:
            extra = (
                f" (on-box decision; the alert delivered over the delayed link: "
                f"{_f(t['alert_delivered_ratio'], False, 3)})"
            )
        lines.append(
            f"- {name}: value {_f(t['value'], False, 3)} (need {t['need']}) -> "
            f"{'met' if t['met'] else 'NOT met'}{extra}"
        )
    lines.append("")
    return "\n".join(lines)


def write_outputs(r: dict[str, Any], out: Path) -> None:
    """``pilot.json``, ``pilot.md`` and PNG plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pilot.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n")
    (out / "pilot.md").write_text(render_markdown(r))
    plot(r, out)


def plot(r: dict[str, Any], out: Path) -> list[Path]:
    """accuracy.png, attacks.png, latency.png, modality.png (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    acc = r["accuracy"]
    names = ["local_only", "centralised", "federated", "federated_personalised"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = np.arange(len(names))
    for j, k in enumerate(("accuracy", "f1", "auroc")):
        ax.bar(xs + 0.27 * (j - 1), [acc[n][k] or 0 for n in names], 0.27, label=k)
    ax.set_xticks(xs, [n.replace("_", "\n") for n in names])
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.set_title("Detection quality on held-out patients")
    fig.tight_layout()
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    cfg = r["config"]
    fig, axes = plt.subplots(
        1, len(cfg["attacks"]), figsize=(3 * len(cfg["attacks"]), 3.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    fr = sorted(r["attacks"]["runs"], key=float)
    for ax, a in zip(axes, cfg["attacks"], strict=True):
        for mode in cfg["modes"]:
            ax.plot(
                [float(f) * 100 for f in fr],
                [r["attacks"]["runs"][f][a][mode]["accuracy"] for f in fr],
                marker="o",
                label=mode,
            )
        ax.plot(
            [float(f) * 100 for f in fr],
            [r["attacks"]["runs"][f]["centralised_poisoned_data"]["accuracy"] for f in fr],
            "k--",
            label="centralised (poisoned)",
        )
        ax.set_title(a, fontsize=9)
        ax.set_xlabel("% malicious hubs")
    axes[0].set_ylabel("accuracy")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "attacks.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    if r.get("latency"):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        keys = list(r["latency"])
        xs = np.arange(len(keys))
        for j, p in enumerate(("edge_on_box_decision", "edge", "central")):
            ax.bar(
                xs + 0.27 * (j - 1), [r["latency"][k][p]["p99"] or 0 for k in keys], 0.27, label=p
            )
        ax.set_xticks(xs, [f"+{k} ms" for k in keys])
        ax.set_ylabel("p99 latency (ms)")
        ax.legend()
        fig.tight_layout()
        paths.append(out / "latency.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

    sh = r["modality"]["share_pct"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = np.arange(len(MODALITIES))
    kinds = [k for k in ("retrain_accuracy", "permutation_accuracy", "permutation_f1") if sh[k]]
    for j, k in enumerate(kinds):
        ax.bar(xs + 0.25 * (j - 1), [sh[k][m] for m in MODALITIES], 0.25, label=k)
    ax.bar(
        xs + 0.25 * len(kinds) - 0.25,
        [PAPER["modality_contribution_pct"][m] for m in MODALITIES],
        0.25,
        label="paper",
        color="grey",
    )
    ax.set_xticks(xs, MODALITIES)
    ax.set_ylabel("% of total drop")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "modality.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
