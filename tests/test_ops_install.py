"""``edgeagent service install|uninstall`` into a temporary root: real files, no live changes.

Accounts go through FileAccounts (the root's etc/passwd and etc/group), so
the same code paths run as on a box without touching this machine's users.
Every test also checks that nothing outside the root changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.ops.install import (
    GROUPS,
    UDEV_NAME,
    FileAccounts,
    install,
    shipped_file,
    uninstall,
)

_register()
runner = CliRunner()
EXE = "/opt/edgeagent/venv/bin/edgeagent"
LIVE = [Path("/etc/passwd"), Path("/etc/group")]


def _digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A box image: root, daemon and nogroup only; no bluetooth/dialout groups yet."""
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
        "systemd-network:x:998:998::/:/usr/sbin/nologin\n"
    )
    (r / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\nsystemd-network:x:998:\n")
    before = _digest(LIVE)
    live_unit = Path("/etc/systemd/system/edgeagent.service").exists()
    yield r
    assert _digest(LIVE) == before, "install touched the live system's accounts"
    assert Path("/etc/systemd/system/edgeagent.service").exists() == live_unit


def _tree(r: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(r.rglob("*")):
        data = p.read_bytes() if p.is_file() else b""
        out[str(p.relative_to(r))] = (stat.S_IMODE(p.stat().st_mode), data)
    return out


def test_install_creates_everything(root: Path) -> None:
    rep = install(root, exe=EXE)
    assert rep.ok and rep.changed
    acc = FileAccounts(root)
    assert all(acc.group_exists(g) for g in GROUPS)
    assert acc.user_groups("edgeagent") == set(GROUPS)
    uid, gid = acc.ids("edgeagent") or (-1, -1)
    assert 100 <= uid < 1000 and uid != 998 and gid == uid  # a free system id
    passwd = (root / "etc/passwd").read_text()
    assert re.search(
        rf"^edgeagent:x:{uid}:{gid}:.*:/var/lib/edgeagent:/usr/sbin/nologin$", passwd, re.M
    )

    unit = (root / "etc/systemd/system/edgeagent.service").read_text()
    assert f"ExecStart={EXE} run --config" in unit and "/usr/bin/edgeagent" not in unit
    assert f"ExecStartPre={EXE} config validate" in unit
    rule = root / "etc/udev/rules.d" / UDEV_NAME
    assert rule.read_text() == shipped_file(UDEV_NAME).read_text()
    cfg = root / "etc/edgeagent/config.toml"
    assert cfg.read_text() == shipped_file("edgeagent.example.toml").read_text()
    modes = {
        "etc/edgeagent": 0o750,
        "var/lib/edgeagent": 0o700,
        "etc/edgeagent/config.toml": 0o640,
        "etc/systemd/system/edgeagent.service": 0o644,
        f"etc/udev/rules.d/{UDEV_NAME}": 0o644,
    }
    for rel, mode in modes.items():
        assert stat.S_IMODE((root / rel).stat().st_mode) == mode, rel
    # Live-system commands are reported, never run, for a relocated root.
    runs = [a for a in rep.actions if a.verb == "run"]
    assert {a.target for a in runs} >= {
        "systemctl daemon-reload",
        "systemctl enable edgeagent.service",
    }
    assert all(a.status == "skipped" for a in runs)


def test_install_is_idempotent_and_keeps_the_config(root: Path) -> None:
    install(root, exe=EXE)
    cfg = root / "etc/edgeagent/config.toml"
    cfg.write_text('[agent]\nbox_id = "box-0042"\n')
    first = _tree(root)
    again = install(root, exe=EXE)
    assert again.ok and not again.changed
    assert {a.status for a in again.actions} <= {"unchanged", "skipped"}
    assert _tree(root) == first  # not one byte or mode changed
    assert "box-0042" in cfg.read_text()


def test_install_refreshes_a_changed_unit_and_adds_missing_groups(root: Path) -> None:
    install(root, exe=EXE)
    acc = FileAccounts(root)
    acc.remove_user("edgeagent")
    acc.add_user("edgeagent", "/var/lib/edgeagent", ["bluetooth"])  # dialout missing
    rep = install(root, exe="/usr/local/bin/edgeagent")
    assert acc.user_groups("edgeagent") == set(GROUPS)
    done = {(a.verb, a.target) for a in rep.actions if a.status == "done"}
    assert ("write", "/etc/systemd/system/edgeagent.service") in done
    assert ("user", "edgeagent") in done
    assert ("write", f"/etc/udev/rules.d/{UDEV_NAME}") not in done
    assert (
        "/usr/local/bin/edgeagent run"
        in (root / "etc/systemd/system/edgeagent.service").read_text()
    )


def test_dry_run_writes_nothing_and_says_what_it_would_run(root: Path) -> None:
    before = _tree(root)
    rep = install(root, dry_run=True, exe=EXE)
    assert _tree(root) == before
    assert (
        rep.ok
        and rep.changed
        and all(a.status in ("would", "unchanged", "skipped") for a in rep.actions)
    )
    details = " | ".join(a.detail for a in rep.actions)
    assert "would run groupadd --system bluetooth" in details
    assert (
        "would run useradd --system" in details
        and "--groups bluetooth,dialout edgeagent" in details
    )


def test_live_dry_run_reports_commands_without_running_them() -> None:
    ran: list[list[str]] = []
    rep = install(Path("/"), dry_run=True, exe=EXE, run=lambda argv: ran.append(list(argv)))
    assert ran == []
    runs = {a.target: a.status for a in rep.actions if a.verb == "run"}
    assert runs.get("systemctl enable edgeagent.service") == "would"


def test_uninstall_keeps_identity_unless_purged(root: Path) -> None:
    install(root, exe=EXE)
    rep = uninstall(root)
    assert rep.ok
    assert not (root / "etc/systemd/system/edgeagent.service").exists()
    assert not (root / "etc/udev/rules.d" / UDEV_NAME).exists()
    assert (root / "etc/edgeagent/config.toml").exists() and (root / "var/lib/edgeagent").is_dir()
    assert FileAccounts(root).user_groups("edgeagent") is not None
    again = uninstall(root)
    assert not again.changed
    purged = uninstall(root, purge=True)
    assert purged.ok
    assert not (root / "etc/edgeagent").exists() and not (root / "var/lib/edgeagent").exists()
    acc = FileAccounts(root)
    assert acc.user_groups("edgeagent") is None and not acc.group_exists("edgeagent")
    assert "edgeagent" not in (root / "etc/group").read_text()  # memberships gone too


def test_uninstall_leaves_files_it_did_not_install(root: Path) -> None:
    unit = root / "etc/systemd/system/edgeagent.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\nDescription=someone else's unit\n")
    rep = uninstall(root)
    assert unit.exists()
    assert any(a.status == "skipped" and "not installed by" in a.detail for a in rep.actions)


def test_cli_install_json_and_exit_code(root: Path) -> None:
    res = runner.invoke(app, ["service", "install", "--root", str(root), "--exe", EXE, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["ok"] and doc["changed"] and doc["root"] == str(root)
    res = runner.invoke(app, ["service", "install", "--root", str(root), "--exe", EXE])
    assert res.exit_code == 0 and "unchanged" in res.output and "done " not in res.output
    res = runner.invoke(app, ["service", "uninstall", "--root", str(root), "--dry-run"])
    assert res.exit_code == 0 and "would" in res.output
    assert (root / "etc/systemd/system/edgeagent.service").exists()


def test_cli_reports_a_failed_step_with_exit_1(root: Path) -> None:
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/system").write_text("a file where a directory must be")
    res = runner.invoke(app, ["service", "install", "--root", str(root), "--exe", EXE])
    assert res.exit_code == 1
    assert "failed" in res.output and "/etc/systemd/system/edgeagent.service" in res.output


_UDEV_KEYS = re.compile(
    r"^(SUBSYSTEM|ENV\{\w+\}|ATTRS?\{\w+\}|GROUP|MODE|SYMLINK|GOTO|LABEL|TAG)"
    r'(==|!=|\+=|=)"[^"]*"$'
)


def test_udev_rule_is_well_formed() -> None:
    """udevadm 252 has no `verify`: check the grammar we use, and every GOTO has its LABEL."""
    text = shipped_file(UDEV_NAME).read_text()
    labels, gotos = set(), set()
    for ln in text.splitlines():
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        for part in (p.strip() for p in ln.split(", ")):
            assert _UDEV_KEYS.match(part), f"bad udev clause {part!r} in {ln!r}"
            m = re.match(r'(GOTO|LABEL)="([^"]+)"', part)
            if m:
                (gotos if m.group(1) == "GOTO" else labels).add(m.group(2))
    assert gotos and gotos <= labels
    for vid in ("0403", "10c4", "1a86", "067b"):
        assert f'ENV{{ID_VENDOR_ID}}=="{vid}"' in text
    assert 'GROUP="dialout", MODE="0660"' in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_installed_unit_verifies(root: Path) -> None:
    exe = shutil.which("edgeagent")
    if exe is None:
        pytest.skip("edgeagent command not on PATH (pip install -e .)")
    install(root, exe=str(Path(exe).resolve()))
    unit = root / "etc/systemd/system/edgeagent.service"
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


@pytest.mark.parametrize("name", ["edgeagent.service", "edgeagent.example.toml", UDEV_NAME])
def test_shipped_files_come_from_package_data(name: str) -> None:
    """edgeagent/data/ links to systemd/: a wheel (package-data "data/*") carries the content."""
    path = shipped_file(name)
    assert path.parent.name == "data" and path.parent.parent.name == "edgeagent"
    repo = Path(__file__).resolve().parents[1]
    assert path.read_bytes() == (repo / "systemd" / name).read_bytes()


def test_install_warns_when_execstart_lies_under_a_hidden_home(root: Path) -> None:
    """ProtectHome=yes with DynamicUser=yes hides /root and /home from the service."""
    rep = install(root, exe="/root/.venv/bin/edgeagent")
    warnings = [a for a in rep.actions if a.status == "warning"]
    assert rep.ok and len(warnings) == 1 and "ProtectHome=yes" in warnings[0].detail
    assert "203/EXEC" in warnings[0].detail
    assert not [a for a in install(root, exe=EXE).actions if a.status == "warning"]
    res = runner.invoke(app, ["service", "install", "--root", str(root), "--exe",
                              "/home/pi/.local/bin/edgeagent"])  # fmt: skip
    assert res.exit_code == 0 and "warning" in res.output and "/home/pi" in res.output


def test_missing_config_names_an_example_that_exists(tmp_path: Path) -> None:
    from edgeagent.errors import ConfigError
    from edgeagent.ops.config import EXAMPLE_CONFIG, load_config

    assert EXAMPLE_CONFIG.is_file()  # inside the package: present in a pip install too
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "none.toml")
    assert str(EXAMPLE_CONFIG) in err.value.problem


def test_example_config_names_the_files_pki_writes(tmp_path: Path) -> None:
    import tomllib

    from edgeagent.ops.config import EXAMPLE_CONFIG
    from edgeagent.ops.pki import Pki

    fed = tomllib.loads(EXAMPLE_CONFIG.read_text())["federation"]
    box = tomllib.loads(EXAMPLE_CONFIG.read_text())["agent"]["box_id"]
    pki = Pki.init(tmp_path / "pki")
    files = pki.issue(box)
    issued = {files.ca.relative_to(pki.root), files.cert.relative_to(pki.root),
              files.key.relative_to(pki.root)}  # fmt: skip
    named = {Path(fed[k]).relative_to("/etc/edgeagent/pki") for k in
             ("ca_file", "cert_file", "key_file")}  # fmt: skip
    assert named == issued


def test_cli_install_with_a_config_installs_it_and_its_state_dir(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-c`` as on every verb: the config is validated, installed, and its state_dir made;
    a state_dir the unit cannot write is a warning that says what to change."""
    monkeypatch.delenv("EDGEAGENT_CONFIG", raising=False)
    cfg = tmp_path / "box.toml"
    cfg.write_text('[agent]\nbox_id = "box-7"\nstate_dir = "/srv/edgeagent"\n')
    res = runner.invoke(
        app, ["service", "install", "--root", str(root), "--exe", EXE, "-c", str(cfg), "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert (root / "etc/edgeagent/config.toml").read_text() == cfg.read_text()
    assert (root / "srv/edgeagent").is_dir()
    warn = [a for a in doc["actions"] if a["status"] == "warning"]
    assert any("ReadWritePaths=/srv/edgeagent" in a["detail"] for a in warn), warn
    # uninstall --purge with the same config deletes that state directory too
    res = runner.invoke(app, ["service", "uninstall", "--root", str(root), "--purge"])
    assert res.exit_code == 0, res.output
    assert not (root / "srv/edgeagent").exists()
    assert not (root / "etc/edgeagent").exists()


def test_cli_install_refuses_an_invalid_config(root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[agent]\nbox_id = "box 7"\n')
    res = runner.invoke(app, ["service", "install", "--root", str(root), "-c", str(cfg), "--json"])
    assert res.exit_code == 2
    assert json.loads(res.output)["ok"] is False
    assert not (root / "etc/edgeagent").exists()
