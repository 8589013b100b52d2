import json
import os
from pathlib import Path

import pytest

from edgeagent.atomic import write_atomic, write_json_atomic


def test_write_atomic_leaves_old_or_new_never_partial(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    write_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temp left behind
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"


def test_write_atomic_creates_parents_and_applies_mode_before_rename(tmp_path: Path) -> None:
    p = tmp_path / "d" / "f.bin"
    write_atomic(p, b"one", mode=0o600)
    write_atomic(p, b"two", mode=0o640)
    assert p.read_bytes() == b"two"
    assert os.listdir(p.parent) == ["f.bin"]
    assert p.stat().st_mode & 0o777 == 0o640


def test_write_json_atomic_round_trips_sorted(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    write_json_atomic(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    assert p.read_text().index('"a"') < p.read_text().index('"b"')
