"""Execution-provider choice: pure rules as a table, then real onnxruntime sessions.

This machine's onnxruntime is a CPU build, so asking for CUDA/TensorRT here is
exactly the "Jetson without working GPU libraries" case: the session must
still open, on CPU, and the choice must say why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeagent.errors import ModelError
from edgeagent.ops.config import DetectionSection
from edgeagent.providers import (
    CPU,
    CUDA,
    TENSORRT,
    _cores,
    choose_from_config,
    choose_providers,
    open_session,
)

MODEL = Path(__file__).resolve().parents[1] / "models" / "baseline.onnx"
JETSON = (TENSORRT, CUDA, CPU)
PI = ("AzureExecutionProvider", CPU)


@pytest.mark.parametrize(
    ("requested", "available", "threads", "cores", "providers", "intra"),
    [
        ((CPU,), PI, 1, 4, (CPU,), 1),
        ((CPU,), PI, 8, 4, (CPU,), 4),  # capped at the cores
        ((CPU,), PI, None, 4, (CPU,), 3),  # one core left to the sources
        ((CPU,), PI, None, 16, (CPU,), 4),  # and never more than 4
        ((CPU,), PI, None, 1, (CPU,), 1),
        ((CUDA, CPU), PI, 2, 4, (CPU,), 2),  # no CUDA in a Pi build
        ((TENSORRT,), JETSON, 2, 6, (TENSORRT, CUDA, CPU), 1),  # CUDA follows TensorRT
        ((CUDA,), JETSON, 4, 6, (CUDA, CPU), 1),
        ((TENSORRT,), (TENSORRT, CPU), 2, 4, (CPU,), 2),  # TensorRT without CUDA is unusable
        (("AzureExecutionProvider", CPU), PI, 1, 2, (CPU,), 1),
    ],
)
def test_choice_table(
    requested: tuple[str, ...],
    available: tuple[str, ...],
    threads: int | None,
    cores: int,
    providers: tuple[str, ...],
    intra: int,
) -> None:
    c = choose_providers(requested, available, cpu_count=cores, threads=threads)
    assert c.providers == providers
    assert c.intra_op_threads == intra
    assert len(c.provider_options) == len(c.providers)
    assert c.providers[-1] == CPU  # always a CPU fallback
    for name in set(requested) - set(providers):
        assert name in c.skipped and name.removesuffix("ExecutionProvider") in c.reason


def test_fallback_reason_names_the_missing_accelerator() -> None:
    c = choose_providers((TENSORRT, CUDA), PI, cpu_count=4, threads=2)
    assert c.primary == CPU and c.fell_back
    assert c.skipped == {
        TENSORRT: "not in this onnxruntime build",
        CUDA: "not in this onnxruntime build",
    }
    assert c.reason.startswith("CPU with 2 threads")
    assert c.as_dict()["fell_back"] is True


def test_tensorrt_gets_engine_cache(tmp_path: Path) -> None:
    c = choose_providers((TENSORRT,), JETSON, cpu_count=6, cache_dir=tmp_path / "trt")
    opts = dict(zip(c.providers, c.provider_options, strict=True))
    assert opts[TENSORRT]["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert opts[TENSORRT]["trt_engine_cache_enable"] == "True"
    assert opts[CUDA] == {"device_id": "0"}
    assert not c.fell_back and c.reason.startswith("Tensorrt on GPU 0")


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ModelError):
        choose_providers((), PI)
    with pytest.raises(ModelError):
        choose_providers((CPU,), PI, threads=0)


def _run(sess: ort.InferenceSession) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for inp in sess.get_inputs():  # symbolic dims -> 3 rows; sigma-like inputs stay positive
        shape = [d if isinstance(d, int) else 3 for d in inp.shape]
        feed[inp.name] = (np.abs(rng.normal(size=shape)) + 0.5).astype(np.float32)
    return sess.run(None, feed)


def test_real_session_on_cpu_matches_a_plain_session() -> None:
    data = MODEL.read_bytes()
    choice = choose_providers((CPU,), ort.get_available_providers(), threads=2)
    sess, applied = open_session(data, choice)
    assert applied == choice and sess.get_providers() == [CPU]
    plain = ort.InferenceSession(data, providers=[CPU])
    for a, b in zip(_run(sess), _run(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_real_session_falls_back_when_cuda_is_claimed_but_absent() -> None:
    """A broken GPU install: the provider list says CUDA, onnxruntime cannot use it."""
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime build really has CUDA")
    data = MODEL.read_bytes()
    choice = choose_providers((CUDA,), (CUDA, CPU), cpu_count=2, threads=1)
    assert choice.providers == (CUDA, CPU)
    sess, applied = open_session(data, choice)
    assert sess.get_providers() == [CPU]
    assert applied.providers == (CPU,) and applied.fell_back
    assert CUDA in applied.skipped and "fell back" in applied.reason
    assert all(np.isfinite(o).all() for o in _run(sess))


def test_choose_from_config_uses_detection_section(tmp_path: Path) -> None:
    det = DetectionSection(execution_providers=("CUDAExecutionProvider", CPU), threads=1)
    c = choose_from_config(det, tmp_path, available=PI)
    assert c.providers == (CPU,) and CUDA in c.skipped and c.intra_op_threads == 1
    auto = choose_from_config(DetectionSection(threads=0), tmp_path, available=PI)
    assert (
        auto.intra_op_threads == max(1, min(4, _cores() - 1)) and "sized to the box" in auto.reason
    )


def test_cpu_model_load_failure_is_a_model_error() -> None:
    with pytest.raises(ModelError):
        open_session(b"not an onnx model", choose_providers((CPU,), (CPU,)))


def test_detector_runs_on_the_chosen_backend_and_reports_the_fallback() -> None:
    """The detector opens its session through the choice and keeps what was applied."""
    from edgeagent.pipeline.alerts import MemoryAlertSink
    from edgeagent.pipeline.detect import Detector, DetectorConfig

    choice = choose_providers((CUDA, CPU), (CUDA, CPU), cpu_count=2, threads=1)
    det = Detector(
        MODEL.read_bytes(), "baseline", MemoryAlertSink(), DetectorConfig(backend=choice)
    )
    assert det.backend is not None
    if CUDA in ort.get_available_providers():
        assert det.backend.primary == CUDA
    else:
        assert det.backend.providers == (CPU,) and det.backend.fell_back
    plain = Detector(MODEL.read_bytes(), "baseline", MemoryAlertSink())
    assert plain.backend is None  # the CPU default path is unchanged


def test_doctor_shows_the_backend_and_the_fallback(tmp_path: Path) -> None:
    from edgeagent.cli.doctor import check_model
    from edgeagent.ops.config import load_config

    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(
        f'[agent]\nbox_id = "box-1"\nstate_dir = "{tmp_path}"\n'
        f'[detection]\nmodel_path = "{MODEL}"\nthreads = 1\n'
        'execution_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]\n'
    )
    checks = {c.name: c for c in check_model(load_config(cfg_file))}
    backend = checks["inference backend"]
    if CUDA in ort.get_available_providers():
        assert backend.status == "ok" and backend.detail.startswith("CUDA")
    else:
        assert backend.status == "warn" and "CUDA" in backend.detail and "skipped" in backend.detail
        assert "onnxruntime" in backend.fix
    assert checks["model"].status == "ok"


def test_status_renders_the_backend_a_daemon_reports() -> None:
    import io

    from rich.console import Console

    from edgeagent.cli.status import render

    choice = choose_providers((TENSORRT,), PI, cpu_count=4, threads=2)
    buf = io.StringIO()
    render({"box_id": "b", "state": "running", "inference": choice.as_dict()}, Console(file=buf))
    assert "inference: CPU with 2 threads" in buf.getvalue() and "Tensorrt" in buf.getvalue()


def test_daemon_detection_runs_on_the_configured_backend(tmp_state: Path, short_dir: Path) -> None:
    """``edgeagent run`` wiring: threads = 0 is sized to the box, CUDA falls back to CPU,
    and the detection component reports the backend for status."""
    from edgeagent.daemon.components import BlockBus, Context, Counters, PipelineComponent
    from edgeagent.daemon.health import Liveness
    from edgeagent.daemon.wiring import daemon_factory
    from edgeagent.ops.config import parse_config

    cfg = parse_config(
        {
            "agent": {"box_id": "box-p", "state_dir": str(tmp_state)},
            "control": {"socket_path": str(short_dir / "c.sock")},
            "detection": {
                "model_path": str(MODEL),
                "threads": 0,
                "execution_providers": [CUDA, CPU],
            },
            "learning": {"enabled": False},
        }
    )
    live, counters = Liveness(), Counters()
    bus = BlockBus(counters=counters)
    ctx = Context(cfg, live, counters, bus, PipelineComponent(bus, live, counters))
    comps = daemon_factory(ctx)
    try:
        (det,) = [c for c in comps if c.name == "detection"]
        inf = dict(det.status())["inference"]
        assert inf["intra_op_threads"] == max(1, min(4, _cores() - 1))
        if CUDA not in ort.get_available_providers():
            assert inf["providers"] == [CPU] and inf["fell_back"] and CUDA in inf["skipped"]
    finally:
        for c in reversed(comps):
            c.stop()
