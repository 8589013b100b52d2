"""Fixtures for the serial tests: a simulated wearable on a real pty, and a source for it.

Both factories stop what they started at teardown, so a failing test never
leaves a reader thread or a pty behind.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeagent.sources.retry import RetryPolicy
from edgeagent.sources.serial import SerialSource
from edgeagent.streams import Gap, SampleBlock
from firmware_sim.serialdev import PtyDevice

# Tests reconnect fast: a vanished pty comes back within ~0.3 s.
FAST_RETRY = RetryPolicy(base_s=0.02, cap_s=0.2, jitter=0.5)


@pytest.fixture
def serial_link(tmp_path: Path) -> Path:
    """A stable port path (symlink) a simulated device will serve."""
    return tmp_path / "ttyTEXTILE0"


@pytest.fixture
def pty_device(serial_link: Path) -> Iterator[Callable[..., PtyDevice]]:
    """Factory: ``pty_device(**kwargs)`` starts a PtyDevice on ``serial_link``."""
    started: list[PtyDevice] = []

    def make(**kwargs: Any) -> PtyDevice:
        dev = PtyDevice(kwargs.pop("link", serial_link), **kwargs)
        started.append(dev.start())
        return dev

    yield make
    for dev in started:
        dev.stop()


class Collected:
    """Everything a source delivered, in order."""

    def __init__(self) -> None:
        self.blocks: list[SampleBlock] = []
        self.gaps: list[Gap] = []

    def n(self, stream: str) -> int:
        return sum(len(b) for b in self.blocks if b.stream == stream)


@pytest.fixture
def serial_source(serial_link: Path) -> Iterator[Callable[..., tuple[SerialSource, Collected]]]:
    """Factory: ``serial_source(**kwargs)`` starts a SerialSource collecting into lists."""
    started: list[SerialSource] = []

    def make(**kwargs: Any) -> tuple[SerialSource, Collected]:
        got = Collected()
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("rng", random.Random(0))
        kwargs.setdefault("max_skew_s", None)  # fast devices run ahead of the wall clock
        src = SerialSource(
            str(kwargs.pop("port", serial_link)),
            kwargs.pop("device_id", "textile-01"),
            got.blocks.append,
            got.gaps.append,
            **kwargs,
        )
        src.start()
        started.append(src)
        return src, got

    yield make
    for src in started:
        src.stop()
