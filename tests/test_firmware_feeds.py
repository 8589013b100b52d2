"""Feeds that drive simulated BLE wearables: continuity and recording replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_sim.feeds import RecordingFeed, SyntheticFeed


def test_synthetic_feed_is_continuous_and_deterministic() -> None:
    a, b = SyntheticFeed(seed=3), SyntheticFeed(seed=3)
    whole = a.advance(3.0)
    parts = [b.advance(dt) for dt in (0.013, 0.5, 0.987, 1.5)]
    for name in ("ecg", "acc", "skin_temp", "rr"):
        t = np.concatenate([p[name][0] for p in parts])
        np.testing.assert_allclose(t, whole[name][0])
        assert np.all(np.diff(t) > 0)
    assert len(whole["ecg"][0]) == 390 and len(whole["acc"][0]) == 150
    rr = whole["rr"][1][:, 0]
    assert np.all((rr > 0.5) & (rr < 1.3))


def test_recording_feed_replays_once(tmp_path: Path) -> None:
    (tmp_path / "ecg.csv").write_text("t,uv\n10.0,1\n10.5,2\nbad,row\n11.0,nan\n11.5,4\n")
    (tmp_path / "acc.csv").write_text("t,x,y,z\n10.25,1,2,3\n")
    f = RecordingFeed(tmp_path)
    first = f.advance(1.0)
    assert first["ecg"][0].tolist() == [0.0, 0.5] and first["acc"][1].tolist() == [[1, 2, 3]]
    second = f.advance(10.0)
    assert second["ecg"][0].tolist() == [1.5]  # NaN row never sent
    assert len(f.advance(10.0)["ecg"][0]) == 0  # ends quietly, no looping


def test_recording_feed_rejects_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no readable"):
        RecordingFeed(tmp_path)
