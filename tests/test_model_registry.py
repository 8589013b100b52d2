"""Registry: content-addressed atomic storage, activation log, rollback, tampering, signatures."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.dbschema import schema_version
from edgeagent.errors import ModelError
from edgeagent.model import registry as registry_mod
from edgeagent.model.graph import get_params, parse_model, set_params, sha256_hex, to_bytes
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


FIGURES = {
    "windows": 90,
    "active_alerts": 2,
    "shadow_alerts": 9,
    "active_flagged": 12,
    "shadow_flagged": 60,
    "labelled": 24,
    "active_agreement": 0.875,
    "shadow_agreement": float("nan"),  # not computable: stored as null, strict JSON
    "against": "v1-xxxxxxxx",
    "margins": {"alert_rel": 0.1, "alert_abs": 0, "flag_abs": 3, "agree_margin": 0.02,
                "min_labels": 20, "quiet_share": 0.5, "quiet_abs": 1},
}  # fmt: skip


def _decided(state: Path, a: bytes, b: bytes, c: bytes) -> ModelRegistry:
    """v1 runs; v2 was rejected in shadow; v3 was promoted, then rolled back by hand."""
    reg = ModelRegistry(state)
    v1 = reg.activate(reg.add(a, "baseline").version, "install")
    v2 = reg.add(b, "fl:round-1")
    reg.reject(v2.version, "alert rate worse: 9 would-be alerts vs 2", FIGURES)
    v3 = reg.add(c, "fl:round-2")
    reg.activate(v3.version, "promoted from shadow", FIGURES | {"shadow_alerts": 2},
                 event="promoted")  # fmt: skip
    assert reg.rollback("operator").version == v1.version
    return reg


def test_decisions_are_recorded_with_the_figures_that_decided_them(
    tmp_state: Path, syn_model: bytes, syn_model_other: bytes
) -> None:
    proto = parse_model(syn_model_other)
    third = to_bytes(set_params(proto, get_params(proto) * np.float32(0.5)))
    reg = _decided(tmp_state, syn_model, syn_model_other, third)
    d = reg.decisions()
    assert [e["kind"] for e in d[2]] == ["rejected"]
    assert [e["kind"] for e in d[3]] == ["promoted", "rolled_back"]
    assert d[2][0]["figures"]["shadow_alerts"] == 9
    assert d[2][0]["figures"]["shadow_agreement"] is None  # NaN stored as null
    assert d[3][1]["figures"] is None  # an operator decided
    assert reg.get(2).rejected and reg.get(3).rejected and not reg.get(1).rejected
    assert 1 not in d  # adding and installing are not decisions

    _register()
    r = CliRunner()
    sd = ["--state-dir", str(tmp_state)]
    rows = json.loads(r.invoke(app, ["model", "list", "--json", *sd]).output)
    assert [len(x["decisions"]) for x in rows] == [0, 1, 2]
    assert rows[1]["decisions"][0]["figures"]["margins"]["agree_margin"] == 0.02
    text = r.invoke(app, ["model", "list", *sd]).output
    assert "rejected" in text and "alert rate worse: 9 would-be alerts vs 2" in text
    assert "would-be alerts 9 vs 2, alert windows 60 vs 12 (against v1-xxxxxxxx)" in text
    assert "held-back labels 24" in text and "margins: alerts +10%+0" in text
    assert "decided by an operator" in text
    assert "{" not in text and "[" not in text  # no Python-shaped output


def test_a_registry_of_the_previous_schema_is_listed_read_only_then_migrated(
    tmp_state: Path, syn_model: bytes, syn_model_other: bytes
) -> None:
    # What the previous release left: schema v2 (events without figures), a model and
    # a rollback in its history.
    reg = ModelRegistry(tmp_state)
    v1 = reg.activate(reg.add(syn_model, "baseline").version, "install")
    db = sqlite3.connect(tmp_state / registry_mod.DB_NAME, isolation_level=None)
    db.execute("ALTER TABLE events DROP COLUMN figures")
    db.execute("INSERT INTO events (ts, kind, version, detail) VALUES (1, 'rolled_back', 1, 'old')")
    db.execute("PRAGMA user_version=2")
    db.close()
    # read-only (`model list` on a copied state directory): no migration, no figures
    _register()
    res = CliRunner().invoke(app, ["model", "list", "--json", "--state-dir", str(tmp_state)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["decisions"][0]["figures"] is None
    db = sqlite3.connect(tmp_state / registry_mod.DB_NAME)
    assert schema_version(db) == 2
    db.close()
    # opened to write: migrated to v3, models and history kept, figures from then on
    reg = ModelRegistry(tmp_state)
    db = sqlite3.connect(tmp_state / registry_mod.DB_NAME)
    assert schema_version(db) == len(registry_mod.MIGRATIONS) == 3
    db.close()
    assert reg.active() == v1
    rec = reg.add(syn_model_other, "fl:round-1")
    reg.reject(rec.version, "worse", FIGURES)
    d = reg.decisions()
    assert d[1][0]["detail"] == "old" and d[rec.version][0]["figures"]["windows"] == 90
