"""``commgraph check --config site.toml``: validate, then reach every part; one line each."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape as esc

from commgraph.cli.group import cli
from commgraph.cli.output import out
from commgraph.config import load_config
from commgraph.sitefile import check_site


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site configuration to check.",
)
@click.option("--notify", is_flag=True, help="Send a test message to every notify URL.")
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds per part.")
def check(config_path: Path, notify: bool, timeout: float) -> None:
    """Validate a configuration, then reach the broker, the sync broker and (with --notify)
    the notification targets. Exit status 1 if anything failed."""
    config = load_config(config_path)  # a ConfigError is the one line, exit status 1

    async def send(url: str) -> None:
        from commgraph.notify import Message, send_message  # apprise only when asked

        await send_message(url, Message(title="commgraph", text=f"test from {config.node}"))

    findings = check_site(config, notify=send if notify else None, timeout=timeout)
    for finding in findings:
        out.print(esc(finding.line()), highlight=False)
    if not all(f.ok for f in findings):
        raise SystemExit(1)
