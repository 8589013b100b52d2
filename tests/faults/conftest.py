"""Fixtures of the fault tests: a rig around the real daemon, and small tmpfs mounts.

Each test gets a fresh broker (``mosquitto_broker``) and a :class:`FaultRig`
whose stop at teardown ends every process it started. Mounting a tmpfs needs
root (CAP_SYS_ADMIN); where it is not permitted the tests that need one skip
and say why.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeagent.ops.pki import Pki
from edgelab.broker import Broker
from edgelab.faultrig import FaultRig
from tests.plugins.mqtt import TEST_FLEET


@pytest.fixture
def rig_factory(
    pki: Pki, mosquitto_broker: Broker, tmp_path: Path, short_dir: Path
) -> Iterator[Callable[..., FaultRig]]:
    made: list[FaultRig] = []

    def make(**kw: object) -> FaultRig:
        rig = FaultRig(tmp_path, pki, mosquitto_broker, fleet=TEST_FLEET,
                       control_dir=short_dir, **kw)  # type: ignore[arg-type]  # fmt: skip
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """``tmpfs(path, size="2m", ro=False)`` mounts a small tmpfs there (skips if not allowed)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "2m", ro: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (",ro" if ro else "")
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
