"""The ``commgraph`` command: one module per command group, and :mod:`.output` for printing.

Contracts (DESIGN.md): ``commgraph [--db PATH] COMMAND``; ``--db`` defaults to
``$COMMGRAPH_DB``, else a file under the user's state directory. Listings take ``--json`` and
then print one JSON array of objects. Exit status 0 on success, 1 on a user error with one
line on stderr, never a traceback for bad input. The commands connect parts and print; what
they compute lives in the part that owns it.
"""

from __future__ import annotations

from commgraph.cli import decisions, evaluation, export, listings, models, run
from commgraph.cli.group import Context, cli, default_db, main

__all__ = ["Context", "cli", "default_db", "main"]

_COMMANDS = (decisions, evaluation, export, listings, models, run)  # registered on import
