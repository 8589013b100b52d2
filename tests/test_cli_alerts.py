"""``edgeagent alerts``: list, show and export over a real alert store, reading only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.cli.alerts import parse_time
from edgeagent.pipeline.alerts import Alert, AlertStore

_register()
runner = CliRunner()
T0 = parse_time("2026-12-01T08:00:00Z")


def _store(state: Path) -> list[str]:
    store = AlertStore(state)
    ids = []
    for i, (kind, cat) in enumerate([("tachycardia", "clinical"), ("electrode_off", "sensor_fault"),
                                     ("fever", "clinical")]):  # fmt: skip
        a = Alert(patient=f"p{i}", device="d", start=T0 + 3600 * i, end=T0 + 3600 * i + 60,
                  kind=kind, category=cat, score=0.9, modality="ecg", model="v1-abc",
                  detail={"why": i})  # fmt: skip
        ids.append(store.add(a))
    store.close()
    return ids


def test_parse_time_accepts_iso_8601_and_unix_seconds() -> None:
    assert parse_time("2026-12-01T08:00:00Z") == parse_time("2026-12-01T09:00:00+01:00") == T0
    assert parse_time(str(T0)) == T0
    assert parse_time("2026-12-01") == T0 - 8 * 3600


def test_list_show_export_with_a_time_range(tmp_state: Path, tmp_path: Path) -> None:
    ids = _store(tmp_state)
    sd = ["--state-dir", str(tmp_state)]
    res = runner.invoke(app, ["alerts", "list", *sd, "--json"])
    assert res.exit_code == 0, res.output
    assert [r["kind"] for r in json.loads(res.stdout)] == ["tachycardia", "electrode_off", "fever"]
    res = runner.invoke(app, ["alerts", "list", *sd, "--since", "2026-12-01T08:30:00Z",
                              "--until", "2026-12-01T09:30:00Z"])  # fmt: skip
    assert res.exit_code == 0 and "electrode_off" in res.stdout
    assert "tachycardia" not in res.stdout and "fever" not in res.stdout
    assert "2026-12-01T09:00:00Z" in res.stdout  # ISO 8601 out
    res = runner.invoke(app, ["alerts", "show", ids[2][:10], *sd])
    assert res.exit_code == 0 and "fever" in res.stdout and "why=2" in res.stdout
    assert "{" not in res.stdout  # no Python dicts in human output
    out = tmp_path / "a.csv"
    res = runner.invoke(app, ["alerts", "export", *sd, "--format", "csv", "-o", str(out),
                              "--category", "clinical"])  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows] == ["tachycardia", "fever"]
    assert rows[0]["start"] == "2026-12-01T08:00:00Z"
    res = runner.invoke(app, ["alerts", "export", *sd, "--since", "2026-12-01T09:30:00Z"])
    assert [json.loads(line)["kind"] for line in res.stdout.splitlines()] == ["fever"]


def test_errors_and_nothing_created(tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = runner.invoke(app, ["alerts", "list", "--state-dir", str(state), "--json"])
    assert res.exit_code == 2
    assert json.loads(res.stdout)["error"]["type"] == "AlertsError"
    assert not state.exists()
    res = runner.invoke(app, ["alerts", "list", "--state-dir", str(state), "--since", "yesterday"])
    assert res.exit_code == 2 and "ISO 8601" in res.stderr
