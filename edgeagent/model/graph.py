"""The detector as one ONNX graph whose weights are one flat float32 vector.

Why this shape: the federated layer averages models across boxes, so every
learnable number must live in a single smooth parameter vector with a fixed,
documented order (``param_layout``). The graph is built once from shapes;
``set_params`` only rewrites initializers, so nobody rebuilds graphs by hand.

Graph (inputs ``x`` (N,F) raw features, ``mu``/``sigma`` (1|N, F) the
patient's personal calibration, which is *not* part of the averaged vector)::

    z    = clip((x - mu) / sigma, -CLIP, CLIP), NaN -> 0      personal scale
    zp   = clip((x - pop_mu) / pop_sigma, -CLIP, CLIP), NaN -> 0  population scale
    m    = 1 where x was a number else 0          (modality mask)
    h    = relu([z, zp, m] @ W1 + b1)
    probs      = softmax(h @ W2 + b2)              (N, C) classifier head
    recon      = tanh(z @ We + be) @ Wd + bd       autoencoder ("normal model")
    recon_err  = sum(m * (recon - z)^2) / max(sum(m), 1)   (N,)

The head sees both scales on purpose: many clinical definitions are absolute
(fever above 38.3 C, tachycardia above ~118 bpm) while "unusual for this
person" is relative; ``pop_mu``/``pop_sigma`` are constants of the model
(stored as initializers and in the metadata), not learned weights.

Parameter order (the federated vector): W1 (3F,H), b1 (H), W2 (H,C), b2 (C),
We (F,L), be (L), Wd (L,F), bd (F).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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


def build_model(meta: ModelMeta, flat: np.ndarray) -> onnx.ModelProto:
    """Build the graph from shapes once and load ``flat`` into its initializers."""
    spec = meta.spec
    f = spec.n_features
    params = unflatten(spec, flat)
    fl = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("x", fl, ["N", f]),
        helper.make_tensor_value_info("mu", fl, ["P", f]),
        helper.make_tensor_value_info("sigma", fl, ["P", f]),
    ]
    outputs = [
        helper.make_tensor_value_info("probs", fl, ["N", spec.n_classes]),
        helper.make_tensor_value_info("recon_err", fl, ["N"]),
    ]
    consts = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(-CLIP, np.float32), "clip_lo"),
        numpy_helper.from_array(np.array(CLIP, np.float32), "clip_hi"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.asarray(meta.pop_mu, np.float32)[None, :], "pop_mu"),
        numpy_helper.from_array(np.asarray(meta.pop_sigma, np.float32)[None, :], "pop_sigma"),
    ]
    weights = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    n = helper.make_node
    nodes = [
        n("Sub", ["x", "mu"], ["xc"]),
        n("Div", ["xc", "sigma"], ["zr"]),
        n("IsNaN", ["zr"], ["isnan"]),
        n("Where", ["isnan", "zero", "zr"], ["z0"]),
        n("Clip", ["z0", "clip_lo", "clip_hi"], ["z"]),
        n("Not", ["isnan"], ["valid"]),
        n("Cast", ["valid"], ["m"], to=fl),
        n("Sub", ["x", "pop_mu"], ["xp"]),
        n("Div", ["xp", "pop_sigma"], ["zpr"]),
        n("Where", ["isnan", "zero", "zpr"], ["zp0"]),
        n("Clip", ["zp0", "clip_lo", "clip_hi"], ["zp"]),
        n("Concat", ["z", "zp", "m"], ["zm"], axis=1),
        n("Gemm", ["zm", "W1", "b1"], ["a1"]),
        n("Relu", ["a1"], ["h1"]),
        n("Gemm", ["h1", "W2", "b2"], ["logits"]),
        n("Softmax", ["logits"], ["probs"], axis=1),
        n("Gemm", ["z", "We", "be"], ["ae"]),
        n("Tanh", ["ae"], ["enc"]),
        n("Gemm", ["enc", "Wd", "bd"], ["recon"]),
        n("Sub", ["recon", "z"], ["diff"]),
        n("Mul", ["diff", "diff"], ["sq"]),
        n("Mul", ["sq", "m"], ["msq"]),
        n("ReduceSum", ["msq", "axis1"], ["num"], keepdims=0),
        n("ReduceSum", ["m", "axis1"], ["cnt"], keepdims=0),
        n("Max", ["cnt", "one"], ["den"]),
        n("Div", ["num", "den"], ["recon_err"]),
    ]
    graph = helper.make_graph(nodes, "edgeagent_detector", inputs, outputs, consts + weights)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edgeagent",
        ir_version=IR_VERSION,
    )
    helper.set_model_props(model, {META_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    return model


def read_meta(model: onnx.ModelProto) -> ModelMeta:
    """The ``ModelMeta`` stored in the graph's metadata."""
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise ModelError(f"not an edgeagent model: metadata {META_KEY!r} missing")
    return ModelMeta.from_json(props[META_KEY])


