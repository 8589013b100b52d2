"""The registry's own ONNX reader against the ``onnx`` package, on real and damaged files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeagent.errors import ModelError
from edgeagent.model.graph import build_model, get_params, parse_model, read_meta, to_bytes
from edgeagent.model.meta import ModelMeta, init_params
from edgeagent.model.registry import ModelRegistry, check_model
from edgeagent.model.wire import inspect_model, read_view

REPO = Path(__file__).resolve().parents[1]


def _meta() -> ModelMeta:
    return ModelMeta(tuple(f"f{i}" for i in range(5)), ("normal", "fall"),
                     [0.0] * 5, [1.0] * 5, hidden=4, latent=2)  # fmt: skip


@pytest.mark.parametrize("path", ["models/baseline.onnx", "edgeagent/data/baseline.onnx"])
def test_reads_the_shipped_models_as_the_onnx_package_does(path: str) -> None:
    data = (REPO / path).read_bytes()
    meta, flat = inspect_model(data)
    proto = parse_model(data)
    assert meta == read_meta(proto)
    np.testing.assert_array_equal(flat, get_params(proto))


def test_float_data_instead_of_raw_data_reads_the_same() -> None:
    """``onnx`` may store a tensor as packed float_data (another writer, or raw=False)."""
    meta = _meta()
    w = init_params(meta.spec, 3)
    model = build_model(meta, w)
    for t in model.graph.initializer:
        arr = numpy_helper.to_array(t)
        t.ClearField("raw_data")
        t.float_data.extend(arr.ravel().tolist())
    data = model.SerializeToString()
    np.testing.assert_array_equal(inspect_model(data)[1], w)
    assert read_view(data).inputs[0] == ("x", ("N", 5))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[: len(b) // 2], "not a valid ONNX|metadata|lacks|initializer"),
        (lambda b: b"\x00garbage" * 10, "not a valid ONNX"),
        (lambda b: b"", "not a valid ONNX"),
        (lambda b: b"\x0f" + b, "not a valid ONNX"),  # wire type 7
    ],
)
def test_damaged_bytes_are_a_model_error(mutate, match) -> None:  # type: ignore[no-untyped-def]
    data = to_bytes(build_model(_meta(), init_params(_meta().spec, 0)))
    with pytest.raises(ModelError, match=match):
        inspect_model(mutate(data))


def test_wrong_shapes_nan_and_foreign_models_are_refused() -> None:
    meta = _meta()
    model = build_model(meta, init_params(meta.spec, 0))
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    w1 = next(t for t in bad.graph.initializer if t.name == "W1")
    arr = numpy_helper.to_array(w1).copy()
    arr[0, 0] = np.nan
    w1.CopyFrom(numpy_helper.from_array(arr, "W1"))
    with pytest.raises(ModelError, match="NaN"):
        inspect_model(bad.SerializeToString())
    with pytest.raises(ModelError, match="expects"):
        inspect_model(to_bytes(model), tuple(f"g{i}" for i in range(5)))
    del bad.metadata_props[:]
    with pytest.raises(ModelError, match="not an edgeagent model"):
        inspect_model(bad.SerializeToString())


def test_a_graph_onnxruntime_refuses_is_not_stored(tmp_path: Path) -> None:
    """Our fields intact, the graph broken (an unknown operator): the runtime's verdict."""
    meta = _meta()
    model = build_model(meta, init_params(meta.spec, 0))
    model.graph.node[0].op_type = "NoSuchOp"
    data = model.SerializeToString()
    inspect_model(data)  # the fields the registry reads are fine
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        check_model(data)
    reg = ModelRegistry(tmp_path)
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        reg.add(data, "test")
    assert reg.list() == []
