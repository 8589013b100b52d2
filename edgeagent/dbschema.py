"""Schema versions of the agent's SQLite stores (``PRAGMA user_version``), migrated forward.

Why: a box updated in the field opens the outbox, alert store and model registry
that the previous release wrote. Each store lists its migrations in order
(``migrations[i]`` takes the file from version ``i`` to ``i + 1``; the first
creates the tables with ``IF NOT EXISTS`` so a file from before versioning,
version 0, comes forward too) and calls :func:`migrate` when it opens. Each step
runs in one transaction with its version bump, so a power cut mid-migration
leaves the previous version, not a half-migrated file. A file newer than the
agent is refused, not guessed at: a downgrade must not corrupt it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from edgeagent.errors import EdgeAgentError


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    db: sqlite3.Connection,
    path: Path | str,
    migrations: Sequence[str],
    error: type[EdgeAgentError] = EdgeAgentError,
) -> int:
    """Bring ``db`` to version ``len(migrations)``; returns the version it was at.

    Raises ``error`` when the file is newer than this agent knows.
    """
    target = len(migrations)
    found = schema_version(db)
    if found > target:
        raise error(
            f"{path} has schema v{found}, newer than this agent (v{target}): "
            "upgrade edgeagent, or move the file aside to start empty"
        )
    for version in range(found, target):
        db.executescript(
            f"BEGIN IMMEDIATE;\n{migrations[version]}\nPRAGMA user_version={version + 1};\nCOMMIT;"
        )
    return found
