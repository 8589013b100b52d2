"""Read what the box needs from an ONNX file without the ``onnx`` package.

Why: ``onnx`` (with protobuf and ml_dtypes) adds about 14 MB to a process that
only scores with onnxruntime and trains on the flat parameter vector. The
registry checks every model it stores or starts from (``ModelRegistry.add``,
``verify``), so with ``onnx`` a daemon pays that on every start. An ONNX file is
a protocol buffer, and the registry needs four things from it: the metadata
(our ``ModelMeta``), the graph's input and output names, the shape of input
``x``, and the float initializers. This module decodes exactly those fields from
the protobuf wire format (https://protobuf.dev/programming-guides/encoding/)
and skips every other field by its wire type, so a file the ``onnx`` package
writes (any field order, packed or unpacked repeated scalars, ``raw_data`` or
``float_data``) reads the same. Whether the graph itself is valid is left to
onnxruntime, the runtime that will run it (``ModelRegistry``).

Field numbers are onnx.proto3's (ModelProto, GraphProto, ValueInfoProto,
TypeProto, TensorShapeProto, TensorProto, StringStringEntryProto).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from edgeagent.errors import ModelError
from edgeagent.model.meta import (
    INPUT_NAMES,
    META_KEY,
    OUTPUT_NAMES,
    ModelMeta,
    check_features,
    flatten,
    param_layout,
)

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# ModelProto
_MODEL_GRAPH, _MODEL_META = 7, 14
# GraphProto
_GRAPH_INIT, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
# ValueInfoProto / TypeProto / TypeProto.Tensor / TensorShapeProto / Dimension
_VI_NAME, _VI_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
# TensorProto
_T_DIMS, _T_TYPE, _T_FLOATS, _T_NAME, _T_RAW, _T_LOCATION = 1, 2, 4, 8, 9, 14
_FLOAT = 1  # TensorProto.DataType.FLOAT


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ModelError("model file is not a valid ONNX protobuf: truncated varint")
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ModelError("model file is not a valid ONNX protobuf: varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of every field: an int, or the bytes of a LEN field."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ModelError("model file is not a valid ONNX protobuf: field number 0")
        if wt == _VARINT:
            v, i = _varint(buf, i)
            yield num, wt, v
        elif wt == _LEN:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ModelError("model file is not a valid ONNX protobuf: truncated field")
            yield num, wt, buf[i : i + n]
            i += n
        elif wt in (_I64, _I32):
            n = 8 if wt == _I64 else 4
            if i + n > len(buf):
                raise ModelError("model file is not a valid ONNX protobuf: truncated field")
            yield num, wt, int.from_bytes(buf[i : i + n], "little")
            i += n
        else:  # 3/4: groups, which onnx.proto does not use
            raise ModelError(f"model file is not a valid ONNX protobuf: wire type {wt}")


def _text(v: int | memoryview) -> str:
    if not isinstance(v, memoryview):
        raise ModelError("model file is not a valid ONNX protobuf: a string field is a number")
    try:
        return bytes(v).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(f"model file is not a valid ONNX protobuf: {e}") from e


def _sub(v: int | memoryview) -> memoryview:
    if not isinstance(v, memoryview):
        raise ModelError("model file is not a valid ONNX protobuf: a message field is a number")
    return v


@dataclass
class Tensor:
    """One initializer as stored: name, shape, element type and its data."""

    name: str = ""
    dims: list[int] = field(default_factory=list)
    data_type: int = 0
    raw: bytes | None = None
    floats: list[float] = field(default_factory=list)
    external: bool = False

    def array(self) -> np.ndarray:
        if self.data_type != _FLOAT:
            raise ModelError(f"initializer {self.name!r} is not float32 (type {self.data_type})")
        if self.external:
            raise ModelError(f"initializer {self.name!r} keeps its data in an external file")
        if self.raw is not None:
            if len(self.raw) % 4:
                raise ModelError(f"initializer {self.name!r}: raw data is not float32")
            a = np.frombuffer(self.raw, "<f4").astype(np.float32)
        else:
            a = np.asarray(self.floats, np.float32)
        if a.size != int(np.prod(self.dims, dtype=np.int64)):
            raise ModelError(f"initializer {self.name!r}: {a.size} values for shape {self.dims}")
        return a.reshape(self.dims)


def _tensor(buf: memoryview) -> Tensor:
    t = Tensor()
    for num, wt, v in _fields(buf):
        if num == _T_NAME:
            t.name = _text(v)
        elif num == _T_TYPE and wt == _VARINT:
            t.data_type = int(v)  # type: ignore[arg-type]
        elif num == _T_DIMS:
            if wt == _LEN:  # packed
                sub, j = _sub(v), 0
                while j < len(sub):
                    d, j = _varint(sub, j)
                    t.dims.append(d)
            else:
                t.dims.append(int(v))  # type: ignore[arg-type]
        elif num == _T_RAW:
            t.raw = bytes(_sub(v))
        elif num == _T_FLOATS:
            if wt == _LEN:  # packed
                t.floats.extend(struct.unpack(f"<{len(_sub(v)) // 4}f", _sub(v)))
            elif wt == _I32:
                t.floats.append(struct.unpack("<f", int(v).to_bytes(4, "little"))[0])
        elif num == _T_LOCATION and wt == _VARINT and v == 1:  # DataLocation.EXTERNAL
            t.external = True
    return t


def _value_info(buf: memoryview) -> tuple[str, list[int | str]]:
    """(name, dims) of a graph input or output; a dim is its value or its symbolic name."""
    name, dims = "", []
    for num, _wt, v in _fields(buf):
        if num == _VI_NAME:
            name = _text(v)
        elif num == _VI_TYPE:
            for tn, _w, tv in _fields(_sub(v)):
                if tn != _TYPE_TENSOR:
                    continue
                for sn, _w2, sv in _fields(_sub(tv)):
                    if sn != _TENSOR_TYPE_SHAPE:
                        continue
                    for dn, _w3, dv in _fields(_sub(sv)):
                        if dn != _SHAPE_DIM:
                            continue
                        dim: int | str = ""
                        for kn, _w4, kv in _fields(_sub(dv)):
                            if kn == _DIM_VALUE:
                                dim = int(kv)  # type: ignore[arg-type]
                            elif kn == _DIM_PARAM:
                                dim = _text(kv)
                        dims.append(dim)
    return name, dims


@dataclass(frozen=True)
class ModelView:
    """What the registry reads from an ONNX file: metadata, I/O, ``x``'s shape, weights."""

    metadata: dict[str, str]
    inputs: tuple[tuple[str, tuple[int | str, ...]], ...]
    outputs: tuple[str, ...]
    initializers: dict[str, Tensor]


