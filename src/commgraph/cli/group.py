"""The ``commgraph`` group, its context (the database) and the options commands share."""

from __future__ import annotations

import getpass
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from commgraph import __version__
from commgraph.cli.output import err, fail
from commgraph.config import Config, load_config
from commgraph.errors import CommgraphError
from commgraph.signing import PublicKey, load_trusted
from commgraph.store import Store


def default_db() -> Path:
    """``$COMMGRAPH_DB``, else ``$XDG_STATE_HOME/commgraph/commgraph.db`` (~/.local/state)."""
    env = os.environ.get("COMMGRAPH_DB")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "commgraph" / "commgraph.db"


def who_decides() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "owner"
    return f"{user}@{socket.gethostname()}"


class Context:
    def __init__(self, db: Path | None) -> None:
        self.db_path = db or default_db()

    def store(self, *, must_exist: bool = True) -> Store:
        if must_exist and not self.db_path.exists():
            fail(
                f"no database at {self.db_path}: replay some traffic first "
                "(commgraph replay FILE) or pass --db"
            )
        return Store(self.db_path)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Database file (default: $COMMGRAPH_DB, else ~/.local/state/commgraph/commgraph.db).",
)
@click.version_option(__version__, prog_name="commgraph")
@click.pass_context
def cli(ctx: click.Context, db: Path | None) -> None:
    """commgraph learns who talks to whom between the services of an IoT site and asks
    you about anything new."""
    ctx.obj = Context(db)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site configuration (TOML): node name, [keys], templates, database.",
)


trusted_option = click.option(
    "--trusted",
    "trusted_paths",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A trusted public key (PEM, from commgraph keygen); repeatable; adds to [keys] trusted.",
)


def site_config(ctx: Context, config_path: Path | None) -> Config | None:
    """The site configuration if given; its [node] db is used unless --db names another."""
    if config_path is None:
        return None
    config = load_config(config_path)
    if config.db and ctx.db_path == default_db():
        ctx.db_path = config.db
    return config


def trusted_keys(config: Config | None, paths: Sequence[Path]) -> dict[str, PublicKey]:
    """Key id -> public key, from [keys] trusted and --trusted (SigningError naming a file)."""
    return dict(load_trusted([*(config.trusted_keys if config else ()), *paths]))


def read_input(file: Path) -> tuple[bytes, str]:
    """The bytes of FILE (``-``: stdin) without surrounding whitespace, and its name."""
    if str(file) == "-":
        return sys.stdin.buffer.read().strip(), "stdin"
    try:
        return file.read_bytes().strip(), str(file)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: user errors are one line on stderr and exit status 1."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="commgraph",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err.print("commgraph: aborted")
        sys.exit(1)
    except click.ClickException as exc:
        err.print(f"commgraph: error: {exc.format_message()}", markup=False)
        sys.exit(1)
    except CommgraphError as exc:
        err.print(f"commgraph: error: {exc}", markup=False)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)
