"""Where the real ECG records live for tests: ``<repo>/../shared/real-ecg/`` (CI's layout).

CI runs in a fresh clone with a copy of ``shared/`` beside it; a checkout
that carries ``shared/`` inside the repository works too. Tests that need a
record call ``record_path`` and are skipped, saying why, only when the
directory is absent; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (ROOT.parent / "shared" / "real-ecg", ROOT / "shared" / "real-ecg")
REAL_ECG: Path | None = next((p for p in CANDIDATES if (p / "100.hea").is_file()), None)


def record_path(name: str) -> Path:
    """``<real-ecg>/<name>`` (a record base name, no extension), or skip the test."""
    if REAL_ECG is None:
        pytest.skip(f"real ECG records not found (looked in {', '.join(map(str, CANDIDATES))})")
    return REAL_ECG / name
