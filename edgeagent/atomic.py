"""Atomic file writes: the one helper every writer of state files goes through.

Why one helper: a power cut mid-write must leave either the old file or the
new one, never half of either. That takes a temp file in the same directory,
fsync, rename, then an fsync of the directory so the rename itself survives.
Each copy of that recipe is a chance to forget a step.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(
    path: Path, data: bytes, *, mode: int | None = None, gid: int | None = None
) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new.

    ``mode`` and ``gid`` are applied to the temp file before the rename, so
    the file never exists with looser permissions than asked for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if gid is not None:
            os.chown(tmp, 0, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """``write_atomic`` of ``doc`` as sorted, indented JSON (state files people read)."""
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems refuse O_RDONLY on dirs: then best effort."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
