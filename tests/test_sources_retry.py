"""Backoff ladder and error classifier, tested as tables."""

from __future__ import annotations

import errno
import random

import pytest
import serial

from edgeagent.sources.retry import (
    Action,
    RetryPolicy,
    backoff_delay,
    classify,
)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (200, 30.0)],
)
def test_ladder_without_jitter(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 0.25, 30.0, None) == pytest.approx(expected)


def test_jitter_stays_within_band_and_spreads() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, 0.25, 30.0, rng, jitter=0.5) for _ in range(500)]
    assert min(delays) >= 1.0 and max(delays) <= 2.0
    assert max(delays) - min(delays) > 0.8  # actually spread, not constant


def test_jitter_is_reproducible_from_seed() -> None:
    a = [backoff_delay(i, 0.1, 5.0, random.Random(3)) for i in range(5)]
    b = [backoff_delay(i, 0.1, 5.0, random.Random(3)) for i in range(5)]
    assert a == b


@pytest.mark.parametrize("kwargs", [{"attempt": -1}, {"base": 0.0}, {"cap": -1.0}, {"jitter": 1.5}])
def test_bad_arguments_rejected(kwargs: dict[str, float]) -> None:
    args = {"attempt": 0, "base": 0.1, "cap": 1.0, "jitter_rng": None, "jitter": 0.5}
    args.update(kwargs)
    with pytest.raises(ValueError):
        backoff_delay(**args)  # type: ignore[arg-type]


def test_policy_validation_and_exhaustion() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(base_s=1.0, cap_s=0.5)
    with pytest.raises(ValueError):
        RetryPolicy(give_up_after=0)
    p = RetryPolicy(base_s=0.1, cap_s=0.4, jitter=0.0, give_up_after=3)
    assert [p.delay(i, None) for i in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert not p.exhausted(2) and p.exhausted(3)
    assert not RetryPolicy().exhausted(10**6)


class BleakDeviceNotFoundError(Exception):
    """Same class name as bleak's, to prove the classifier matches by name."""


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file"), Action.BACKOFF),
        (OSError(errno.EIO, "Input/output error"), Action.BACKOFF),
        (
            serial.SerialException("device reports readiness to read but returned no data"),
            Action.BACKOFF,
        ),
        (PermissionError(errno.EACCES, "Permission denied"), Action.BACKOFF),
        (IsADirectoryError(errno.EISDIR, "Is a directory"), Action.GIVE_UP),
        (serial.SerialException(errno.EISDIR, "could not open port /tmp"), Action.GIVE_UP),
        (serial.SerialException(errno.ENOTTY, "Inappropriate ioctl for device"), Action.GIVE_UP),
        (serial.SerialException(errno.ENOENT, "could not open port"), Action.BACKOFF),
        (ValueError("Not a valid baudrate: -1"), Action.GIVE_UP),
        (OSError(errno.EBUSY, "Device or resource busy"), Action.RETRY_FAST),
        (Exception("org.bluez.Error.InProgress: Operation already in progress"), Action.RETRY_FAST),
        (BleakDeviceNotFoundError("AA:BB not found"), Action.BACKOFF),
        (RuntimeError("something odd"), Action.BACKOFF),
    ],
)
def test_classifier_table(exc: BaseException, action: Action) -> None:
    verdict = classify(exc)
    assert verdict.action is action
    assert verdict.reason


def test_permission_advice_names_the_fix() -> None:
    assert "dialout" in classify(PermissionError(errno.EACCES, "denied")).advice
