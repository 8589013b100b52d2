"""Shapes, parameter layout and metadata of the detector, without importing ``onnx``.

Why a separate module: the running agent only needs these and onnxruntime;
``onnx`` itself (graph building, the checker) costs ~15 MB of resident memory
on a small box and is imported only where models are built or registered
(``graph.py``, ``registry.add``). ``graph.py`` re-exports everything here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeagent.errors import ModelError

#: Standardised features are clipped here so one wild value cannot dominate.
CLIP = 8.0
#: Opset 17 runs on every onnxruntime wheel we target (Pi OS, JetPack 5+).
OPSET = 17
#: IR 8 keeps the file loadable by older onnxruntime builds on field boxes.
IR_VERSION = 8
META_KEY = "edgeagent.meta"
INPUT_NAMES = ("x", "mu", "sigma")
OUTPUT_NAMES = ("probs", "recon_err")
#: Class 0 is always "normal"; "sensor_fault" is a class so faults never look clinical.
NORMAL = "normal"
FAULT = "sensor_fault"


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of the detector; together with the layout they fix the parameter vector."""

    n_features: int
    classes: tuple[str, ...]
    hidden: int = 32
    latent: int = 12

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.hidden < 1 or self.latent < 1:
            raise ModelError(f"model shapes must be positive, got {self}")
        if len(self.classes) < 2 or self.classes[0] != NORMAL:
            raise ModelError(f"classes must start with {NORMAL!r}, got {self.classes}")
        if len(set(self.classes)) != len(self.classes):
            raise ModelError(f"duplicate class names in {self.classes}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def param_layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the parameters, in the order of the flat vector."""
    f, h, c, lat = spec.n_features, spec.hidden, spec.n_classes, spec.latent
    return [
        ("W1", (3 * f, h)),
        ("b1", (h,)),
        ("W2", (h, c)),
        ("b2", (c,)),
        ("We", (f, lat)),
        ("be", (lat,)),
        ("Wd", (lat, f)),
        ("bd", (f,)),
    ]


#: Named parameter groups a federated round trains and sends: the autoencoder (the
#: "normal model" every box learns from its own windows) and the classifier head
#: (learned from clinician feedback). Together they partition the flat vector, so
#: a round announces a mask as group names and every box derives the same indices.
PARAM_GROUPS: dict[str, tuple[str, ...]] = {
    "ae": ("We", "be", "Wd", "bd"),
    "head": ("W1", "b1", "W2", "b2"),
}


def group_indices(spec: ModelSpec, groups: tuple[str, ...] | list[str]) -> np.ndarray:
    """Indices into the flat vector of the named groups' parameters, in layout order.

    Layout order (not the order of ``groups``) so that every box and the
    aggregator agree on the coordinates whatever order the names came in.
    """
    unknown = sorted(set(groups) - PARAM_GROUPS.keys())
    if unknown or not groups:
        raise ModelError(f"unknown parameter groups {unknown}; known: {sorted(PARAM_GROUPS)}")
    names = {n for g in groups for n in PARAM_GROUPS[g]}
    out: list[np.ndarray] = []
    i = 0
    for name, shape in param_layout(spec):
        k = int(np.prod(shape))
        if name in names:
            out.append(np.arange(i, i + k, dtype=np.int64))
        i += k
    return np.concatenate(out)


def n_params(spec: ModelSpec) -> int:
    """Length of the flat parameter vector."""
    return int(sum(int(np.prod(s)) for _, s in param_layout(spec)))


def unflatten(spec: ModelSpec, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Split the flat vector into named arrays (views; copy before mutating in place)."""
    flat = np.asarray(flat, dtype=np.float32)
    if flat.ndim != 1 or flat.shape[0] != n_params(spec):
        raise ModelError(f"parameter vector must have shape ({n_params(spec)},), got {flat.shape}")
    if not np.all(np.isfinite(flat)):
        raise ModelError("parameter vector contains NaN or infinity")
    out: dict[str, np.ndarray] = {}
    i = 0
    for name, shape in param_layout(spec):
        n = int(np.prod(shape))
        out[name] = flat[i : i + n].reshape(shape)
        i += n
    return out


def flatten(spec: ModelSpec, params: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate named arrays into the flat vector (the inverse of ``unflatten``)."""
    parts = []
    for name, shape in param_layout(spec):
        a = np.asarray(params[name], dtype=np.float32)
        if a.shape != shape:
            raise ModelError(f"parameter {name} must have shape {shape}, got {a.shape}")
        parts.append(a.ravel())
    return np.concatenate(parts).astype(np.float32)


def init_params(spec: ModelSpec, seed: int = 0) -> np.ndarray:
    """He/Glorot-style random start, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    p: dict[str, np.ndarray] = {}
    for name, shape in param_layout(spec):
        if len(shape) == 2:
            p[name] = rng.normal(0.0, np.sqrt(2.0 / (shape[0] + shape[1])), shape)
        else:
            p[name] = np.zeros(shape)
    return flatten(spec, p)


@dataclass
class ModelMeta:
    """What a box needs besides weights: feature order, classes, population calibration.

    ``pop_mu``/``pop_sigma`` are the starting calibration for a new patient;
    ``thresholds`` hold the global decision thresholds; ``info`` is free-form
    provenance (training data, metrics) shown by ``edgeagent model show``.
    """

    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    pop_mu: list[float]
    pop_sigma: list[float]
    hidden: int = 32
    latent: int = 12
    thresholds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(len(self.feature_names), tuple(self.classes), self.hidden, self.latent)

    def to_json(self) -> str:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        d["classes"] = list(self.classes)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        try:
            d = json.loads(text)
            meta = cls(
                feature_names=tuple(d["feature_names"]),
                classes=tuple(d["classes"]),
                pop_mu=[float(v) for v in d["pop_mu"]],
                pop_sigma=[float(v) for v in d["pop_sigma"]],
                hidden=int(d.get("hidden", 32)),
                latent=int(d.get("latent", 12)),
                thresholds={k: float(v) for k, v in d.get("thresholds", {}).items()},
                info=dict(d.get("info", {})),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"model metadata {META_KEY!r} is malformed: {e}") from e
        f = len(meta.feature_names)
        if len(meta.pop_mu) != f or len(meta.pop_sigma) != f:
            raise ModelError("model metadata: pop_mu/pop_sigma length differs from feature count")
        if not all(s > 0 and np.isfinite(s) for s in meta.pop_sigma):
            raise ModelError("model metadata: pop_sigma must be positive and finite")
        return meta


def sha256_hex(data: bytes) -> str:
    """Content hash that names a model everywhere (registry, MQTT, signatures)."""
    return hashlib.sha256(data).hexdigest()


def session_meta(session: Any, feature_names: tuple[str, ...] | None = None) -> ModelMeta:
    """Validate an onnxruntime session against our contract and return its ``ModelMeta``.

    Checks what ``graph.parse_model`` checks that matters at run time (metadata,
    input/output names, feature count and order) using only onnxruntime.
    """
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise ModelError(f"not an edgeagent model: metadata {META_KEY!r} missing")
    meta = ModelMeta.from_json(props[META_KEY])
    ins = tuple(i.name for i in session.get_inputs())
    outs = tuple(o.name for o in session.get_outputs())
    if ins != INPUT_NAMES or outs != OUTPUT_NAMES:
        raise ModelError(
            f"model inputs/outputs are {list(ins)}/{list(outs)}, "
            f"expected {INPUT_NAMES}/{OUTPUT_NAMES}"
        )
    shape = session.get_inputs()[0].shape
    if len(shape) != 2 or shape[1] != meta.spec.n_features:
        raise ModelError(f"model input 'x' has shape {shape}, expected [N, {meta.spec.n_features}]")
    check_features(meta, feature_names)
    return meta


def check_features(meta: ModelMeta, feature_names: tuple[str, ...] | None) -> None:
    """Refuse a model whose feature order differs from the running pipeline's."""
    if feature_names is not None and tuple(meta.feature_names) != tuple(feature_names):
        raise ModelError(
            f"model expects {len(meta.feature_names)} features "
            f"({', '.join(meta.feature_names[:3])}...), the pipeline produces "
            f"{len(feature_names)} ({', '.join(feature_names[:3])}...)"
        )
