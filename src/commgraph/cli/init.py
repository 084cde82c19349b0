"""``commgraph init``: a commented ``site.toml`` from a few questions (each one a flag)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape as esc

from commgraph.cli.group import cli
from commgraph.cli.output import fail, out
from commgraph.phases import Mode
from commgraph.sitefile import SiteAnswers, broker_advice, render_site

_DEFAULTS = SiteAnswers()
_QUESTIONS = (  # (option name, question)
    ("node", "Node name"),
    ("broker", "Where the real broker is (host:port)"),
    ("listen", "Which address the proxy takes (host:port)"),
    ("mode", "Mode (learn, monitor, protect)"),
    ("notify", "Notification URL (Apprise; empty: none)"),
    ("api", "API address (host:port)"),
)


@cli.command()
@click.option("--node", help=f"Node name [{_DEFAULTS.node}].")
@click.option("--broker", help=f"Where the real broker is [{_DEFAULTS.broker}].")
@click.option("--listen", help=f"The address the proxy takes [{_DEFAULTS.listen}].")
@click.option("--mode", type=click.Choice([m.value for m in Mode]), help="Default mode.")
@click.option("--notify", help="Notification URL (Apprise).")
@click.option("--api", help=f"API address [{_DEFAULTS.api}].")
@click.option("--keys/--no-keys", default=None, help="Make the site key pair too.")
@click.option(
    "--out",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("site.toml"),
    show_default=True,
)
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: defaults for what no flag gives.")
def init(path: Path, yes: bool, keys: bool | None, **given: str | None) -> None:
    """Write a commented site.toml, the API token and (if asked) the site keys.

    Questions not answered by a flag are asked on a terminal (never with --yes)."""
    if path.exists():
        fail(f"{path} exists; remove it or pass --out")
    ask = not yes and sys.stdin.isatty()
    answers: dict[str, str] = {}
    for name, question in _QUESTIONS:
        value = given.get(name)
        default = str(getattr(_DEFAULTS, name))
        if value is None and ask:
            value = click.prompt(question, default=default, show_default=True)
        answers[name] = default if value is None else value
    if keys is None:
        keys = ask and click.confirm("Make the site's signing keys", default=False)
    try:
        site = SiteAnswers(
            node=answers["node"],
            broker=answers["broker"],
            listen=answers["listen"],
            mode=Mode(answers["mode"]),
            notify=answers["notify"],
            api=answers["api"],
            keys=keys,
        )
    except ValueError as exc:
        fail(str(exc))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_site(site), encoding="utf-8")
    from commgraph.web.auth import load_or_create

    load_or_create(path.parent / f"{site.node}.db.credentials")
    out.print(f"Wrote {esc(str(path))}; the API token is in {site.node}.db.credentials (0600).")
    if keys:
        from commgraph.signing import write_keypair

        kid = write_keypair(path.parent / "site.key", path.parent / "site.pub")
        out.print(f"Wrote site.key (private) and site.pub; key id {kid}.")
    out.print(esc(broker_advice(site)), highlight=False)
    out.print(f"Then: commgraph check --config {esc(str(path))}", highlight=False)
