"""Stage 1: the baseline model the hubs start from.

The model ships as package data (``edgeagent/data/baseline.onnx``), so the demo
runs the same from a wheel as from a checkout. Only where it is missing is it
built, deterministically, by :mod:`edgelab.baseline` (in a subprocess: the
build forks its own workers and takes about a minute on two cores).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from edgelab.demo.options import ModelInfo

log = logging.getLogger(__name__)


def prepare_model(build_dir: Path | None = None, timeout_s: float = 900.0) -> ModelInfo:
    """The shipped baseline model, or one built into ``build_dir`` first.

    ``build_dir`` defaults to :func:`edgelab.baseline.default_out` (the checkout's
    ``models/``, where the package data links). A model built there earlier is
    reused. Raises ``ModelError`` when the build fails.
    """
    from edgeagent.errors import InstallError, ModelError
    from edgeagent.model.graph import parse_model, sha256_hex
    from edgeagent.ops.install import BASELINE_MODEL, shipped_file

    path: Path | None
    try:
        path = shipped_file(BASELINE_MODEL)
    except InstallError:
        path = None
    if path is not None:
        built, note = False, f"shipped baseline model ({path})"
    else:
        from edgelab.baseline import default_out

        out = (build_dir or default_out()).absolute()
        path = out / BASELINE_MODEL
        built = not path.is_file()
        if built:
            log.warning("building the baseline model first (edgelab.baseline, deterministic)")
            cmd = [sys.executable, "-m", "edgelab.baseline", "--out", str(out)]
            try:
                proc = subprocess.run(cmd, timeout=timeout_s, capture_output=True)
            except subprocess.TimeoutExpired as exc:
                raise ModelError(
                    f"python -m edgelab.baseline did not finish within {timeout_s:.0f} s; "
                    f"run it yourself (python -m edgelab.baseline --out {out}) and start again"
                ) from exc
            if proc.returncode != 0 or not path.is_file():
                tail = proc.stderr.decode(errors="replace")[-2000:]
                raise ModelError(f"python -m edgelab.baseline failed ({proc.returncode}): {tail}")
        how = "built with" if built else "built earlier with"
        note = f"baseline model was not shipped: {how} edgelab.baseline ({path})"
    data = path.read_bytes()
    parse_model(data)
    return ModelInfo(path, data, sha256_hex(data), built, note)
