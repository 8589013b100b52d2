"""How values read in human (non-JSON) output: ISO 8601 times, no Python-shaped lists or dicts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


def iso(ts: float | None) -> str:
    """A Unix time as ISO 8601 UTC (``2026-12-07T18:02:15Z``); ``-`` for none."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human(v: Any) -> str:
    """One value as a person reads it: lists joined, mappings as ``k=v``, None as ``-``."""
    if isinstance(v, (list, tuple, set, frozenset)):
        return ", ".join(human(x) for x in v) or "-"
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={human(x)}" for k, x in v.items()) or "-"
    if isinstance(v, float):
        return f"{v:g}"
    return "-" if v is None else str(v)
