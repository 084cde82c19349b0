"""What the commands print: rich tables, one JSON document, times, and the one-line error."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

from commgraph.alerts import KIND_LABELS, describe_row

out = Console(highlight=False, soft_wrap=True)


err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def emit_json(rows: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
    click.echo(json.dumps(rows, indent=None if isinstance(rows, list) else 2, default=str))


def new_table(title: str, columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, column in enumerate(columns):
        # the first column names the row (a service, an id): it never breaks mid-word
        table.add_column(column, overflow="fold", no_wrap=i == 0)
    return table


def describe_alert(alert: dict[str, Any]) -> str:
    """An alert in words a site owner understands (escaped for rich)."""
    return esc(describe_row(alert))


def print_alerts(alerts: Sequence[dict[str, Any]]) -> None:
    if not alerts:
        return
    table = new_table("Alerts", ["id", "state", "what", "count", "first seen", "last seen"])
    for a in alerts:
        colour = {"pending": "red", "approved": "green", "denied": "bright_black"}[a["state"]]
        table.add_row(
            str(a["id"]),
            f"[{colour}]{a['state']}[/]",
            f"{describe_alert(a)} ({KIND_LABELS.get(a['kind'], a['kind'])})",
            str(a["count"]),
            when(a["first_seen"]),
            when(a["last_seen"]),
        )
    out.print(table)


def write_file(output: Path, data: str | bytes) -> None:
    """Write ``data`` to ``output``; a path that cannot be written is one error line naming it."""
    try:
        if isinstance(data, bytes):
            output.write_bytes(data)
        else:
            output.write_text(data, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")


def make_dir(path: Path) -> None:
    """Create the directory ``path`` (and its parents); else one error line naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create the directory {path}: {exc.strerror or exc}")


def write_text(text: str, output: Path | None, what: str) -> None:
    """``text`` to stdout (no ``output``, or ``-``) or to the file ``output``."""
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    write_file(output, text)
    out.print(f"Wrote {what} to {esc(str(output))}.")


BARS = " ▁▂▃▄▅▆▇█"


def spark(values: Sequence[int]) -> str:
    top = max(values, default=0)
    if top == 0:
        return " " * len(values)
    return "".join(BARS[min(8, -(-v * 8 // top))] for v in values)
