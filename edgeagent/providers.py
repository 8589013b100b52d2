"""Which onnxruntime execution providers and thread counts a box should use.

Why a separate, pure module: the same decision is needed by the detector (to
open its session), by ``edgeagent doctor`` (to say what *would* run) and by
``edgeagent status`` (to say what *does* run), and it must be testable on a
machine that has no GPU. So the choice is a function of plain inputs -- the
configured preference list, what ``onnxruntime.get_available_providers()``
reports, the core count -- and it returns the providers, their options, the
thread counts and a one-line reason a field engineer can read.

Rules (docs/operations.md, "Inference back ends"):

* The configured list is a preference order. Providers the installed
  onnxruntime build does not have are skipped and named in the reason; the
  CPU provider is always appended last, so a Jetson whose CUDA libraries are
  broken still detects anomalies (slower) instead of not at all.
* TensorRT, when chosen, is always followed by CUDA (TensorRT hands it the
  nodes it cannot compile) and gets an engine cache under the state
  directory, because building engines takes minutes on a Jetson at each start.
* Threads: a configured count is capped at the box's cores (more threads than
  cores only adds contention on a Pi); with a GPU provider the CPU side gets
  one thread because it only feeds the device. ``threads=None`` sizes to the
  box: one core is left to the sources and the MQTT link, at most 4 threads
  (the model is tiny; beyond that the thread pool costs more than it gives).
* Sessions never spin (spinning threads burn a Pi's cores while idle).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from edgeagent.errors import ModelError

CPU: Final = "CPUExecutionProvider"
CUDA: Final = "CUDAExecutionProvider"
TENSORRT: Final = "TensorrtExecutionProvider"
GPU_PROVIDERS: Final = frozenset({CUDA, TENSORRT})
# Providers that are present in stock wheels but never make sense on a box:
# Azure calls out to a cloud endpoint, which a health hub must not do silently.
NEVER_AUTO: Final = frozenset({"AzureExecutionProvider"})
MAX_AUTO_THREADS: Final = 4


@dataclass(frozen=True)
class ProviderChoice:
    """What to pass to ``onnxruntime.InferenceSession`` and why.

    ``providers`` and ``provider_options`` are parallel tuples in priority
    order; ``skipped`` maps each requested but unusable provider to the reason.
    """

    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str], ...]
    intra_op_threads: int
    inter_op_threads: int
    reason: str
    requested: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """The provider that will run most of the graph."""
        return self.providers[0]

    @property
    def fell_back(self) -> bool:
        """True when a requested accelerator could not be used and CPU runs instead."""
        return self.primary == CPU and any(p != CPU for p in self.requested)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what status and doctor print)."""
        return {
            "providers": list(self.providers),
            "primary": self.primary,
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "requested": list(self.requested),
            "skipped": dict(self.skipped),
            "fell_back": self.fell_back,
            "reason": self.reason,
        }


def _threads(configured: int | None, cpu_count: int, gpu: bool) -> int:
    cores = max(1, cpu_count)
    if gpu:
        return 1
    if configured is None:
        return max(1, min(MAX_AUTO_THREADS, cores - 1))
    if configured < 1:
        raise ModelError(f"onnxruntime thread count must be >= 1, got {configured}")
    return min(configured, cores)


def choose_providers(
    requested: Sequence[str],
    available: Sequence[str],
    *,
    cpu_count: int | None = None,
    threads: int | None = None,
    cache_dir: Path | None = None,
    device_id: int = 0,
) -> ProviderChoice:
    """Pick providers and thread counts (pure; see the module docstring for the rules).

    ``available`` is ``onnxruntime.get_available_providers()`` (passed in so
    tests can describe a Jetson); ``cpu_count`` defaults to the cores this
    process may run on; ``cache_dir`` is where TensorRT keeps its engines.
    """
    if not requested:
        raise ModelError("no execution providers requested; list at least CPUExecutionProvider")
    have = set(available)
    cores = cpu_count if cpu_count is not None else _cores()
    chosen: list[str] = []
    options: list[dict[str, str]] = []
    skipped: dict[str, str] = {}
    for name in requested:
        if name in chosen:
            continue
        if name in NEVER_AUTO:
            skipped[name] = "not used on a box (sends data off the box)"
            continue
        if name not in have:
            skipped[name] = "not in this onnxruntime build"
            continue
        if name == TENSORRT and CUDA not in have:
            skipped[name] = "needs CUDAExecutionProvider, which this build lacks"
            continue
        chosen.append(name)
        options.append(_options(name, cache_dir, device_id))
        if name == TENSORRT and CUDA not in requested:
            chosen.append(CUDA)
            options.append(_options(CUDA, cache_dir, device_id))
    if CPU not in chosen:
        chosen.append(CPU)
        options.append({})
    gpu = chosen[0] in GPU_PROVIDERS
    intra = _threads(threads, cores, gpu)
    how = "configured" if threads is not None else "sized to the box"
    if chosen[0] == CPU:
        head = f"CPU with {intra} thread{'s' * (intra != 1)} ({how}, {cores} cores)"
    else:
        head = f"{chosen[0].removesuffix('ExecutionProvider')} on GPU {device_id}, CPU fallback"
    if skipped:
        head += "; skipped " + ", ".join(f"{k} ({v})" for k, v in skipped.items())
    return ProviderChoice(
        providers=tuple(chosen),
        provider_options=tuple(options),
        intra_op_threads=intra,
        inter_op_threads=1,
        reason=head,
        requested=tuple(requested),
        skipped=skipped,
    )


