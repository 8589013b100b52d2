"""Plaintext-mode updates sealed to the round key: opens only for that round, box and key."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgeagent.errors import ProtocolError
from edgeagent.fl import seal

DIM = 257


@pytest.fixture
def update() -> np.ndarray:
    return np.random.default_rng(3).normal(size=DIM).astype(np.float32)


def test_round_trip_carries_update_and_n(update: np.ndarray) -> None:
    key, pub = seal.round_key()
    ctx = seal.info(7, b"\x01" * 16, "box-a")
    sealed = seal.seal_update(update, 123, pub, ctx)
    assert len(sealed) == seal.sealed_size(DIM) == 4 * DIM + 4 + seal.OVERHEAD
    got, n = seal.open_update(sealed, key, ctx, DIM)
    assert n == 123 and got.dtype == np.float64
    np.testing.assert_array_equal(got, update.astype(np.float64))


def test_what_the_broker_sees_reveals_nothing_it_can_match(update: np.ndarray) -> None:
    _, pub = seal.round_key()
    ctx = seal.info(7, b"\x01" * 16, "box-a")
    a = seal.seal_update(update, 5, pub, ctx)
    b = seal.seal_update(update, 5, pub, ctx)
    assert a != b  # fresh encapsulated key each time: equal updates do not look equal
    assert update.astype("<f4").tobytes()[:64] not in a


@pytest.mark.parametrize(
    "other",
    [
        (8, b"\x01" * 16, "box-a"),  # replayed into the next round
        (7, b"\x02" * 16, "box-a"),  # another round nonce
        (7, b"\x01" * 16, "box-b"),  # re-sent under another box's signed envelope
    ],
)
def test_a_sealed_update_opens_only_in_its_own_context(
    update: np.ndarray, other: tuple[int, bytes, str]
) -> None:
    key, pub = seal.round_key()
    sealed = seal.seal_update(update, 5, pub, seal.info(7, b"\x01" * 16, "box-a"))
    with pytest.raises(ProtocolError) as err:
        seal.open_update(sealed, key, seal.info(*other), DIM)
    assert err.value.reason == "undecryptable"


def test_tampering_another_key_and_wrong_size_are_refused(update: np.ndarray) -> None:
    key, pub = seal.round_key()
    old_key, _ = seal.round_key()
    ctx = seal.info(1, os.urandom(16), "box-a")
    sealed = seal.seal_update(update, 5, pub, ctx)
    flipped = bytearray(sealed)
    flipped[100] ^= 1
    for bad, k in ((bytes(flipped), key), (sealed, old_key)):
        with pytest.raises(ProtocolError) as err:
            seal.open_update(bad, k, ctx, DIM)
        assert err.value.reason == "undecryptable"
    for bad in (sealed[:-1], sealed + b"\0", b""):
        with pytest.raises(ProtocolError) as err:
            seal.open_update(bad, key, ctx, DIM)
        assert err.value.reason == "bad_body"
    zero_enc = bytes(32) + sealed[32:]  # a low-order point as the encapsulated key
    with pytest.raises(ProtocolError):
        seal.open_update(zero_enc, key, ctx, DIM)
    with pytest.raises(ValueError, match="32 bytes"):
        seal.seal_update(update, 5, pub[:16], ctx)
