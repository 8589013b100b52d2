"""bench/daemon_rss.py: the real daemon's memory, by mapping and by import."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.plugins.ops import REPO, run_bench

sys.path.insert(0, str(REPO / "bench"))
import daemon_rss


def test_mapping_groups_name_the_package_the_interpreter_and_anonymous_memory() -> None:
    site = "/usr/lib/python3.11/site-packages"
    assert daemon_rss.mapping_group(f"{site}/numpy/_core/_multiarray_umath.so") == "numpy"
    assert daemon_rss.mapping_group(f"{site}/numpy.libs/libopenblas.so") == "numpy"
    assert daemon_rss.mapping_group(f"{site}/onnxruntime/capi/x.so") == "onnxruntime"
    assert daemon_rss.mapping_group("/usr/lib/libpython3.11.so.1.0") == "python interpreter"
    assert daemon_rss.mapping_group("").startswith("anonymous")
    assert daemon_rss.mapping_group("[heap]").startswith("anonymous")
    assert daemon_rss.mapping_group("/usr/lib/x86_64-linux-gnu/libc.so.6").startswith("system")


def test_smaps_groups_add_up_to_the_process_rss() -> None:
    np.zeros(1)  # numpy is mapped in this process
    rows = daemon_rss.smaps_by_group(os.getpid())
    total = sum(r["rss_mb"] for r in rows)
    rss = psutil.Process().memory_info().rss / 2**20
    assert abs(total - rss) < max(2.0, 0.05 * rss), (total, rss)
    assert any(r["group"] == "numpy" for r in rows)


@pytest.mark.slow
def test_daemon_rss_bench_runs_the_real_daemon(tmp_path: Path) -> None:
    out = tmp_path / "daemon_rss.json"
    args = ["--seconds", "4", "--first-seconds", "4", "--out", str(out)]
    run = run_bench("daemon_rss.py", args, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    doc = json.loads(out.read_text())
    d = doc["daemon"]
    assert 20 < d["peak_rss_mb"] < 1000 and d["first_start_peak_rss_mb"] > 20
    assert sum(r["rss_mb"] for r in d["mappings"]) > 0.8 * d["end_rss_mb"]
    # neither start loads the onnx package (the registry reads models itself)
    assert d["onnx_loaded"] == {"first_start": False, "later_start": False}
    mods = [r["module"] for r in doc["imports"]]
    assert mods[-1] == "onnx" and "edgeagent.daemon.wiring" in mods
    assert "peak RSS" in run.stdout and "import (cumulative" in run.stdout
