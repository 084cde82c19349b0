"""The ``commgraph`` command: one module per command group, and :mod:`.output` for printing.

Contracts (DESIGN.md): ``commgraph [--db PATH] COMMAND``; ``--db`` defaults to
``$COMMGRAPH_DB``, else a file under the user's state directory. Listings take ``--json`` and
then print one JSON array of objects. Exit status 0 on success, 1 on a user error with one
line on stderr, never a traceback for bad input. The commands connect parts and print; what
they compute lives in the part that owns it.

The command modules register themselves on the group when imported; this package imports
them when the group is first asked for, so it does not import its own modules at load time
(no import circle between the package and its modules).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from commgraph.cli.group import Context, cli, default_db

__all__ = ["Context", "cli", "default_db", "main"]

_COMMANDS = (
    "check",
    "decisions",
    "evaluation",
    "export",
    "identity",
    "init",
    "listings",
    "models",
    "run",
)


def _group() -> ModuleType:
    """The group module, with every command registered on it."""
    for name in _COMMANDS:
        import_module(f"commgraph.cli.{name}")
    return import_module("commgraph.cli.group")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point (``commgraph``): user errors are one line on stderr and exit status 1."""
    _group().main(argv)
    raise SystemExit(0)  # group.main always exits; this keeps the promise for type checkers


def __getattr__(name: str) -> Any:
    if name in ("Context", "cli", "default_db"):
        return getattr(_group(), name)
    raise AttributeError(f"module 'commgraph.cli' has no attribute {name!r}")