def get_params(model: onnx.ModelProto) -> np.ndarray:
    """Read the flat parameter vector out of the graph's initializers."""
    meta = read_meta(model)
    inits = {t.name: t for t in model.graph.initializer}
    parts = {}
    for name, _shape in param_layout(meta.spec):
        if name not in inits:
            raise ModelError(f"model lacks initializer {name!r}")
        parts[name] = numpy_helper.to_array(inits[name])
    return flatten(meta.spec, parts)


def set_params(model: onnx.ModelProto, flat: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with its initializers rewritten from ``flat`` (graph untouched)."""
    meta = read_meta(model)
    params = unflatten(meta.spec, flat)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in params:
            t.CopyFrom(numpy_helper.from_array(params[t.name].astype(np.float32), t.name))
    return out


def set_meta(model: onnx.ModelProto, meta: ModelMeta) -> onnx.ModelProto:
    """A copy of ``model`` with new metadata (same shapes required)."""
    old = read_meta(model)
    if old.spec != meta.spec:
        raise ModelError("set_meta cannot change model shapes; build a new model instead")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pops = {"pop_mu": meta.pop_mu, "pop_sigma": meta.pop_sigma}
    for t in out.graph.initializer:
        if t.name in pops:
            arr = np.asarray(pops[t.name], np.float32)[None, :]
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    del out.metadata_props[:]
    helper.set_model_props(out, {META_KEY: meta.to_json()})
    return out


def to_bytes(model: onnx.ModelProto) -> bytes:
    """Deterministic serialisation (same weights and metadata -> same bytes, same hash)."""
    return model.SerializeToString(deterministic=True)


def sha256_hex(data: bytes) -> str:
    """Content hash that names a model everywhere (registry, MQTT, signatures)."""
    return hashlib.sha256(data).hexdigest()


def parse_model(data: bytes, feature_names: tuple[str, ...] | None = None) -> onnx.ModelProto:
    """Parse and validate model bytes; raise ``ModelError`` saying exactly what is wrong.

    Checks: protobuf parses, ONNX checker passes, our metadata is present and
    consistent, the inputs/outputs and parameter shapes match the layout, and
    (when given) the feature order matches the running pipeline's.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError, which is not exported stably
        raise ModelError(f"model file is not a valid ONNX protobuf: {e}") from e
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"model fails the ONNX checker: {str(e).splitlines()[0]}") from e
    meta = read_meta(model)
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    if tuple(ins) != INPUT_NAMES or tuple(outs) != OUTPUT_NAMES:
        raise ModelError(
            f"model inputs/outputs are {ins}/{outs}, expected {INPUT_NAMES}/{OUTPUT_NAMES}"
        )
    x_dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(x_dims) != 2 or x_dims[1].dim_value != meta.spec.n_features:
        raise ModelError(
            f"model input 'x' has shape {[d.dim_value or d.dim_param for d in x_dims]}, "
            f"expected [N, {meta.spec.n_features}]"
        )
    get_params(model)  # shape and finiteness check of every parameter
    if feature_names is not None and tuple(meta.feature_names) != tuple(feature_names):
        raise ModelError(
            f"model expects {len(meta.feature_names)} features "
            f"({', '.join(meta.feature_names[:3])}...), the pipeline produces "
            f"{len(feature_names)} ({', '.join(feature_names[:3])}...)"
        )
    return model
