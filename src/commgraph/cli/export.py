"""``export``: what a broker (or the network) enforces, from the site's models."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import click

from commgraph.cli.group import (
    Context,
    cli,
    config_option,
    site_config,
    trusted_keys,
    trusted_option,
)
from commgraph.cli.models import warn
from commgraph.cli.output import err, fail, write_text
from commgraph.enforce import EnforceError, http_routes, mosquitto_acl, mosquitto_dynsec, mud
from commgraph.model import (
    ServiceModel,
)
from commgraph.phases import Phase
from commgraph.site_models import enforced_models, own_node


@cli.group("export")
def export_group() -> None:
    """Let the broker (or the network) enforce what the site's models allow.

    The models are this node's views of its services, joined with the kept site models that
    a trusted key signed: learned and approved relationships are allowed, nothing else.
    """


def _site_models(
    ctx: Context, config_path: Path | None, trusted_paths: Sequence[Path]
) -> list[ServiceModel]:
    from commgraph.daemon import engine_for

    config = site_config(ctx, config_path)
    trusted = trusted_keys(config, trusted_paths)
    with ctx.store() as store:
        node = config.node if config else own_node(store)
        engine = engine_for(store, config, node)
        kept = store.models()
    models = enforced_models(
        engine, kept, trusted, node=node, now=time.time(), refused=warn("left out")
    )
    for state in engine.phases.states.values():
        if state.phase is Phase.LEARNING:
            err.print(
                f"warning: {state.service} is still learning: only what it learned so far "
                "is allowed",
                markup=False,
            )
    if not models:
        fail(f"no service models in {ctx.db_path}: nothing has been learned or imported yet")
    return models


def _usernames(pairs: Sequence[str]) -> dict[str, str]:
    names = {}
    for pair in pairs:
        service, sep, username = pair.partition("=")
        if not sep or not service or not username:
            fail(f"--username {pair!r}: expected SERVICE=USERNAME")
        names[service] = username
    return names


_username_option = click.option(
    "--username",
    "username_pairs",
    multiple=True,
    metavar="SERVICE=USER",
    help="The MQTT username a service logs in with (default: the service name); repeatable.",
)


_output_option = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write to this file (default: stdout).",
)


@export_group.command("mosquitto-acl")
@config_option
@trusted_option
@_username_option
@_output_option
@click.pass_obj
def export_mosquitto_acl(
    ctx: Context,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    username_pairs: tuple[str, ...],
    output: Path | None,
) -> None:
    """A Mosquitto acl_file: one user section per service, its allowed topics."""
    models = _site_models(ctx, config_path, trusted_paths)
    try:
        text = mosquitto_acl(models, usernames=_usernames(username_pairs))
    except EnforceError as exc:
        fail(str(exc))
    write_text(text, output, f"the ACL of {len(models)} services")


@export_group.command("mosquitto-dynsec")
@config_option
@trusted_option
@_username_option
@click.option(
    "--base",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An existing dynamic-security config to update (keeps its clients' passwords).",
)
@_output_option
@click.pass_obj
def export_mosquitto_dynsec(
    ctx: Context,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    username_pairs: tuple[str, ...],
    base: Path | None,
    output: Path | None,
) -> None:
    """A Mosquitto dynamic-security plugin config: one role and one client per service."""
    models = _site_models(ctx, config_path, trusted_paths)
    base_config = None
    if base is not None:
        try:
            base_config = json.loads(base.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            fail(f"{base}: not a dynamic-security config ({exc})")
    try:
        config = mosquitto_dynsec(models, usernames=_usernames(username_pairs), base=base_config)
    except EnforceError as exc:
        fail(str(exc))
    write_text(json.dumps(config, indent=2) + "\n", output, "the dynamic-security config")


@export_group.command("http-routes")
@config_option
@trusted_option
@_output_option
@click.pass_obj
def export_http_routes(
    ctx: Context, config_path: Path | None, trusted_paths: tuple[Path, ...], output: Path | None
) -> None:
    """The HTTP allow-list (JSON): per caller its allowed routes, per service its callers."""
    models = _site_models(ctx, config_path, trusted_paths)
    routes = http_routes(models)
    write_text(
        json.dumps(routes, indent=2) + "\n",
        output,
        f"the routes of {len(routes['callers'])} callers",
    )


@export_group.command("mud")
@click.argument("service")
@click.option("--mud-url", required=True, help="Where the MUD file will be served (https://...).")
@click.option("--broker", help="The MQTT broker's name or address (needed for MQTT models).")
@click.option("--systeminfo", help="A short description of the device (60 characters).")
@config_option
@trusted_option
@_output_option
@click.pass_obj
def export_mud(
    ctx: Context,
    service: str,
    mud_url: str,
    broker: str | None,
    systeminfo: str | None,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    output: Path | None,
) -> None:
    """An RFC 8520 MUD file for SERVICE's flow-level model."""
    models = {m.service: m for m in _site_models(ctx, config_path, trusted_paths)}
    model = models.get(service)
    if model is None:
        fail(f"there is no model of {service!r} (see commgraph services, commgraph model show)")
    try:
        document = mud(model, mud_url=mud_url, broker=broker, systeminfo=systeminfo)
    except EnforceError as exc:
        fail(str(exc))
    write_text(json.dumps(document, indent=2) + "\n", output, f"the MUD file of {service}")