def _options(name: str, cache_dir: Path | None, device_id: int) -> dict[str, str]:
    if name == CUDA:
        return {"device_id": str(device_id)}
    if name == TENSORRT:
        opts = {"device_id": str(device_id), "trt_fp16_enable": "True"}
        if cache_dir is not None:
            opts["trt_engine_cache_enable"] = "True"
            opts["trt_engine_cache_path"] = str(cache_dir)
        return opts
    return {}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_providers() -> tuple[str, ...]:
    """What the installed onnxruntime build offers (import kept local: CLI start-up time)."""
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


def choose_from_config(
    detection: Any, state_dir: Path | None = None, available: Sequence[str] | None = None
) -> ProviderChoice:
    """``choose_providers`` for a config's ``[detection]`` section.

    ``detection.threads`` is taken as configured, 0 meaning "size to the box";
    ``state_dir`` gives the TensorRT engine cache (``<state_dir>/trt-cache``).
    """
    threads = getattr(detection, "threads", None)
    return choose_providers(
        tuple(detection.execution_providers),
        available if available is not None else available_providers(),
        threads=threads or None,
        cache_dir=(state_dir / "trt-cache") if state_dir is not None else None,
    )


def session_options(choice: ProviderChoice) -> Any:
    """``onnxruntime.SessionOptions`` with the choice's threads and no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = choice.intra_op_threads
    so.inter_op_num_threads = choice.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def open_session(model: bytes, choice: ProviderChoice) -> tuple[Any, ProviderChoice]:
    """Create the session and return it with the choice *as onnxruntime applied it*.

    A GPU build can still fail to initialise CUDA (driver mismatch, no device
    node in the container); onnxruntime then either raises or silently drops
    the provider. Either way the detector must run, so this retries on CPU and
    the returned choice says what happened, for status and doctor.
    """
    import onnxruntime as ort

    try:
        with warnings.catch_warnings():
            # "provider not in available provider names": reported in the choice instead
            warnings.simplefilter("ignore", UserWarning)
            sess = ort.InferenceSession(
                model,
                sess_options=session_options(choice),
                providers=list(choice.providers),
                provider_options=[dict(o) for o in choice.provider_options],
            )
    except Exception as e:  # onnxruntime raises untyped Fail/RuntimeException errors
        if choice.primary == CPU:
            raise ModelError(f"onnxruntime cannot load the model: {e}") from e
        fallback = choose_providers((CPU,), (CPU,), threads=None)
        sess, _ = open_session(model, fallback)
        return sess, _applied(choice, tuple(sess.get_providers()), f"{choice.primary} failed: {e}")
    return sess, _applied(choice, tuple(sess.get_providers()), "")


def _applied(choice: ProviderChoice, actual: tuple[str, ...], error: str) -> ProviderChoice:
    if actual == choice.providers and not error:
        return choice
    dropped = {p: (error or "dropped by onnxruntime at session start") for p in choice.providers}
    for p in actual:
        dropped.pop(p, None)
    skipped = {**choice.skipped, **dropped}
    opts: Mapping[str, dict[str, str]] = dict(
        zip(choice.providers, choice.provider_options, strict=True)
    )
    intra = choice.intra_op_threads
    if actual and actual[0] == CPU and choice.primary != CPU:
        intra = _threads(None, _cores(), gpu=False)
    reason = f"{actual[0] if actual else '?'} (fell back: " + "; ".join(
        f"{k}: {v}" for k, v in dropped.items()
    )
    return ProviderChoice(
        providers=actual,
        provider_options=tuple(opts.get(p, {}) for p in actual),
        intra_op_threads=intra,
        inter_op_threads=choice.inter_op_threads,
        reason=reason + ")",
        requested=choice.requested,
        skipped=skipped,
    )
