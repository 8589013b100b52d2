"""Put the agent in place on a box: ``edgeagent service install|uninstall``.

What a field engineer would otherwise do by hand from docs/operations.md, done
the same way every time and printed step by step:

* a system user ``edgeagent`` in the ``bluetooth`` and ``dialout`` groups (the
  unit says ``DynamicUser=yes``; systemd uses a static user of that name when
  one exists, so files in the state directory keep one owner across boots and
  an engineer can ``sudo -u edgeagent edgeagent doctor`` with the same rights);
* ``/etc/edgeagent/`` with a config skeleton (never overwritten: it holds the
  box's identity) and ``/var/lib/edgeagent/`` (mode 0700);
* the systemd unit, with ``ExecStart`` pointing at the ``edgeagent`` this
  install runs from (pip puts it in /usr/local/bin or a venv, not /usr/bin);
* a udev rule for the USB-serial adapters we know (group, mode, stable name);
* then ``systemctl daemon-reload`` / ``enable`` and a udev reload -- only on
  the live system.

Every step is idempotent: a second run reports "unchanged" for everything.
``root`` relocates every path (tests and image builders install into a
directory tree); account changes go through an :class:`Accounts` back end, so
a relocated install edits ``<root>/etc/passwd`` and ``<root>/etc/group``
instead of running ``useradd``. ``dry_run`` changes nothing and reports
what would be done ("would run useradd ...").
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from edgeagent.atomic import write_atomic
from edgeagent.errors import InstallError

USER: Final = "edgeagent"
GROUPS: Final = ("bluetooth", "dialout")
UNIT_NAME: Final = "edgeagent.service"
UDEV_NAME: Final = "99-edgeagent-serial.rules"
CONFIG_EXAMPLE: Final = "edgeagent.example.toml"
#: The detector every box starts from (built by ``python -m edgelab.baseline``).
BASELINE_MODEL: Final = "baseline.onnx"
PACKAGED_EXE: Final = "/usr/bin/edgeagent"
# Where things go on the box (joined under ``root``).
UNIT_DIR: Final = Path("etc/systemd/system")
UDEV_DIR: Final = Path("etc/udev/rules.d")
CONFIG_DIR: Final = Path("etc/edgeagent")
STATE_DIR: Final = Path("var/lib/edgeagent")
# Marker in every file we install, so uninstall never removes someone else's file.
MARKER: Final = "edgeagent"
# System accounts live below 1000 on Debian (adduser.conf FIRST/LAST_SYSTEM_UID).
SYSTEM_ID_RANGE: Final = range(100, 1000)


@dataclass(frozen=True)
class Action:
    """One step: ``status`` is done | unchanged | would | skipped | failed."""

    verb: str
    target: str
    status: str
    detail: str = ""

    def line(self) -> str:
        """How the CLI prints it."""
        text = f"{self.status:9} {self.verb:7} {self.target}"
        return f"{text}  ({self.detail})" if self.detail else text


@dataclass
class Report:
    """Everything an install or uninstall did (or would do)."""

    operation: str
    root: Path
    dry_run: bool
    actions: list[Action] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No step failed."""
        return all(a.status != "failed" for a in self.actions)

    @property
    def changed(self) -> bool:
        """Something was (or, in a dry run, would be) changed."""
        return any(a.status in ("done", "would") for a in self.actions)

    def add(self, verb: str, target: str, status: str, detail: str = "") -> None:
        """Record one step."""
        self.actions.append(Action(verb, target, status, detail))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        return {
            "operation": self.operation,
            "root": str(self.root),
            "dry_run": self.dry_run,
            "ok": self.ok,
            "changed": self.changed,
            "actions": [a.__dict__ for a in self.actions],
        }


# ---------------------------------------------------------------------- accounts


