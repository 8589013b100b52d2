"""The feedback store: windows behind alerts, verdicts as labels, every refusal, retention.

A real SQLite file in a temp dir and a fake wall clock; the detector's hook is
exercised with a real ``Detector`` on a tiny ONNX model in ``test_daemon_feedback``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import cbor2
import numpy as np
import pytest

from edgeagent.errors import FeedbackError, FeedbackReason, ProtocolError
from edgeagent.ops.config import FeedbackSection
from edgeagent.pipeline.detect import ValidatedWindow
from edgeagent.pipeline.feedback import (
    HOLDOUT,
    MAX_REQUEST_BYTES,
    TRAIN,
    FeedbackStore,
    TokenBucket,
    parse_request,
    split_of,
)
from edgeagent.pipeline.feedback_wire import MAX_FEEDBACK_BYTES, ReplayGuard, decode_feedback

CLASSES = ("normal", "tachycardia", "bradycardia", "sensor_fault")
F = 5


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _w(i: float, kind: str = "tachycardia") -> ValidatedWindow:
    x = np.full(F, i, np.float32)
    return ValidatedWindow(x, np.zeros((1, F), np.float32), np.ones((1, F), np.float32), kind)


def _store(tmp_path: Path, clock: Clock, **policy: object) -> FeedbackStore:
    return FeedbackStore(
        tmp_path,
        FeedbackSection(**policy),  # type: ignore[arg-type]
        classes=lambda: CLASSES,
        served=lambda: {"p1", "p2"},
        clock=clock,
    )


def _alert(n: int) -> str:
    return f"{n:032x}"


def _fill(store: FeedbackStore, alert: str, n: int = 3, patient: str = "p1",
          kind: str = "tachycardia") -> None:  # fmt: skip
    for i in range(n):
        store.keep(alert, patient, _w(i, kind))


def test_a_confirmed_alert_labels_its_windows_with_its_kind(tmp_path: Path) -> None:
    clock = Clock()
    s = _store(tmp_path, clock)
    a = _alert(1)
    _fill(s, a, 4)
    v = s.record(a, True, None, "nurse-7", "p1")
    assert v.accepted and v.label == "tachycardia" and len(v.windows) == 4
    assert [float(w.x[0]) for w in v.windows] == [0, 1, 2, 3]
    assert v.windows[0].mu.shape == (1, F)
    assert s.verdict(a) == {"confirmed": True, "label": "tachycardia", "kind": "tachycardia",
                            "source": "nurse-7", "patient": "p1", "split": v.split,
                            "t": clock.t}  # fmt: skip
    assert len(s.labelled(v.split)) == 4
    assert s.counters["accepted"] == 1


def test_a_dismissed_alert_is_labelled_normal_and_a_correction_takes_the_given_kind(
    tmp_path: Path,
) -> None:
    s = _store(tmp_path, Clock())
    _fill(s, _alert(1))
    _fill(s, _alert(2))
    assert s.record(_alert(1), False).label == "normal"
    assert s.record(_alert(2), True, kind="bradycardia").label == "bradycardia"
    c = s.counts()
    assert (c["confirmed"], c["dismissed"]) == (1, 1)
    assert c["windows_train"] + c["windows_holdout"] == 6


def test_windows_per_alert_are_bounded_and_none_are_kept_after_the_verdict(
    tmp_path: Path,
) -> None:
    s = _store(tmp_path, Clock(), windows_per_alert=3)
    a = _alert(1)
    kept = [s.keep(a, "p1", _w(i)) for i in range(5)]
    assert kept == [True, True, True, False, False]
    v = s.record(a, True)
    assert len(v.windows) == 3
    b = _alert(2)
    s.keep(b, "p1", _w(0))
    s.record(b, False)
    assert s.keep(b, "p1", _w(1)) is False  # the learner has its windows already


@pytest.mark.parametrize(
    ("setup", "call", "reason"),
    [
        ("none", dict(alert_id=_alert(9), confirmed=True), FeedbackReason.UNKNOWN_ALERT),
        ("one", dict(alert_id=_alert(1), confirmed=True, patient="p9"),
         FeedbackReason.UNKNOWN_PATIENT),
        ("one", dict(alert_id=_alert(1), confirmed=True, patient="p2"),
         FeedbackReason.PATIENT_MISMATCH),
        ("one", dict(alert_id=_alert(1), confirmed=True, kind="fever"), FeedbackReason.BAD_KIND),
        ("one", dict(alert_id=_alert(1), confirmed=True, kind="normal"), FeedbackReason.BAD_KIND),
        ("novelty", dict(alert_id=_alert(1), confirmed=True), FeedbackReason.BAD_KIND),
        ("one", dict(alert_id=_alert(1), confirmed=False, kind="bradycardia"),
         FeedbackReason.MALFORMED),
        ("one", dict(alert_id="not-an-id", confirmed=True), FeedbackReason.MALFORMED),
        ("one", dict(alert_id=_alert(1), confirmed=True, source="a b"), FeedbackReason.MALFORMED),
        ("one", dict(alert_id=_alert(1), confirmed=1), FeedbackReason.MALFORMED),
        ("stray", dict(alert_id=_alert(1), confirmed=True), FeedbackReason.UNKNOWN_PATIENT),
    ],
)  # fmt: skip
def test_every_refusal_has_a_reason_and_a_counter_and_labels_nothing(
    tmp_path: Path, setup: str, call: dict, reason: FeedbackReason
) -> None:
    s = _store(tmp_path, Clock())
    if setup == "one":
        _fill(s, _alert(1))
    elif setup == "novelty":
        _fill(s, _alert(1), kind="novelty")
    elif setup == "stray":
        _fill(s, _alert(1), patient="p-moved-away")
    v = s.record(**call)
    assert not v.accepted and v.reason == reason and v.detail
    assert s.counters[f"refused_{reason}"] == 1
    assert s.labelled(TRAIN) == [] and s.labelled(HOLDOUT) == []
    assert s.counts()["confirmed"] == 0


def test_already_acked_and_expired_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    s = _store(tmp_path, clock, retention_s=100.0)
    _fill(s, _alert(1))
    _fill(s, _alert(2))
    assert s.record(_alert(1), True).accepted
    again = s.record(_alert(1), False, source="other")
    assert again.reason == FeedbackReason.ALREADY_ACKED and "tachycardia" in again.detail
    assert s.verdict(_alert(1))["label"] == "tachycardia"  # the first verdict stands
    clock.t += 101
    late = s.record(_alert(2), False)
    assert late.reason == FeedbackReason.EXPIRED
    assert s.counters["refused_already_acked"] == 1 and s.counters["refused_expired"] == 1


def test_the_rate_limit_is_per_patient(tmp_path: Path) -> None:
    clock = Clock()
    s = _store(tmp_path, clock, burst=3, rate_per_hour=3600.0)  # one a second after the burst
    for i in range(6):
        _fill(s, _alert(i), 1, patient="p1")
    _fill(s, _alert(100), 1, patient="p2")
    got = [s.record(_alert(i), False).accepted for i in range(5)]
    assert got == [True, True, True, False, False]
    assert s.counters["refused_rate_limited"] == 2
    assert s.record(_alert(100), False).accepted  # another patient has its own bucket
    clock.t += 1.0
    assert s.record(_alert(5), False).accepted  # refilled
    # A refused verdict left the alert open: it can be given again once the bucket allows.
    clock.t += 1.0
    assert s.record(_alert(3), False).accepted


def test_token_bucket_table() -> None:
    b = TokenBucket(rate_per_s=0.5, burst=2)
    assert [b.take(0.0), b.take(0.0), b.take(0.0)] == [True, True, False]
    assert b.take(1.0) is False  # half a token
    assert b.take(2.0) is True
    assert [b.take(100.0), b.take(100.0), b.take(100.0)] == [True, True, False]  # capped at burst


def test_the_holdout_split_is_deterministic_and_near_its_share() -> None:
    ids = [_alert(i) for i in range(4000)]
    first = [split_of(a, 0.25) for a in ids]
    assert first == [split_of(a, 0.25) for a in ids]
    share = first.count(HOLDOUT) / len(ids)
    assert 0.22 < share < 0.28
    assert {split_of(a, 0.0) for a in ids} == {TRAIN}


def test_holdout_and_train_windows_never_mix(tmp_path: Path) -> None:
    s = _store(tmp_path, Clock(), burst=100)
    splits = {}
    for i in range(40):
        a = _alert(i)
        s.keep(a, "p1", _w(i))
        splits[a] = s.record(a, True).split
    assert splits == {a: split_of(a, 0.25) for a in splits}
    train = {float(w.x[0]) for w in s.labelled(TRAIN)}
    hold = {float(w.x[0]) for w in s.labelled(HOLDOUT)}
    assert train.isdisjoint(hold) and len(train) + len(hold) == 40 and hold
    with pytest.raises(ValueError):
        s.labelled("test")


def test_retention_deletes_unlabelled_windows_and_keeps_labels(tmp_path: Path) -> None:
    clock = Clock()
    s = _store(tmp_path, clock, retention_s=100.0)
    _fill(s, _alert(1))
    _fill(s, _alert(2))
    s.record(_alert(1), True)
    clock.t += 150
    assert s.purge()["windows_expired"] == 3
    assert s.counts()["windows_stored"] == 3 and s.counts()["alerts_awaiting"] == 0
    assert s.record(_alert(2), True).reason == FeedbackReason.EXPIRED
    clock.t += 100  # twice the retention: the row itself goes; labels stay
    assert s.purge()["alerts_forgotten"] == 1
    assert s.record(_alert(2), True).reason == FeedbackReason.UNKNOWN_ALERT
    assert len(s.labelled(split_of(_alert(1), 0.25))) == 3


def test_the_size_cap_drops_unlabelled_windows_before_labels(tmp_path: Path) -> None:
    s = _store(tmp_path, Clock(), max_windows=100, windows_per_alert=50)
    _fill(s, _alert(1), 50)
    s.record(_alert(1), True)
    _fill(s, _alert(2), 50)
    _fill(s, _alert(3), 30)
    assert s.purge()["windows_capped"] == 30
    c = s.counts()
    assert c["windows_stored"] == 100 and c["windows_train"] + c["windows_holdout"] == 50


def test_verdicts_survive_a_power_cut_and_a_reopen(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    s = _store(live, Clock())
    _fill(s, _alert(1))
    _fill(s, _alert(2))
    v = s.record(_alert(1), False)
    # Power cut: the files as they are on disk now, the process never closed them.
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in live.iterdir():
        shutil.copy2(f, cut / f.name)
    after = _store(cut, Clock())
    assert after.verdict(_alert(1))["label"] == "normal"
    assert len(after.labelled(v.split)) == 3
    assert after.record(_alert(1), True).reason == FeedbackReason.ALREADY_ACKED
    assert after.record(_alert(2), True).accepted
    after.close()
    s.close()
    again = _store(live, Clock())  # a clean close and reopen
    assert again.verdict(_alert(1))["label"] == "normal" and again.counts()["dismissed"] == 1
    again.close()
    assert again.record(_alert(2), True).reason == FeedbackReason.UNAVAILABLE
    assert again.keep(_alert(3), "p1", _w(0)) is False


def test_resolve_finds_a_unique_prefix(tmp_path: Path) -> None:
    s = _store(tmp_path, Clock())
    s.keep("abcdef0011", "p1", _w(0))
    s.keep("abcdef0022", "p1", _w(0))
    assert s.resolve("abcdef00") is None  # two match
    assert s.resolve("abcdef001") == "abcdef0011"
    assert s.resolve("zz%") is None


def test_parse_request_refuses_oversized_and_malformed() -> None:
    with pytest.raises(FeedbackError) as e:
        parse_request({"alert": _alert(1), "confirmed": True}, size=MAX_REQUEST_BYTES + 1)
    assert e.value.reason == FeedbackReason.OVERSIZED
    for bad in ({}, {"alert": _alert(1)}, {"alert": 5, "confirmed": True},
                {"alert": _alert(1), "confirmed": True, "kind": "x" * 65},
                {"alert": _alert(1), "confirmed": True, "patient": "../etc"}):  # fmt: skip
        with pytest.raises(FeedbackError) as e:
            parse_request(bad)
        assert e.value.reason == FeedbackReason.MALFORMED
    r = parse_request({"alert": _alert(1), "confirmed": True, "kind": "bradycardia"})
    assert (r.confirmed, r.kind, r.source) == (True, "bradycardia", "cli")


def test_store_write_latency_is_small(tmp_path: Path) -> None:
    """keep() runs on the detection thread: it must stay far below a window hop (2 s)."""
    s = _store(tmp_path, Clock(), windows_per_alert=1024)
    n = 200
    t0 = time.perf_counter()
    for i in range(n):
        s.keep(_alert(i // 32), "p1", _w(i))
    per_keep = (time.perf_counter() - t0) / n
    assert per_keep < 0.05, per_keep


def test_replay_guard_remembers_nonces_for_the_window_and_is_bounded() -> None:
    g = ReplayGuard(window_s=10.0, max_nonces=3)
    g.check(b"a" * 16, 0.0)
    with pytest.raises(ProtocolError) as e:
        g.check(b"a" * 16, 5.0)
    assert e.value.reason == "replay"
    g.check(b"a" * 16, 21.0)  # older than twice the window: the time check refuses it anyway
    for n in (b"b", b"c", b"d", b"e"):
        g.check(n * 16, 22.0)
    assert len(g._seen) == 3


def test_ward_messages_are_refused_before_any_key_is_needed() -> None:
    ca = None  # never reached: size, encoding and version come first
    for data, reason in [
        (b"\x00" * (MAX_FEEDBACK_BYTES + 1), "oversized"),
        (b"\xff\xfe", "malformed"),
        (cbor2.dumps([1, 2]), "malformed"),
        (cbor2.dumps({"v": 2, "p": b"", "sig": b"", "cert": b""}), "bad_version"),
        (cbor2.dumps({"v": 1, "p": "text", "sig": b"", "cert": b""}), "malformed"),
    ]:
        with pytest.raises(ProtocolError) as e:
            decode_feedback(data, ca, "box", 0.0, 300.0)  # type: ignore[arg-type]
        assert e.value.reason == reason
