"""One entry point for recordings on disk, and ``edgeagent import`` into a recording directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeagent.cli import _register, app
from edgeagent.errors import RecordingError
from edgeagent.recording import read_recording
from edgeagent.sources.records import open_recording, recording_kind, write_recording
from edgeagent.streams import Stream
from tests.real_ecg import record_path

pytest.importorskip("wfdb", reason="the formats extra (wfdb) is not installed")


def test_kind_is_told_from_the_path(tmp_path: Path) -> None:
    assert recording_kind(record_path("100")) == "wfdb"
    assert recording_kind(str(record_path("100")) + ".hea") == "wfdb"
    assert recording_kind(tmp_path) == "csv"
    edf = tmp_path / "x.bin"
    edf.write_bytes(b"0       " + b" " * 248)
    assert recording_kind(edf) == "edf"  # by magic, whatever the name
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(RecordingError, match=r"notes\.txt: not a recording"):
        recording_kind(tmp_path / "notes.txt")
    with pytest.raises(RecordingError, match="no such recording"):
        recording_kind(tmp_path / "absent")


def test_import_round_trip_keeps_samples_beats_and_labels(tmp_path: Path) -> None:
    rec = open_recording(record_path("100"))
    written = write_recording(rec, tmp_path / "r100")
    assert written == {"ecg.csv": 650000, "labels.csv": 0, "beats.csv": 2273}
    back = read_recording(tmp_path / "r100")
    assert back.streams == (Stream.ECG,) and back.total_rejected == 0
    t0, v0 = rec.data[Stream.ECG]
    t1, v1 = back.data[Stream.ECG]
    np.testing.assert_allclose(t1, t0, atol=1e-9)
    np.testing.assert_allclose(v1, v0, atol=1e-3)
    assert back.beats is not None
    np.testing.assert_allclose(back.beats.t, rec.beats.t, atol=1e-6)
    assert back.beats.aami.tolist() == rec.beats.aami.tolist()
    meta = json.loads((tmp_path / "r100" / "meta.json").read_text())
    assert meta["lead"] == "MLII" and meta["format"] == "wfdb" and meta["rate_hz"] == 360.0
    with pytest.raises(RecordingError, match="not empty"):
        write_recording(rec, tmp_path / "r100")


def test_lead_option_on_a_csv_directory_is_noted(tmp_path: Path) -> None:
    (tmp_path / "ecg.csv").write_text("t,uv\n0,1\n0.004,2\n")
    rec = open_recording(tmp_path, lead="II")
    assert any("apply to WFDB and EDF" in n for n in rec.notes)


def test_cli_import(tmp_path: Path) -> None:
    _register()
    r = CliRunner()
    res = r.invoke(app, ["import", str(record_path("v102s")), str(tmp_path / "v"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["lead"] == "II" and out["rate_hz"] == 250.0 and out["files"]["ecg.csv"] == 74997
    assert "invalid samples" in res.stderr  # three NaN samples of the record, dropped and said
    res = r.invoke(app, ["import", str(record_path("100")), str(tmp_path / "c"), "--lead", "V5"])
    assert res.exit_code == 0, res.output
    assert "lead V5" in res.stdout and "N 2239, S 33, V 1" in res.stdout
    assert (tmp_path / "c" / "beats.csv").read_text().startswith("t,symbol,aami\n")
    res = r.invoke(app, ["import", str(record_path("100")), str(tmp_path / "c")])
    assert res.exit_code == 2 and "not empty" in res.stderr
    res = r.invoke(app, ["import", str(record_path("100")), str(tmp_path / "d"), "--lead", "X9"])
    assert res.exit_code == 2 and "no lead 'X9'" in res.stderr


def test_record_readers_load_wfdb_only_when_a_record_is_read() -> None:
    """The verbs and readers import wfdb/pyedflib lazily: a box without the extra starts."""
    code = (
        "import sys, json\n"
        "sys.argv = ['edgeagent', 'import', '--help']\n"
        "import edgeagent.sources.records, edgeagent.evaluate\n"
        "from edgeagent import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & {"wfdb", "pyedflib", "pandas", "matplotlib"}, loaded
