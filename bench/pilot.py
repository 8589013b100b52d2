"""Pilot benchmark: the results table of ``edgeagent pilot``, written to bench/results/.

Runs exactly the code behind ``edgeagent pilot`` (``edgelab.pilot.run_pilot``)
with the default configuration and writes ``bench/results/pilot.json``,
``bench/results/pilot.md`` and the plots (``bench/results/pilot_*.png``).
Baselines are measured in the same run: centralised training on the pooled
windows for the accuracy rows, clean FedAvg for the attack rows and the
centralised MQTT path for latency; the summary prints each ratio.

Run: python bench/pilot.py [--small] [--hubs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgelab.pilot.config import PilotConfig  # noqa: E402
from edgelab.pilot.report import render_markdown, write_outputs  # noqa: E402
from edgelab.pilot.runner import run_pilot  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the CI-sized pilot")
    ap.add_argument("--hubs", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seeds", type=int, help="training seeds for the headline rows (default 3)")
    ap.add_argument(
        "--cohorts", type=int, help="simulated cohorts for the headline rows (default 3)"
    )
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    over: dict[str, int] = {"processes": args.processes}
    if args.hubs:
        over["hubs"] = args.hubs
    if args.rounds:
        over["rounds"] = args.rounds
    if args.seeds:
        over["seeds"] = args.seeds
    if args.cohorts:
        over["cohorts"] = args.cohorts
    cfg = PilotConfig.small(**over) if args.small else PilotConfig(**over)
    r = run_pilot(cfg, None, log=print)
    with tempfile.TemporaryDirectory() as tmp:
        write_outputs(r, Path(tmp))
        args.out.mkdir(parents=True, exist_ok=True)
        for f in Path(tmp).iterdir():
            name = f.name if f.name.startswith("pilot") else f"pilot_{f.name}"
            shutil.copy(f, args.out / name)
    print(render_markdown(r))
    acc = r["accuracy"]
    c = acc["centralised"]["accuracy"]
    print("ratios vs baselines measured in this run:")
    print(f"  federated / centralised accuracy            {acc['federated']['accuracy'] / c:.3f}")
    print(
        f"  federated+personal / centralised accuracy   "
        f"{acc['federated_personalised']['accuracy'] / c:.3f}"
    )
    for key, row in r.get("latency", {}).items():
        ce = row["central"]["p99"]
        print(
            f"  edge / centralised p99 latency at +{key} ms   "
            f"{row['edge_on_box_decision']['p99'] / ce:.3f} (on-box alert), "
            f"{row['edge']['p99'] / ce:.3f} (alert delivered to the cloud)"
        )
    for name, p in r["bandwidth"]["profiles"].items():
        print(f"  bytes sent / raw stream bytes ({name:7})     {p['ratio_to_raw']:.4f}")
    print(f"wrote {args.out / 'pilot.json'} and {args.out / 'pilot.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