def read_view(data: bytes) -> ModelView:
    """Decode the fields the registry needs; raise ``ModelError`` on malformed bytes."""
    buf = memoryview(data)
    metadata: dict[str, str] = {}
    inputs: list[tuple[str, tuple[int | str, ...]]] = []
    outputs: list[str] = []
    tensors: dict[str, Tensor] = {}
    graphs = 0
    for num, _wt, v in _fields(buf):
        if num == _MODEL_META:
            key = value = ""
            for kn, _w, kv in _fields(_sub(v)):
                if kn == 1:
                    key = _text(kv)
                elif kn == 2:
                    value = _text(kv)
            metadata[key] = value
        elif num == _MODEL_GRAPH:
            graphs += 1
            for gn, _w, gv in _fields(_sub(v)):
                if gn == _GRAPH_INIT:
                    t = _tensor(_sub(gv))
                    tensors[t.name] = t
                elif gn == _GRAPH_INPUT:
                    n, dims = _value_info(_sub(gv))
                    inputs.append((n, tuple(dims)))
                elif gn == _GRAPH_OUTPUT:
                    outputs.append(_value_info(_sub(gv))[0])
    if graphs != 1:
        raise ModelError("model file is not a valid ONNX protobuf: no graph")
    return ModelView(metadata, tuple(inputs), tuple(outputs), tensors)


def inspect_model(
    data: bytes, feature_names: tuple[str, ...] | None = None
) -> tuple[ModelMeta, np.ndarray]:
    """``(meta, flat parameters)`` of model bytes, with ``graph.parse_model``'s checks
    except the ONNX checker (onnxruntime judges the graph: ``ModelRegistry``)."""
    view = read_view(data)
    if META_KEY not in view.metadata:
        raise ModelError(f"not an edgeagent model: metadata {META_KEY!r} missing")
    meta = ModelMeta.from_json(view.metadata[META_KEY])
    ins = [n for n, _ in view.inputs]
    if tuple(ins) != INPUT_NAMES or view.outputs != OUTPUT_NAMES:
        raise ModelError(
            f"model inputs/outputs are {ins}/{list(view.outputs)}, "
            f"expected {INPUT_NAMES}/{OUTPUT_NAMES}"
        )
    x_dims = view.inputs[0][1]
    if len(x_dims) != 2 or x_dims[1] != meta.spec.n_features:
        raise ModelError(
            f"model input 'x' has shape {list(x_dims)}, expected [N, {meta.spec.n_features}]"
        )
    parts = {}
    for name, _shape in param_layout(meta.spec):
        if name not in view.initializers:
            raise ModelError(f"model lacks initializer {name!r}")
        parts[name] = view.initializers[name].array()
    flat = flatten(meta.spec, parts)
    if not np.all(np.isfinite(flat)):
        raise ModelError("model parameters contain NaN or infinity")
    check_features(meta, feature_names)
    return meta, flat
