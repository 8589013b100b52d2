"""Footprint of a box install: installed size, import time of `edgeagent run`, RSS with 4 wearables.

Each figure is taken for this tree and, in the same run, for a baseline revision (default: the
last commit before the runtime and the lab were separated), so the ratio holds on any machine:

1. ``installed_mb``: ``pip install <tree>`` with no extras into a fresh venv, size of its
   site-packages, and which heavy libraries came along (the box must get none of scikit-learn,
   scipy, dp-accounting, pycryptodome, threadpoolctl, matplotlib).
2. ``import_s``: median wall time of a fresh interpreter of that venv importing what
   ``edgeagent run`` loads with federation on (CLI, daemon wiring, the federated client),
   runs interleaved between the two trees.
3. ``rss_mb``: ``bench/detect.py``'s RSS child (4 simulated wearables through windows,
   features, the ONNX detector, the learner thread and the alert store, 120 s simulated) run
   against each tree's code.

Run: python bench/footprint.py [--baseline REV] [--runs N]   (needs network access to the
package index for the two venvs, or a warm pip cache; takes a few minutes)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "footprint.json"
#: The last commit with the lab inside the runtime.
DEFAULT_BASELINE = "e6dc13e"
HEAVY = ("scikit-learn", "scipy", "dp-accounting", "pycryptodome", "threadpoolctl", "matplotlib")
#: What `edgeagent run` imports, by layout (module paths moved with the separation).
IMPORTS = {
    "old": "import edgeagent.cli, edgeagent.service, edgeagent.wiring, edgeagent.fl.client",
    "new": "import edgeagent.cli, edgeagent.daemon.wiring, edgeagent.federation.client",
}


def _venv(tree: Path, where: Path) -> tuple[Path, dict[str, Any]]:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    py = where / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(tree)], check=True, capture_output=True)  # fmt: skip
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    size = sum(p.stat().st_size for p in Path(site).rglob("*") if p.is_file())
    pkgs = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip
    names = {p["name"].lower() for p in json.loads(pkgs)}
    return py, {"installed_mb": round(size / 2**20, 1), "heavy": [h for h in HEAVY if h in names]}


def _layout(tree: Path) -> str:
    return "new" if (tree / "edgeagent" / "daemon").is_dir() else "old"


def _rss(tree: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state:
        env = {"PYTHONPATH": str(tree)}
        setup = (
            "from pathlib import Path\nfrom edgeagent.model.registry import ModelRegistry\n"
            f"reg = ModelRegistry(Path({state!r}))\n"
            "reg.activate(reg.add(Path('models/baseline.onnx').read_bytes(), 'bench').version,"
            " 'bench')"
        )
        subprocess.run([sys.executable, "-c", setup], check=True, cwd=tree, env=env)
        out = subprocess.run(
            [sys.executable, "bench/detect.py", "--rss-child", "120", "--state", state],
            check=True, capture_output=True, text=True, cwd=tree, env=env,
        )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=7, help="interleaved import-time runs")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    base_tree = work / "baseline"
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                        str(base_tree), args.baseline], check=True)  # fmt: skip
        trees = {"baseline": base_tree, "this": ROOT}
        res: dict[str, Any] = {"baseline_rev": args.baseline}
        pys = {}
        for name, tree in trees.items():
            print(f"[{name}] installing into a fresh venv ...", flush=True)
            pys[name], res[name] = _venv(tree, work / f"venv-{name}")
        times: dict[str, list[float]] = {n: [] for n in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                t = time.perf_counter()
                subprocess.run([str(pys[name]), "-c", IMPORTS[_layout(tree)]], check=True,
                               cwd=work)  # fmt: skip
                times[name].append(time.perf_counter() - t)
        for name, tree in trees.items():
            res[name]["import_s"] = round(statistics.median(times[name]), 3)
            print(f"[{name}] RSS run (120 s simulated, 4 wearables) ...", flush=True)
            rss = _rss(tree)
            res[name]["rss_mb"] = round(rss["rss_mb"], 1)
            res[name]["rss_windows"] = rss["windows"]
        b, t = res["baseline"], res["this"]
        res["ratios"] = {k: round(t[k] / b[k], 3) for k in ("installed_mb", "import_s", "rss_mb")}
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                       check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{'':22}{'baseline ' + args.baseline:>20}{'this tree':>14}{'ratio':>8}")
    for k, label in (("installed_mb", "installed (MB)"), ("import_s", "import, run (s)"),
                     ("rss_mb", "RSS, 4 wearables (MB)")):  # fmt: skip
        print(f"{label:22}{b[k]:>20}{t[k]:>14}{res['ratios'][k]:>8}")
    print(f"heavy libraries: baseline {b['heavy'] or 'none'}; this tree {t['heavy'] or 'none'}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
