"""Graph <-> flat vector mapping, numpy twin vs onnxruntime, gradients, bad model bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.errors import ModelError
from edgeagent.model.graph import (
    ModelMeta,
    ModelSpec,
    build_model,
    frame_sha256,
    get_params,
    init_params,
    n_params,
    param_layout,
    parse_model,
    read_meta,
    rebuild,
    set_meta,
    set_params,
    sha256_hex,
    to_bytes,
    unflatten,
)
from edgeagent.model.nn import ae_loss_grad, forward, head_loss_grad, standardise

F = 7
CLASSES = ("normal", "tachycardia", "fall", "sensor_fault")


def _meta(f: int = F) -> ModelMeta:
    return ModelMeta(
        tuple(f"f{i}" for i in range(f)),
        CLASSES,
        [float(i) for i in range(f)],
        [1.0 + 0.1 * i for i in range(f)],
        hidden=9,
        latent=3,
    )


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(to_bytes(model), providers=["CPUExecutionProvider"])


def test_layout_order_and_size_are_documented_shapes() -> None:
    spec = _meta().spec
    names = [n for n, _ in param_layout(spec)]
    assert names == ["W1", "b1", "W2", "b2", "We", "be", "Wd", "bd"]
    assert dict(param_layout(spec))["W1"] == (3 * F, 9)
    assert n_params(spec) == 3 * F * 9 + 9 + 9 * 4 + 4 + F * 3 + 3 + 3 * F + F


def test_set_get_params_roundtrip_without_rebuilding_graph() -> None:
    meta = _meta()
    model = build_model(meta, init_params(meta.spec, 0))
    w = np.random.default_rng(1).normal(size=n_params(meta.spec)).astype(np.float32)
    m2 = set_params(model, w)
    np.testing.assert_array_equal(get_params(m2), w)
    # graph structure untouched, only initializers changed
    assert [n.op_type for n in m2.graph.node] == [n.op_type for n in model.graph.node]
    assert not np.array_equal(get_params(model), w)


def test_numpy_twin_matches_onnxruntime_with_nan_inf_and_personal_calibration() -> None:
    meta = _meta()
    w = init_params(meta.spec, 3) * 3
    sess = _session(build_model(meta, w))
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(6, F)).astype(np.float32)
    x[0, 2] = np.nan
    x[1, :] = np.nan
    x[2, 1] = np.inf
    x[3, 4] = 1e9
    mu = rng.normal(size=(1, F)).astype(np.float32)
    sigma = rng.uniform(0.5, 2, size=(1, F)).astype(np.float32)
    probs, recon = sess.run(None, {"x": x, "mu": mu, "sigma": sigma})
    z, m = standardise(x, mu, sigma)
    zp, _ = standardise(x, np.asarray(meta.pop_mu)[None], np.asarray(meta.pop_sigma)[None])
    p2, r2 = forward(meta.spec, w, z, m, zp)
    np.testing.assert_allclose(probs, p2, atol=1e-5)
    np.testing.assert_allclose(recon, r2, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(probs)) and np.all(np.isfinite(recon))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert recon[1] == 0.0  # nothing present: nothing to reconstruct


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_gradients_match_finite_differences(seed: int) -> None:
    spec = ModelSpec(4, ("normal", "a", "b"), hidden=5, latent=2)
    rng = np.random.default_rng(seed)
    w = init_params(spec, seed).astype(np.float64)
    z = rng.normal(size=(5, 4))
    m = (rng.random((5, 4)) > 0.2).astype(np.float64)
    z = z * m
    y = rng.integers(0, 3, 5)
    h = 1e-3
    for fn in (
        lambda w_: head_loss_grad(spec, w_, z, m, y),
        lambda w_: ae_loss_grad(spec, w_, z, m),
    ):
        f0, g = fn(w.astype(np.float32))
        for i in rng.choice(len(w), 6, replace=False):
            e = np.zeros_like(w)
            e[i] = h
            fp = fn((w + e).astype(np.float32))[0]
            fm = fn((w - e).astype(np.float32))[0]
            num = (fp - fm) / (2 * h)
            tol = 2e-2 * max(1.0, abs(num))
            if abs(num - g[i]) < tol:
                continue
            # A ReLU kink within +-h (about 1 coordinate in 3,000 here): the one-sided slopes
            # then differ, and the analytic gradient must be one of them (a subgradient).
            left, right = (f0 - fm) / h, (fp - f0) / h
            assert abs(right - left) > tol, (i, num, g[i])
            assert min(left, right) - tol <= g[i] <= max(left, right) + tol, (i, left, right, g[i])


def test_serialisation_is_deterministic_and_hash_names_content() -> None:
    meta = _meta()
    w = init_params(meta.spec, 5)
    a, b = to_bytes(build_model(meta, w)), to_bytes(build_model(meta, w))
    assert a == b and sha256_hex(a) == sha256_hex(b)
    c = to_bytes(build_model(meta, w + 1e-3))
    assert sha256_hex(c) != sha256_hex(a)


def test_rebuild_from_a_vector_is_byte_identical_in_another_process(tmp_path: Path) -> None:
    """What the aggregator signs and what a box rebuilds from the vector must be the same bytes.

    The rebuild runs in a fresh interpreter (another process, as on a box), on an
    older model of the same frame; its file must hash to the aggregator's.
    """
    meta = _meta()
    old = build_model(meta, init_params(meta.spec, 1))
    w_new = (init_params(meta.spec, 2) * 1.5).astype(np.float32)
    signed = to_bytes(set_params(old, w_new))  # the aggregator's next global model
    assert frame_sha256(old) == frame_sha256(parse_model(signed))
    (tmp_path / "base.onnx").write_bytes(to_bytes(old))
    (tmp_path / "w.f32").write_bytes(w_new.astype("<f4").tobytes())
    code = (
        "import sys, numpy as np; from pathlib import Path; "
        "from edgeagent.model.graph import parse_model, rebuild; d = Path(sys.argv[1]); "
        "w = np.frombuffer((d / 'w.f32').read_bytes(), '<f4'); "
        "(d / 'out.onnx').write_bytes(rebuild(parse_model((d / 'base.onnx').read_bytes()), w))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "out.onnx").read_bytes() == signed
    assert rebuild(parse_model(signed), w_new) == signed
    # another shape is another frame: a box of that shape must not rebuild on it
    other = build_model(_meta(F + 1), init_params(_meta(F + 1).spec, 1))
    assert frame_sha256(other) != frame_sha256(old)


def test_set_meta_rewrites_population_constants() -> None:
    meta = _meta()
    model = build_model(meta, init_params(meta.spec, 0))
    meta2 = _meta()
    meta2.pop_mu = [10.0] * F
    m2 = set_meta(model, meta2)
    x = np.full((1, F), 10.0, np.float32)
    one = np.ones((1, F), np.float32)
    p1 = _session(model).run(None, {"x": x, "mu": x, "sigma": one})[0]
    p2 = _session(m2).run(None, {"x": x, "mu": x, "sigma": one})[0]
    assert not np.allclose(p1, p2)  # population-scale input moved with the metadata
    assert read_meta(m2).pop_mu == [10.0] * F


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[: len(b) // 2], "not a valid ONNX|checker|metadata|lacks"),
        (lambda b: b"\x00garbage" * 10, "not a valid ONNX|checker|metadata"),
        (lambda b: b"", "metadata|checker"),
    ],
)
def test_corrupt_bytes_raise_model_error(mutate, match) -> None:  # type: ignore[no-untyped-def]
    meta = _meta()
    data = to_bytes(build_model(meta, init_params(meta.spec, 0)))
    with pytest.raises(ModelError, match=match):
        parse_model(mutate(data))


def test_wrong_feature_count_and_order_are_refused() -> None:
    meta = _meta()
    data = to_bytes(build_model(meta, init_params(meta.spec, 0)))
    with pytest.raises(ModelError, match="expects 7 features"):
        parse_model(data, tuple(f"f{i}" for i in range(8)))
    with pytest.raises(ModelError, match="expects"):
        parse_model(data, tuple(reversed(meta.feature_names)))
    assert read_meta(parse_model(data, meta.feature_names)).classes == CLASSES


def test_foreign_onnx_model_is_refused() -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(ModelError, match="not an edgeagent model"):
        parse_model(data)


def test_nan_parameters_are_refused() -> None:
    spec = _meta().spec
    w = init_params(spec, 0)
    w[3] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        unflatten(spec, w)
    with pytest.raises(ModelError, match="shape"):
        unflatten(spec, w[:-1])


def test_spec_validation() -> None:
    with pytest.raises(ModelError, match="start with"):
        ModelSpec(3, ("a", "normal"))
    with pytest.raises(ModelError, match="positive"):
        ModelSpec(0, ("normal", "a"))
