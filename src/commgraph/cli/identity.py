"""``identity``: the effective identity rules, and which of them names an address."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape as esc

from commgraph.cli.group import cli, config_option, json_option
from commgraph.cli.output import emit_json, new_table, out
from commgraph.config import Config, load_config
from commgraph.identity import Identity, IdentityRule, describe


def _rules(config_path: Path | None) -> tuple[Config, list[tuple[str, IdentityRule]]]:
    """The config (defaults without a file) and its effective rules, each with its origin."""
    config = load_config(config_path) if config_path else Config()
    own = len(config.identity)
    origins = [
        ("site" if i < own else f"profile {config.identity_profile}", rule)
        for i, rule in enumerate(config.identity_rules())
    ]
    return config, origins


@cli.group("identity")
def identity_group() -> None:
    """Identity rules: how addresses become services and classes."""


@identity_group.command("show")
@config_option
@json_option
def show(config_path: Path | None, as_json: bool) -> None:
    """The effective identity rules in the order they are tried: the site's own
    ([[identity.rules]]) first, then those of its [identity] profile."""
    config, rules = _rules(config_path)
    rows = [
        {"position": i + 1, "origin": origin, "rule": describe(rule)}
        for i, (origin, rule) in enumerate(rules)
    ]
    if as_json:
        emit_json(rows)
        return
    table = new_table(f"Identity rules (profile {config.identity_profile})", ["#", "from", "rule"])
    for row in rows:
        table.add_row(str(row["position"]), str(row["origin"]), esc(str(row["rule"])))
    out.print(table)
    if not rows:
        out.print("No rules: every address is its own identity.")


@identity_group.command("test")
@click.argument("address")
@click.option("--relation", metavar="R", help="The relation ADDRESS is met on, e.g. udp/123.")
@config_option
@json_option
def test(address: str, relation: str | None, config_path: Path | None, as_json: bool) -> None:
    """Which rule names ADDRESS (on --relation R), and what it names it."""
    _, rules = _rules(config_path)
    found = Identity([rule for _, rule in rules]).explain(address, relation=relation)
    if found is None:
        report: dict[str, object] = {
            "address": address,
            "relation": relation,
            "service": address,
            "instance": None,
            "rule": None,
            "position": None,
            "origin": None,
        }
    else:
        index, rule, resolved = found
        report = {
            "address": address,
            "relation": relation,
            "service": resolved.service,
            "instance": resolved.instance,
            "rule": describe(rule),
            "position": index + 1,
            "origin": rules[index][0],
        }
    if as_json:
        emit_json(report)
        return
    on = f" on {esc(relation)}" if relation else ""
    if found is None:
        out.print(f"{esc(address)}{on}: no rule names it; it is its own identity.")
        return
    out.print(
        f"{esc(address)}{on} is [bold]{esc(str(report['service']))}[/]"
        + (f" (instance {esc(str(report['instance']))})" if report["instance"] else "")
        + f": rule {report['position']} ({report['origin']}), {esc(str(report['rule']))}"
    )
