"""Receivers drop repeats by msg-id: once per id, bounded, and across a restart with a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeagent.transport.dedupe import SeenIds


def test_first_is_true_once_per_id() -> None:
    s = SeenIds()
    assert s.first("a.opened") and s.first("a.closed")
    assert not s.first("a.opened") and not s.first("a.opened")
    assert s.duplicates == 2 and s.first_seen == 2 and "a.closed" in s


def test_bounded_memory_forgets_the_oldest() -> None:
    s = SeenIds(capacity=3)
    for mid in ("m1", "m2", "m3", "m4"):
        assert s.first(mid)
    assert len(s) == 3 and "m1" not in s and "m4" in s
    with pytest.raises(ValueError):
        SeenIds(capacity=0)


def test_a_restarted_consumer_still_drops_what_it_handled(tmp_path: Path) -> None:
    path = tmp_path / "seen.sqlite"
    s = SeenIds(path, capacity=2)
    for mid in ("m1", "m2", "m3"):
        s.first(mid)
    s.close()
    again = SeenIds(path, capacity=2)
    assert not again.first("m3") and not again.first("m2")
    assert again.first("m1")  # beyond the bound: forgotten on purpose
    again.close()
