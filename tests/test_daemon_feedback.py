"""Feedback through the daemon: a real detector's alert windows, the control socket, the learner.

Real parts: a ``Detector`` on the synthetic-world ONNX model raising alerts into
an ``AlertStore``, the ``FeedbackStore`` beside it, the daemon's
``FeedbackComponent`` serving ``alerts_ack`` on a real AF_UNIX ``ControlServer``,
and the ``edgeagent alerts ack`` / ``show`` / ``status`` verbs. The learner is a
small recording sink with the ``offer_labelled`` the learner offers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.cli.status import render
from edgeagent.daemon.components import Counters
from edgeagent.daemon.control import ControlServer
from edgeagent.daemon.feedback import FeedbackComponent
from edgeagent.daemon.supervisor import Supervisor
from edgeagent.ops.config import parse_config
from edgeagent.pipeline.alerts import AlertStore
from edgeagent.pipeline.detect import Detector, DetectorConfig, ValidatedWindow
from edgeagent.pipeline.feedback import HOLDOUT, TRAIN, FeedbackStore, split_of
from tests.plugins.model import SYN_FEATURES, SYN_MODALITY, SynWorld

_register()
runner = CliRunner()


class RecordingLearner:
    """What the daemon needs of the learner: ``offer_labelled(w) -> bool``."""

    def __init__(self) -> None:
        self.got: list[ValidatedWindow] = []

    def offer_labelled(self, w: ValidatedWindow) -> bool:
        self.got.append(w)
        return True


def _id_in(split: str) -> str:
    """An alert id (uuid4-like hex) that falls in ``split``."""
    i = 0
    while split_of(hashlib.md5(str(i).encode()).hexdigest(), 0.25) != split:
        i += 1
    return hashlib.md5(str(i).encode()).hexdigest()


@pytest.fixture
def served(tmp_path: Path, short_dir: Path) -> Iterator[tuple[FeedbackComponent, Path]]:
    """A feedback component on a real control socket; the store serves patient p1."""
    store = FeedbackStore(
        tmp_path, classes=lambda: ("normal", "tachycardia", "fall"), served=lambda: {"p1"}
    )
    comp = FeedbackComponent(store, RecordingLearner(), Counters(), box_id="box", fleet="f")
    srv = ControlServer(short_dir / "c.sock", comp.commands())
    srv.start()
    try:
        yield comp, srv.path
    finally:
        srv.stop()
        comp.stop()


def _w(i: int) -> ValidatedWindow:
    return ValidatedWindow(np.full(3, i, np.float32), np.zeros((1, 3), np.float32),
                           np.ones((1, 3), np.float32), "tachycardia")  # fmt: skip


def _ack(sock: Path, *args: str) -> tuple[int, dict]:
    res = runner.invoke(app, ["alerts", "ack", *args, "--socket", str(sock), "--json"])
    return res.exit_code, json.loads(res.stdout)


def test_only_train_windows_reach_the_learner(
    served: tuple[FeedbackComponent, Path],
) -> None:
    comp, sock = served
    train, hold = _id_in(TRAIN), _id_in(HOLDOUT)
    for a in (train, hold):
        for i in range(4):
            comp.keep(a, "p1", _w(i))
    code, res = _ack(sock, train[:10], "--false")
    assert code == 0 and res["accepted"] and res["label"] == "normal" and res["split"] == TRAIN
    code, res = _ack(sock, hold, "--true", "--kind", "fall")
    assert code == 0 and res["label"] == "fall" and res["split"] == HOLDOUT
    got = comp.learner.got
    assert [w.label for w in got] == ["normal"] * 4  # the held-back alert trained nothing
    assert [float(w.x[0]) for w in got] == [0, 1, 2, 3]
    assert comp.counters.snapshot()["feedback_windows_offered"] == 4
    assert len(comp.store.labelled(HOLDOUT)) == 4


def test_refusals_through_the_socket_exit_1_and_train_nothing(
    served: tuple[FeedbackComponent, Path],
) -> None:
    comp, sock = served
    a = _id_in(TRAIN)
    comp.keep(a, "p1", _w(0))
    cases = [
        ((a, "--true", "--kind", "fever"), "bad_kind"),
        ((a, "--true", "--patient", "p7"), "unknown_patient"),
        (("0123456789abcdef", "--true"), "unknown_alert"),
        (("not-hex!", "--true"), "malformed"),
    ]
    for args, reason in cases:
        code, res = _ack(sock, *args)
        assert code == 1 and not res["accepted"] and res["reason"] == reason, res
    assert _ack(sock, a, "--true")[0] == 0
    code, res = _ack(sock, a, "--false")
    assert code == 1 and res["reason"] == "already_acked"
    counters = comp.counters.snapshot()
    for reason in ("bad_kind", "unknown_patient", "unknown_alert", "malformed", "already_acked"):
        assert counters[f"feedback_refused_{reason}"] == 1
    assert len(comp.learner.got) == 1  # the one accepted verdict's one window
    res = runner.invoke(app, ["alerts", "ack", a, "--socket", str(sock)])
    assert res.exit_code != 0 and "--true" in res.output  # a verdict needs a side
    res = runner.invoke(app, ["alerts", "ack", a, "--true", "--socket", str(sock) + ".gone"])
    assert res.exit_code == 1 and "is the daemon running" in res.output


def test_an_oversized_request_is_refused(served: tuple[FeedbackComponent, Path]) -> None:
    comp, sock = served
    from edgeagent.daemon.control import request

    res = request(sock, "alerts_ack", alert="ab" * 8, confirmed=True, pad="x" * 2000)
    assert res["reason"] == "oversized"
    assert comp.counters.snapshot()["feedback_refused_oversized"] == 1


def test_a_real_detector_s_alert_is_acked_shown_and_counted_in_status(
    syn_model: bytes, syn_world: SynWorld, tmp_path: Path, short_dir: Path
) -> None:
    alerts = AlertStore(tmp_path)
    det = Detector(syn_model, "v1-test", alerts, DetectorConfig(), feature_names=SYN_FEATURES,
                   featurize=lambda w: w, modality_of=SYN_MODALITY)  # fmt: skip
    store = FeedbackStore(tmp_path, classes=lambda: det.meta.classes, served=lambda: {"p30"})
    learner = RecordingLearner()
    comp = FeedbackComponent(store, learner, Counters(), box_id="box", fleet="f")
    det.on_alert_window = comp.keep
    rows: list[tuple[float, np.ndarray]] = []
    t = 0.0
    for kind, n in [("normal", 60), ("tachycardia", 15), ("normal", 30)]:
        for x in syn_world.rows(30, kind, n, seed=int(t)):
            det.process_features("p30", t, t + 10.0, x)
            rows.append((t, np.asarray(x, np.float32)))
            t += 2.0
    tachy = next(a for a in alerts.list() if a.kind == "tachycardia")
    kept = store.counts()["windows_stored"]
    assert 5 <= kept <= 32
    in_episode = [x for s, x in rows if tachy.start <= s <= tachy.end]

    cfg = parse_config({"agent": {"box_id": "box", "state_dir": str(tmp_path)},
                        "control": {"socket_path": str(short_dir / "d.sock")}})  # fmt: skip
    sup = Supervisor(cfg, [comp])  # registers the component's commands on its socket
    assert sup._control is not None and "alerts_ack" in sup._control.handlers
    sup._control.start()
    try:
        code, res = _ack(cfg.control.socket_path, tachy.id[:12], "--true")
    finally:
        sup._control.stop()
    assert code == 0 and res["label"] == "tachycardia" and res["windows"] == kept
    labelled = store.labelled(res["split"])
    assert all(any(np.array_equal(w.x, x, equal_nan=True) for x in in_episode) for w in labelled)
    assert len(learner.got) == (kept if res["split"] == TRAIN else 0)

    shown = runner.invoke(app, ["alerts", "show", tachy.id[:12], "--state-dir", str(tmp_path),
                                "--json"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    verdict = json.loads(shown.stdout)["verdict"]
    assert verdict["label"] == "tachycardia" and verdict["confirmed"] is True
    text = runner.invoke(app, ["alerts", "show", tachy.id[:12], "--state-dir", str(tmp_path)])
    assert "confirmed, labelled tachycardia by cli:" in text.stdout

    console = Console(record=True, width=200)
    render(sup.snapshot(), console)
    assert "feedback: 1 confirmed, 0 dismissed" in console.export_text()
    comp.stop()
    alerts.close()
