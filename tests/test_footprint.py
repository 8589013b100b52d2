"""What a box loads: the daemon and the federated client must not pull the aggregator's or the
lab's libraries. Checked in a fresh interpreter, since this test process has imported them all.

import-linter (run by .ci/run) holds the static layers; this holds the lazy imports it cannot
see, by importing the box's entry points and listing the heavy modules that came along.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "models" / "baseline.onnx"

#: Libraries a box must never load (aggregator, lab, tests).
FORBIDDEN = (
    "sklearn",
    "dp_accounting",
    "Crypto",
    "threadpoolctl",
    "matplotlib",
    "edgelab",
    "firmware_sim",
    # ~27 MB with protobuf and ml_dtypes: model.graph loads it to add a model, never to run one
    "onnx",
)


@pytest.mark.parametrize(
    "module",
    ["edgeagent.daemon.wiring", "edgeagent.federation.client", "edgeagent.cli.run"],
)
def test_box_entry_points_load_no_aggregator_or_lab_library(module: str) -> None:
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & set(FORBIDDEN), f"{module} loads {sorted(loaded & set(FORBIDDEN))}"


def test_runtime_cli_finds_the_lab_verbs_through_entry_points() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="edgeagent.verbs")}
    assert names == {"demo": "edgelab.verbs.demo", "pilot": "edgelab.verbs.pilot"}


def test_edgeagent_run_does_not_import_the_lab_or_scipy() -> None:
    """The daemon's command line (``edgeagent run``) skips the lab's entry-point verbs."""
    code = (
        "import sys, json\n"
        "sys.argv = ['edgeagent', 'run', '--help']\n"
        "from edgeagent import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_a_daemon_start_checks_its_model_without_the_onnx_package(tmp_path: Path) -> None:
    """First start (an empty registry seeded from the model file) and every later start
    (the active model verified) read the model with the registry's own parser: ``onnx``
    would add ~14 MB to the daemon (bench/daemon_rss.py)."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from edgeagent.model.registry import ModelRegistry\n"
        "from edgeagent.pipeline.lifecycle import runnable_model\n"
        f"reg = ModelRegistry(Path({str(tmp_path)!r}))\n"
        f"rec = runnable_model(reg, Path({str(MODEL)!r})).record\n"
        "reg.load_params(rec)\n"
        "print(json.dumps([rec.label, 'onnx' in sys.modules]))\n"
    )
    for start in ("first", "later"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        label, loaded = json.loads(out.stdout.splitlines()[-1])
        assert label.startswith("v1-"), (start, label)
        assert not loaded, f"the {start} start imported onnx"
