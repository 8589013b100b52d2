"""The shipped systemd units: `systemd-analyze verify` clean, security exposure low.

verify only warns (exit 0) on unknown keys and bad values, so any output at all
fails the test. The units name /usr/bin/edgeagent (the packaged path); the
test verifies a copy whose executable points at this machine's installed
command, since verify checks that ExecStart= binaries exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNITS = REPO / "systemd"
MAX_AGENT_EXPOSURE = 2.5
MAX_AGGREGATOR_EXPOSURE = 2.5

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def _edgeagent_exe(tmp_path: Path) -> str:
    exe = shutil.which("edgeagent")
    if exe:
        return str(Path(exe).resolve())
    stub = tmp_path / "edgeagent"  # not installed as a script: run the module instead
    stub.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "from edgeagent.cli import main; main()" "$@"\n'
    )
    stub.chmod(0o755)
    return str(stub)


def _installed_copy(name: str, tmp_path: Path) -> Path:
    text = (UNITS / name).read_text()
    assert "/usr/bin/edgeagent " in text
    out = tmp_path / name
    out.write_text(text.replace("/usr/bin/edgeagent ", _edgeagent_exe(tmp_path) + " "))
    return out


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, cwd="/"
    )


@pytest.mark.parametrize("name", ["edgeagent.service", "edgeagent-aggregator.service"])
def test_verify_is_clean(name: str, tmp_path: Path) -> None:
    unit = _installed_copy(name, tmp_path)
    res = _analyze("verify", "--man=no", str(unit))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """Guards the guard: a misspelt key must produce output that fails the test above."""
    unit = _installed_copy("edgeagent.service", tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    res = _analyze("verify", "--man=no", str(unit))
    assert "Unknown key" in res.stdout + res.stderr


def _exposure(unit: Path) -> float:
    res = _analyze("security", "--offline=true", "--no-pager", str(unit))
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("edgeagent.service", MAX_AGENT_EXPOSURE),
        ("edgeagent-aggregator.service", MAX_AGGREGATOR_EXPOSURE),
    ],
)
def test_security_exposure(name: str, limit: float, tmp_path: Path) -> None:
    score = _exposure(_installed_copy(name, tmp_path))
    assert score <= limit, f"{name} exposure {score} > {limit}"


def test_a_bare_unit_scores_badly(tmp_path: Path) -> None:
    """The scorer is live: the same service without hardening is far above the limit."""
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nType=notify\nExecStart=/bin/true\n")
    assert _exposure(bare) > 5


def _directives(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_agent_unit_has_the_required_contract() -> None:
    d = _directives("edgeagent.service")
    assert d["Type"] == ["notify"]
    assert d["Restart"] == ["on-failure"]
    assert d["WatchdogSec"]
    assert "config validate" in d["ExecStartPre"][0]
    assert d["ExecStart"][0].split()[1] == "run"
    assert d["StateDirectory"] == ["edgeagent"] and d["ConfigurationDirectory"] == ["edgeagent"]
    assert d["DynamicUser"] == ["yes"]
    assert set(d["SupplementaryGroups"][0].split()) == {"bluetooth", "dialout"}
    assert d["ProtectSystem"] == ["strict"] and d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["DevicePolicy"] == ["closed"]
    assert any(v.startswith("char-ttyUSB") for v in d["DeviceAllow"])
    # The control socket default lives in the unit's RuntimeDirectory.
    assert d["RuntimeDirectory"] == ["edgeagent"]


def test_aggregator_unit_has_no_devices() -> None:
    d = _directives("edgeagent-aggregator.service")
    assert d["Type"] == ["notify"] and d["PrivateDevices"] == ["yes"]
    assert "SupplementaryGroups" not in d and "DeviceAllow" not in d
