"""Registry: content-addressed atomic storage, activation log, rollback, tampering, signatures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.errors import ModelError
from edgeagent.model.graph import sha256_hex
from edgeagent.model.registry import ModelRegistry
from edgeagent.model.signing import public_key_raw, sign_hash, verify_hash


def test_add_is_idempotent_and_content_addressed(tmp_state: Path, syn_model: bytes) -> None:
    reg = ModelRegistry(tmp_state)
    a = reg.add(syn_model, "test")
    b = reg.add(syn_model, "again")
    assert a.version == b.version == 1
    assert a.file.name == f"{sha256_hex(syn_model)}.onnx"
    assert a.file.read_bytes() == syn_model
    assert a.label.startswith("v1-") and reg.get(a.label).version == 1
    assert reg.get(a.sha256[:10]).version == 1


def test_activate_rollback_and_event_log(
    tmp_state: Path, syn_model: bytes, syn_model_other: bytes
) -> None:
    reg = ModelRegistry(tmp_state)
    with pytest.raises(ModelError, match="no model is active"):
        reg.get("active")
    v1 = reg.add(syn_model, "a")
    v2 = reg.add(syn_model_other, "b")
    with pytest.raises(ModelError, match="nothing to roll back"):
        reg.rollback()
    reg.activate(v1.version)
    reg.activate(v2.version)
    assert reg.active().version == v2.version  # type: ignore[union-attr]
    back = reg.rollback("worse on the ward")
    assert back.version == v1.version
    assert reg.get(v2.version).rejected
    kinds = [e["kind"] for e in reg.events()]
    assert kinds[0] == "rolled_back" and "activated" in kinds
    assert "worse on the ward" in reg.events()[0]["detail"]
    with pytest.raises(ModelError, match="no earlier model"):
        reg.rollback()
    # a fresh registry object sees the same state (it is on disk)
    assert ModelRegistry(tmp_state).active().version == v1.version  # type: ignore[union-attr]


def test_tampered_file_is_refused_and_recorded(tmp_state: Path, syn_model: bytes) -> None:
    reg = ModelRegistry(tmp_state)
    rec = reg.add(syn_model, "a")
    data = bytearray(rec.file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rec.file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its hash"):
        reg.load_bytes(rec)
    with pytest.raises(ModelError, match="does not match"):
        reg.activate(rec.version)
    v = reg.verify(rec.version)
    assert v["ok"] is False and v["hash_ok"] is False
    assert reg.events()[0]["kind"] == "tampered"


def test_corrupt_model_is_not_stored(tmp_state: Path, syn_model: bytes) -> None:
    reg = ModelRegistry(tmp_state)
    with pytest.raises(ModelError):
        reg.add(syn_model[:100], "broken")
    assert reg.list() == []
    assert list((tmp_state / "models").iterdir()) == []


def test_signatures(tmp_state: Path, syn_model: bytes, signing_key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    digest = sha256_hex(syn_model)
    sig = sign_hash(signing_key, digest)
    assert verify_hash([other.public_key(), signing_key.public_key()], digest, sig) == 1
    with pytest.raises(ModelError, match="does not verify"):
        verify_hash([other.public_key()], digest, sig)
    with pytest.raises(ModelError, match="does not verify"):
        verify_hash([signing_key.public_key()], sha256_hex(b"other"), sig)

    strict = ModelRegistry(tmp_state, [signing_key.public_key()], require_signature=True)
    with pytest.raises(ModelError, match="unsigned"):
        strict.add(syn_model, "unsigned")
    with pytest.raises(ModelError, match="does not verify"):
        strict.add(syn_model, "forged", sign_hash(other, digest))
    rec = strict.add(syn_model, "signed", sig)
    assert rec.signer == public_key_raw(signing_key.public_key())
    assert strict.verify(rec.version) == {
        "label": rec.label,
        "sha256": digest,
        "hash_ok": True,
        "parse_ok": True,
        "signature": "valid",
        "ok": True,
    }
    # the same registry opened without the key cannot vouch for the signature
    assert ModelRegistry(tmp_state).verify(rec.version)["ok"] is False


def test_cli_model_verbs(
    tmp_state: Path, tmp_path: Path, syn_model: bytes, syn_model_other: bytes
) -> None:
    _register()
    r = CliRunner()
    f1, f2 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    f1.write_bytes(syn_model)
    f2.write_bytes(syn_model_other)
    sd = ["--state-dir", str(tmp_state)]
    res = r.invoke(app, ["model", "add", str(f1), "--activate", *sd])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["model", "add", str(f2), "--json", *sd])
    v2 = json.loads(res.output)["label"]
    assert r.invoke(app, ["model", "activate", v2, *sd]).exit_code == 0
    rows = json.loads(r.invoke(app, ["model", "list", "--json", *sd]).output)
    assert [x["active"] for x in rows] == [False, True]
    show = json.loads(r.invoke(app, ["model", "show", "active", "--json", *sd]).output)
    assert show["label"] == v2 and show["features"] == 8
    res = r.invoke(app, ["model", "rollback", "--reason", "test", *sd])
    assert res.exit_code == 0 and "v1-" in res.output
    assert r.invoke(app, ["model", "verify", "all", *sd]).exit_code == 0
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    res = r.invoke(app, ["model", "add", str(bad), *sd])
    assert res.exit_code == 2 and "error:" in res.output
    # tamper with the active file: verify fails with exit 1
    active = json.loads(r.invoke(app, ["model", "show", "--json", *sd]).output)
    Path(active["file"]).write_bytes(syn_model_other)
    assert r.invoke(app, ["model", "verify", *sd]).exit_code == 1


def test_param_vector_stored_beside_model_and_checked(tmp_state: Path, syn_model: bytes) -> None:
    import numpy as np

    from edgeagent.model.graph import get_params, parse_model

    reg = ModelRegistry(tmp_state)
    rec = reg.add(syn_model, "a")
    want = get_params(parse_model(syn_model))
    np.testing.assert_array_equal(reg.load_params(rec), want)
    # a tampered vector file is ignored: the vector is re-read from the (hash-checked) model
    npy = rec.file.with_suffix(".params.npy")
    buf = bytearray(npy.read_bytes())
    buf[-1] ^= 0x7F
    npy.write_bytes(bytes(buf))
    np.testing.assert_array_equal(reg.load_params(rec), want)
