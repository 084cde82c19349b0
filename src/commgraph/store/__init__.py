"""SQLite persistence: the only package that imports sqlite3.

One file per node, WAL mode, ``synchronous=FULL`` so a committed decision survives a power
cut. The schema is versioned with ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS`
(:mod:`.schema`). :mod:`.connection` opens the file and keeps the node's settings,
:mod:`.engine_state` writes and reads the engine's state (as the values of
:mod:`commgraph.state`), :mod:`.listings` reads for people; :class:`Store` is all of them,
plus the audit log and the site models.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commgraph.store.database import Store
    from commgraph.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Store"]

# loaded on first use, so the package's own modules import each other without a circle
_HOMES = {
    "Store": "commgraph.store.database",
    "MIGRATIONS": "commgraph.store.schema",
    "SCHEMA_VERSION": "commgraph.store.schema",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'commgraph.store' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