class Accounts(Protocol):
    """Users and groups of the target system (live commands or files under a root)."""

    def group_exists(self, name: str) -> bool:
        """Is there such a group."""
        ...

    def user_groups(self, user: str) -> set[str] | None:
        """Supplementary groups of ``user``; None if there is no such user."""
        ...

    def ids(self, user: str) -> tuple[int, int] | None:
        """(uid, primary gid) of ``user``, None if absent."""
        ...

    def add_group(self, name: str) -> str:
        """Create a system group; return what was done (a command line or a file edit)."""
        ...

    def add_user(self, name: str, home: str, groups: Sequence[str]) -> str:
        """Create a system user with its own group, no login shell, in ``groups``."""
        ...

    def add_to_groups(self, user: str, groups: Sequence[str]) -> str:
        """Add ``user`` to ``groups`` (keeping the others)."""
        ...

    def remove_user(self, name: str) -> str:
        """Delete ``user`` and its own group."""
        ...


Runner = Callable[[Sequence[str]], None]


def run_command(argv: Sequence[str]) -> None:
    """Run a system command; a non-zero exit becomes an InstallError with its stderr."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(argv[0], f"cannot run: {e}") from e
    if res.returncode != 0:
        raise InstallError(shlex.join(argv), res.stderr.strip() or f"exit {res.returncode}")


class SystemAccounts:
    """The live system: read with pwd/grp, change with groupadd/useradd/usermod/userdel."""

    def __init__(self, run: Runner = run_command) -> None:
        self._run = run

    def group_exists(self, name: str) -> bool:
        """Is there such a group (via NSS, so LDAP/sssd groups count)."""
        import grp

        try:
            grp.getgrnam(name)
        except KeyError:
            return False
        return True

    def user_groups(self, user: str) -> set[str] | None:
        """Supplementary groups of ``user``."""
        import grp
        import pwd

        try:
            pwd.getpwnam(user)
        except KeyError:
            return None
        return {g.gr_name for g in grp.getgrall() if user in g.gr_mem}

    def ids(self, user: str) -> tuple[int, int] | None:
        """(uid, gid) from NSS."""
        import pwd

        try:
            p = pwd.getpwnam(user)
        except KeyError:
            return None
        return p.pw_uid, p.pw_gid

    def add_group(self, name: str) -> str:
        """``groupadd --system NAME``."""
        argv = ["groupadd", "--system", name]
        self._run(argv)
        return shlex.join(argv)

    def add_user(self, name: str, home: str, groups: Sequence[str]) -> str:
        """``useradd --system --user-group --no-create-home ...``."""
        argv = [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            home,
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "edgeagent wearable-health runtime",
        ]
        if groups:
            argv += ["--groups", ",".join(groups)]
        argv.append(name)
        self._run(argv)
        return shlex.join(argv)

    def add_to_groups(self, user: str, groups: Sequence[str]) -> str:
        """``usermod --append --groups ...``."""
        argv = ["usermod", "--append", "--groups", ",".join(groups), user]
        self._run(argv)
        return shlex.join(argv)

    def remove_user(self, name: str) -> str:
        """``userdel NAME`` (its user group goes with it)."""
        argv = ["userdel", name]
        self._run(argv)
        return shlex.join(argv)


class FileAccounts:
    """``<root>/etc/passwd`` and ``<root>/etc/group`` edited in place (image builds, tests).

    Only the fields useradd would write are written; shadow files are left
    alone (a nologin system user has no password).
    """

    def __init__(self, root: Path) -> None:
        self.passwd = root / "etc" / "passwd"
        self.group = root / "etc" / "group"

    @staticmethod
    def _rows(path: Path) -> list[list[str]]:
        if not path.exists():
            return []
        return [ln.split(":") for ln in path.read_text().splitlines() if ln.strip()]

    @staticmethod
    def _write(path: Path, rows: list[list[str]]) -> None:
        write_atomic(path, "".join(":".join(r) + "\n" for r in rows).encode(), mode=0o644)

    def _free_id(self, rows: list[list[str]], col: int) -> int:
        used = {int(r[col]) for r in rows if len(r) > col and r[col].isdigit()}
        for i in reversed(SYSTEM_ID_RANGE):  # useradd --system counts down from 999
            if i not in used:
                return i
        raise InstallError(str(self.passwd), "no free system id below 1000")

    def group_exists(self, name: str) -> bool:
        """Listed in etc/group."""
        return any(r[0] == name for r in self._rows(self.group))

    def user_groups(self, user: str) -> set[str] | None:
        """Groups whose member list names ``user``."""
        if not any(r[0] == user for r in self._rows(self.passwd)):
            return None
        return {r[0] for r in self._rows(self.group) if len(r) > 3 and user in r[3].split(",")}

    def ids(self, user: str) -> tuple[int, int] | None:
        """(uid, gid) from etc/passwd."""
        for r in self._rows(self.passwd):
            if r[0] == user and len(r) > 3:
                return int(r[2]), int(r[3])
        return None

    def add_group(self, name: str, gid: int | None = None) -> str:
        """Append a group line."""
        rows = self._rows(self.group)
        gid = gid if gid is not None else self._free_id(rows, 2)
        rows.append([name, "x", str(gid), ""])
        self._write(self.group, rows)
        return f"added {name}:x:{gid}: to {self.group}"

    def add_user(self, name: str, home: str, groups: Sequence[str]) -> str:
        """Append the user (uid = gid of its own new group) and its group memberships."""
        users = self._rows(self.passwd)
        grows = self._rows(self.group)
        uid = self._free_id(users + [[r[0], "x", r[2]] for r in grows], 2)
        self.add_group(name, gid=uid)
        users.append([name, "x", str(uid), str(uid), "edgeagent", home, "/usr/sbin/nologin"])
        self._write(self.passwd, users)
        if groups:
            self.add_to_groups(name, groups)
        return f"added {name}:x:{uid}:{uid} to {self.passwd}"

    def add_to_groups(self, user: str, groups: Sequence[str]) -> str:
        """Add ``user`` to the member lists of ``groups``."""
        rows = self._rows(self.group)
        for r in rows:
            while len(r) < 4:
                r.append("")
            members = [m for m in r[3].split(",") if m]
            if r[0] in groups and user not in members:
                r[3] = ",".join([*members, user])
        self._write(self.group, rows)
        return f"added {user} to {','.join(groups)} in {self.group}"

    def remove_user(self, name: str) -> str:
        """Drop the user line, its own group and its memberships."""
        self._write(self.passwd, [r for r in self._rows(self.passwd) if r[0] != name])
        rows = [r for r in self._rows(self.group) if r[0] != name]
        for r in rows:
            if len(r) > 3:
                r[3] = ",".join(m for m in r[3].split(",") if m and m != name)
        self._write(self.group, rows)
        return f"removed {name} from {self.passwd} and {self.group}"


class DryRunAccounts:
    """Reads through another back end, changes nothing, says what it would run."""

    def __init__(self, inner: Accounts, live: bool) -> None:
        self._inner = inner
        self._live = live

    def group_exists(self, name: str) -> bool:
        """Delegated."""
        return self._inner.group_exists(name)

    def user_groups(self, user: str) -> set[str] | None:
        """Delegated."""
        return self._inner.user_groups(user)

    def ids(self, user: str) -> tuple[int, int] | None:
        """Delegated."""
        return self._inner.ids(user)

    def _would(self, argv: list[str]) -> str:
        return "would run " + shlex.join(argv)

    def add_group(self, name: str) -> str:
        """Nothing; the command."""
        return self._would(["groupadd", "--system", name])

    def add_user(self, name: str, home: str, groups: Sequence[str]) -> str:
        """Nothing; the command."""
        argv = ["useradd", "--system", "--user-group", "--home-dir", home]
        argv += ["--shell", "/usr/sbin/nologin", "--groups", ",".join(groups), name]
        return self._would(argv)

    def add_to_groups(self, user: str, groups: Sequence[str]) -> str:
        """Nothing; the command."""
        return self._would(["usermod", "--append", "--groups", ",".join(groups), user])

    def remove_user(self, name: str) -> str:
        """Nothing; the command."""
        return self._would(["userdel", name])


# ---------------------------------------------------------------------- shipped files


def shipped_file(name: str) -> Path:
    """A file we ship (unit, udev rule, config example, baseline model), from the package
    or the source tree."""
    pkg = Path(__file__).resolve().parent.parent
    # edgeagent/data/ holds links to the repo's systemd/ and models/ files; wheels carry
    # their content.
    for cand in (pkg / "data" / name, pkg.parent / "systemd" / name, pkg.parent / "models" / name):
        if cand.is_file():
            return cand
    raise InstallError(name, "not shipped with this installation (reinstall edgeagent)")


def find_executable() -> str:
    """The ``edgeagent`` command this install runs from (what ExecStart must name)."""
    exe = shutil.which("edgeagent")
    return str(Path(exe).resolve()) if exe else PACKAGED_EXE


def unit_text(exe: str) -> str:
    """The shipped unit with ExecStart/ExecStartPre pointing at ``exe``."""
    text = shipped_file(UNIT_NAME).read_text()
    if PACKAGED_EXE + " " not in text:
        raise InstallError(UNIT_NAME, f"does not name {PACKAGED_EXE}; cannot relocate it")
    return text.replace(PACKAGED_EXE + " ", exe + " ")


def exec_start_problem(
    exe: str, unit: str, homes: Sequence[str] = ("/root", "/home")
) -> str | None:
    """Why the unit cannot start ``exe``: with ProtectHome=yes and DynamicUser=yes the
    service sees no home directory, so an ``edgeagent`` installed under one (a pip
    install --user, a venv in /root) fails with status 203/EXEC. None when fine."""
    settings = {
        k.strip(): v.strip()
        for k, _, v in (line.partition("=") for line in unit.splitlines())
        if not k.strip().startswith("#")
    }
    if settings.get("ProtectHome") != "yes" or settings.get("DynamicUser") != "yes":
        return None
    path = Path(exe)
    if not any(path == Path(h) or Path(h) in path.parents for h in homes):
        return None
    return (
        f"ExecStart runs {exe}, under a home directory that ProtectHome=yes hides from the "
        "service (DynamicUser=yes): it would fail with 203/EXEC. Install edgeagent outside "
        "/root and /home (e.g. python3 -m venv /opt/edgeagent && /opt/edgeagent/bin/pip "
        "install edgeagent) and rerun `service install`"
    )


# ---------------------------------------------------------------------- the steps


def _show(root: Path, p: Path) -> str:
    """A path as it is on the box (``/etc/...``), whatever the root."""
    return "/" + str(p.relative_to(root))


class _Installer:
    def __init__(
        self,
        report: Report,
        accounts: Accounts,
        run: Runner,
        live: bool,
    ) -> None:
        self.r = report
        self.root = report.root
        self.dry = report.dry_run
        self.accounts = accounts
        self.run = run
        self.live = live

    def _step(self, verb: str, target: str, fn: Callable[[], str]) -> bool:
        if self.dry:
            self.r.add(verb, target, "would", fn() if verb in ("group", "user") else "")
            return True
        try:
            detail = fn()
        except (OSError, InstallError) as e:
            self.r.add(verb, target, "failed", str(e))
            return False
        self.r.add(verb, target, "done", detail)
        return True

    def ensure_accounts(self, user: str, groups: Sequence[str], home: str) -> None:
        for g in groups:
            if self.accounts.group_exists(g):
                self.r.add("group", g, "unchanged")
            else:
                self._step("group", g, lambda g=g: self.accounts.add_group(g))  # type: ignore[misc]
        have = self.accounts.user_groups(user)
        if have is None:
            self._step("user", user, lambda: self.accounts.add_user(user, home, groups))
            return
        missing = [g for g in groups if g not in have]
        if not missing:
            self.r.add("user", user, "unchanged", "in " + ",".join(groups))
        else:
            self._step("user", user, lambda: self.accounts.add_to_groups(user, missing))

    def _owner(self, owner: str | None) -> tuple[int, int] | None:
        if owner is None:
            return (0, 0)
        ids = self.accounts.ids(owner)
        return ids

    def ensure_dir(self, rel: Path, mode: int, owner: str | None, group_only: bool) -> None:
        p = self.root / rel
        target = _show(self.root, p)
        ids = self._owner(owner)
        want = None if ids is None else ((0, ids[1]) if group_only else ids)
        if p.is_dir():
            st = p.stat()
            same_owner = want is None or not _can_chown() or (st.st_uid, st.st_gid) == want
            if (st.st_mode & 0o7777) == mode and same_owner:
                self.r.add("mkdir", target, "unchanged", f"{mode:04o}")
                return

        def do() -> str:
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, mode)
            if want is not None and _can_chown():
                os.chown(p, *want)
            return f"{mode:04o}" + (f" {want[0]}:{want[1]}" if want and _can_chown() else "")

        self._step("mkdir", target, do)

    def ensure_file(
        self,
        rel: Path,
        content: str,
        mode: int,
        *,
        keep_existing: bool = False,
        group: str | None = None,
    ) -> bool:
        """Write unless identical (or, with keep_existing, unless present). True if changed."""
        p = self.root / rel
        target = _show(self.root, p)
        if p.exists() and (keep_existing or p.read_text() == content):
            why = "kept: edit it in place" if keep_existing else "same content"
            self.r.add("write", target, "unchanged", why)
            return False
        ids = self._owner(group) if group is not None else None

        def do() -> str:
            gid = ids[1] if ids is not None and _can_chown() else None
            write_atomic(p, content.encode(), mode=mode, gid=gid)
            return f"{mode:04o}, {len(content.encode())} bytes"

        return self._step("write", target, do)

    def command(self, argv: list[str], why: str) -> None:
        line = shlex.join(argv)
        if not self.live:
            self.r.add("run", line, "skipped", f"not the live system (--root); {why}")
        elif self.dry:
            self.r.add("run", line, "would", why)
        else:
            self._step("run", line, lambda: (self.run(argv), why)[1])

    def remove(self, rel: Path, *, only_ours: bool = True) -> bool:
        p = self.root / rel
        target = _show(self.root, p)
        if not p.exists():
            self.r.add("remove", target, "unchanged", "absent")
            return False
        if only_ours and p.is_file() and MARKER not in p.read_text(errors="replace")[:400]:
            self.r.add("remove", target, "skipped", "not installed by edgeagent")
            return False

        def do() -> str:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            return ""

        return self._step("remove", target, do)


def _can_chown() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _accounts(root: Path, dry_run: bool, accounts: Accounts | None) -> tuple[Accounts, bool]:
    live = root.resolve() == Path("/")
    base = accounts or (SystemAccounts() if live else FileAccounts(root))
    return (DryRunAccounts(base, live) if dry_run else base), live


def install(
    root: Path = Path("/"),
    *,
    dry_run: bool = False,
    accounts: Accounts | None = None,
    run: Runner = run_command,
    exe: str | None = None,
    user: str = USER,
    groups: Sequence[str] = GROUPS,
    enable: bool = True,
    config_text: str | None = None,
    state_dir: Path | None = None,
) -> Report:
    """Install (or refresh) the agent's system integration under ``root``.

    ``config_text`` (a validated config, ``service install -c``) becomes
    /etc/edgeagent/config.toml, replacing what is there; without it the example is
    written once and an existing config is kept. ``state_dir`` (the config's
    ``agent.state_dir``) is the directory created for state.

    Returns a report of every step; failures are recorded, not raised, so the
    engineer sees everything that went wrong in one run.
    """
    report = Report("install", root, dry_run)
    acc, live = _accounts(root, dry_run, accounts)
    inst = _Installer(report, acc, run, live)
    state_rel = STATE_DIR if state_dir is None else state_dir.relative_to("/")
    if state_rel != STATE_DIR:
        report.add("check", "/" + str(state_rel), "warning", state_dir_problem(state_rel))
    inst.ensure_accounts(user, groups, "/" + str(state_rel))
    inst.ensure_dir(CONFIG_DIR, 0o750, user, group_only=True)
    inst.ensure_dir(state_rel, 0o700, user, group_only=False)
    inst.ensure_file(
        CONFIG_DIR / "config.toml",
        shipped_file(CONFIG_EXAMPLE).read_text() if config_text is None else config_text,
        0o640,
        keep_existing=config_text is None,
        group=user,
    )
    exe = exe or find_executable()
    unit = unit_text(exe)
    problem = exec_start_problem(exe, unit)
    if problem is not None:
        report.add("check", exe, "warning", problem)
    unit_changed = inst.ensure_file(UNIT_DIR / UNIT_NAME, unit, 0o644)
    rule_changed = inst.ensure_file(
        UDEV_DIR / UDEV_NAME, shipped_file(UDEV_NAME).read_text(), 0o644
    )
    if unit_changed:
        inst.command(["systemctl", "daemon-reload"], "load the new unit")
    if enable:
        inst.command(["systemctl", "enable", UNIT_NAME], "start at boot")
    if rule_changed:
        inst.command(["udevadm", "control", "--reload-rules"], "load the new rule")
        inst.command(
            ["udevadm", "trigger", "--subsystem-match=tty", "--action=add"],
            "apply it to adapters already plugged in",
        )
    return report


def state_dir_problem(state_rel: Path) -> str:
    """Why a state directory other than /var/lib/edgeagent needs a change to the unit."""
    return (
        f"agent.state_dir is /{state_rel}, but the unit gives the service "
        f"StateDirectory=edgeagent (/{STATE_DIR}) and ProtectSystem=strict makes every "
        f'other path read-only to it: set state_dir = "/{STATE_DIR}", or add '
        f"ReadWritePaths=/{state_rel} in a drop-in (systemctl edit edgeagent)"
    )


def uninstall(
    root: Path = Path("/"),
    *,
    dry_run: bool = False,
    purge: bool = False,
    accounts: Accounts | None = None,
    run: Runner = run_command,
    user: str = USER,
    state_dir: Path | None = None,
) -> Report:
    """Remove the unit and udev rule; with ``purge`` also config, state and the user.

    Without ``purge`` the box keeps its identity (config, certificates, outbox)
    so a reinstall resumes where it stopped. ``state_dir`` (the config's
    ``agent.state_dir``) is purged as well when it is not the default one.
    """
    report = Report("uninstall", root, dry_run)
    acc, live = _accounts(root, dry_run, accounts)
    inst = _Installer(report, acc, run, live)
    unit = root / UNIT_DIR / UNIT_NAME
    if unit.exists():
        inst.command(["systemctl", "disable", "--now", UNIT_NAME], "stop it and its boot link")
    if inst.remove(UNIT_DIR / UNIT_NAME):
        inst.command(["systemctl", "daemon-reload"], "forget the unit")
    if inst.remove(UDEV_DIR / UDEV_NAME):
        inst.command(["udevadm", "control", "--reload-rules"], "forget the rule")
    states = [STATE_DIR]
    if state_dir is not None and state_dir.relative_to("/") != STATE_DIR:
        states.append(state_dir.relative_to("/"))
    if not purge:
        for rel in (CONFIG_DIR, *states):
            if (root / rel).exists():
                report.add("keep", _show(root, root / rel), "skipped", "use --purge to delete")
        return report
    inst.remove(CONFIG_DIR, only_ours=False)
    for rel in states:
        inst.remove(rel, only_ours=False)
    if acc.user_groups(user) is None:
        report.add("user", user, "unchanged", "absent")
    else:
        inst._step("user", user, lambda: acc.remove_user(user))
    return report
