"""The aggregator's state file, model store and signed publication (real files and keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeagent.errors import ModelError
from edgeagent.federation.store import (
    HISTORY,
    STATE_FILE,
    AggregatorStore,
    read_state,
    status_report,
)
from edgeagent.fl.constants import AGGREGATOR
from edgeagent.fl.identity import load_ca, load_identity
from edgeagent.fl.wire import decode_model
from edgeagent.model.graph import sha256_hex
from edgeagent.model.signing import verify_hash
from edgeagent.ops.pki import Pki


def test_a_fresh_store_is_saved_with_its_defaults(tmp_path: Path) -> None:
    assert read_state(tmp_path) == {}
    s = AggregatorStore(tmp_path, 1e-5)
    on_disk = json.loads((tmp_path / STATE_FILE).read_text())
    assert on_disk["next_round"] == 1 and on_disk["rounds"] == [] and s.model_bytes is None
    assert s.epsilon() == 0.0  # nothing released yet
    assert "reputation" not in on_disk  # created on first use only
    s.reputation()["box-a"] = 0.5
    s.save()
    assert read_state(tmp_path)["reputation"] == {"box-a": 0.5}


def test_a_round_cut_by_a_restart_is_recorded_and_its_id_never_reused(tmp_path: Path) -> None:
    s = AggregatorStore(tmp_path, 1e-5)
    s.begin_round(1, ["box-a", "box-b"], 1234.0, groups=[["box-a", "box-b"]])
    assert read_state(tmp_path)["in_progress"]["groups"] == [["box-a", "box-b"]]
    again = AggregatorStore(tmp_path, 1e-5)  # the restart
    assert again.state["next_round"] == 2 and "in_progress" not in again.state
    (rec,) = again.state["rounds"]
    assert rec["status"] == "interrupted" and rec["participants"] == ["box-a", "box-b"]
    assert again.state["totals"]["interrupted"] == 1
    assert again.state["clear_announce"] == [1]  # its retained announcement gets withdrawn


def test_end_round_keeps_a_bounded_history_and_sums_refusals(tmp_path: Path) -> None:
    s = AggregatorStore(tmp_path, 1e-5)
    for r in range(HISTORY + 2):  # in memory: one save per round would make this slow
        s.record({"round": r + 1, "status": "completed", "refused": {}})
    s.begin_round(HISTORY + 3, ["a"], 0.0)
    s.end_round({"round": HISTORY + 3, "status": "completed", "refused": {"replay": 2}})
    st = read_state(tmp_path)
    assert len(st["rounds"]) == HISTORY and st["rounds"][0]["round"] == 4
    assert st["totals"]["completed"] == HISTORY + 3 and st["refused"] == {"replay": 2}
    assert "in_progress" not in st
    assert status_report(tmp_path)["totals"]["completed"] == HISTORY + 3


def test_privacy_accounting_survives_a_restart_and_an_unnoised_release_voids_it(
    tmp_path: Path,
) -> None:
    s = AggregatorStore(tmp_path, 1e-5)
    s.account(2.0, 0.1)
    s.account(2.0, 0.1)
    s.save()  # the service saves with the round's record (``end_round``)
    eps = s.epsilon()
    assert eps is not None and eps > 0
    assert AggregatorStore(tmp_path, 1e-5).epsilon() == pytest.approx(eps)
    s.account(0.0, 0.1)
    s.save()
    assert s.epsilon() is None and AggregatorStore(tmp_path, 1e-5).epsilon() is None


def test_models_are_content_addressed_checked_and_published_signed(
    tmp_path: Path, pki: Pki, syn_model: bytes
) -> None:
    s = AggregatorStore(tmp_path, 1e-5)
    s.store_model(syn_model, 0, 0, {"holdout_loss": 0.3})
    s.save()
    sha = sha256_hex(syn_model)
    assert (tmp_path / "models" / f"{sha}.onnx").read_bytes() == syn_model
    assert s.current_eval() == {"holdout_loss": 0.3} and s.version() == 0
    assert AggregatorStore(tmp_path, 1e-5).model_bytes == syn_model
    ident = load_identity(pki.client_files(AGGREGATOR).cert, load_ca(pki.ca_cert), AGGREGATOR)
    pub = decode_model(s.publication(ident))
    assert pub.sha256 == sha and pub.onnx == syn_model and pub.version == 0
    assert verify_hash([ident.public_key], pub.sha256, pub.signature) == 0
    (tmp_path / "models" / f"{sha}.onnx").write_bytes(syn_model + b"\x00")
    with pytest.raises(ModelError, match="does not match its hash"):
        AggregatorStore(tmp_path, 1e-5)


def test_an_unreadable_state_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=STATE_FILE):
        AggregatorStore(tmp_path, 1e-5)
