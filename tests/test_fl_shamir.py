"""Fast GF(2^128) Shamir: field laws, and share compatibility with pycryptodome both ways."""

from __future__ import annotations

import os

import pytest
from Crypto.Protocol.SecretSharing import Shamir
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.fl.secagg import shamir

elements = st.integers(min_value=1, max_value=(1 << 128) - 1)


@settings(max_examples=60, deadline=None)
@given(elements, elements)
def test_field_laws(a: int, b: int) -> None:
    assert shamir.mul(a, b) == shamir.mul(b, a)
    assert shamir.square(a) == shamir.mul(a, a)
    assert shamir.mul(a, shamir.inverse(a)) == 1
    assert shamir.mul(shamir.mul(a, b), shamir.inverse(b)) == a


def test_matches_pycryptodome_products() -> None:
    from Crypto.Protocol.SecretSharing import _Element

    for _ in range(20):
        a, b = (int.from_bytes(os.urandom(16), "big") for _ in range(2))
        assert shamir.mul(a, b) == int(_Element(a) * _Element(b))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.data())
def test_any_k_shares_rebuild_and_interoperate(k: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(k, min(k + 30, 255)))
    secret = os.urandom(16)
    ours, theirs = shamir.split(k, n, secret), Shamir.split(k, n, secret)
    pick = data.draw(st.permutations(range(n)))[:k]
    assert shamir.combine([ours[i] for i in pick]) == secret
    assert shamir.combine([theirs[i] for i in pick]) == secret
    assert Shamir.combine([ours[i] for i in pick]) == secret


def test_too_few_or_corrupted_shares_do_not_give_the_secret() -> None:
    secret = os.urandom(16)
    shares = shamir.split(5, 9, secret)
    assert shamir.combine(shares[:4]) != secret
    bad = [(i, bytes(16)) if i == 3 else (i, s) for i, s in shares[:5]]
    assert shamir.combine(bad) != secret


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        shamir.split(3, 2, os.urandom(16))
    with pytest.raises(ValueError):
        shamir.split(2, 3, b"short")
    with pytest.raises(ValueError):
        shamir.combine([(1, os.urandom(16)), (1, os.urandom(16))])
    with pytest.raises(ValueError):
        shamir.inverse(0)
