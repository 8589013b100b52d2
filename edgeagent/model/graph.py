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

from typing import TYPE_CHECKING

import numpy as np

from edgeagent.errors import ModelError
from edgeagent.model.meta import (
    CLIP,
    FAULT,
    INPUT_NAMES,
    IR_VERSION,
    META_KEY,
    NORMAL,
    OPSET,
    OUTPUT_NAMES,
    ModelMeta,
    ModelSpec,
    check_features,
    flatten,
    init_params,
    n_params,
    param_layout,
    sha256_hex,
    unflatten,
)

if TYPE_CHECKING:
    import onnx

# ``onnx`` (with protobuf and ml_dtypes, ~27 MB resident) is imported by the functions that
# need it, not here: a running box scores with onnxruntime and trains on the stored flat
# vector, and imports this module through the federated client, so it loads onnx only when a
# model is added or a global model arrives (docs/operations.md, "Memory").

__all__ = [
    "CLIP",
    "FAULT",
    "INPUT_NAMES",
    "META_KEY",
    "NORMAL",
    "OUTPUT_NAMES",
    "ModelMeta",
    "ModelSpec",
    "build_model",
    "flatten",
    "frame_sha256",
    "get_params",
    "init_params",
    "n_params",
    "param_layout",
    "parse_model",
    "read_meta",
    "rebuild",
    "set_meta",
    "set_params",
    "sha256_hex",
    "to_bytes",
    "unflatten",
]


def build_model(meta: ModelMeta, flat: np.ndarray) -> onnx.ModelProto:
    """Build the graph from shapes once and load ``flat`` into its initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

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
    from onnx import numpy_helper

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
    import onnx
    from onnx import numpy_helper

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
    import onnx
    from onnx import helper, numpy_helper

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


def frame_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the model with every learned parameter zero: what stays across rounds.

    Two models with the same frame differ only in their parameter vectors, so
    ``rebuild`` on either gives the same bytes for the same vector: this is what
    a box compares before it rebuilds a global model from a parameter vector
    (``fl.wire.ParamsPublication``) instead of downloading the file.
    """
    n = n_params(read_meta(model).spec)
    return sha256_hex(to_bytes(set_params(model, np.zeros(n, np.float32))))


def rebuild(base: onnx.ModelProto, flat: np.ndarray) -> bytes:
    """The serialised model ``base`` would be with parameters ``flat`` (deterministic bytes).

    The aggregator builds each new global model exactly this way
    (``set_params`` then ``to_bytes``), so a box holding a model of the same
    frame gets the signed file's bytes, and its hash, back from the vector alone.
    """
    return to_bytes(set_params(base, np.asarray(flat, np.float32)))


def parse_model(data: bytes, feature_names: tuple[str, ...] | None = None) -> onnx.ModelProto:
    """Parse and validate model bytes; raise ``ModelError`` saying exactly what is wrong.

    Checks: protobuf parses, ONNX checker passes, our metadata is present and
    consistent, the inputs/outputs and parameter shapes match the layout, and
    (when given) the feature order matches the running pipeline's.
    """
    import onnx

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
    check_features(meta, feature_names)
    return model
