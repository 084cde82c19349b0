"""The owner's decisions: ``approve``, ``deny``, ``mode`` and ``learn reset``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape as esc

from commgraph.alerts import Action
from commgraph.cli.group import Context, cli, who_decides
from commgraph.cli.output import describe_alert, out
from commgraph.phases import Mode


def _change(ctx: Context, act: Callable[[Any], Any]) -> Any:
    """Load the engine, apply one owner action, commit it durably before returning."""
    with ctx.store() as store:
        engine = store.load_engine()
        result = act(engine)
        store.write_changes(engine, engine.take_changes())
    return result


def _decide(ctx: Context, alert_id: int, action: Action, reason: str, by: str | None) -> None:
    decision = _change(
        ctx,
        lambda engine: engine.decide(
            alert_id, action, by=by or who_decides(), at=time.time(), reason=reason
        ),
    )
    if decision.edge is None:  # about a service, an address or the site
        out.print(
            f"{_ABOUT_DECIDED[(decision.detail, action)]}".format(
                id=alert_id, who=esc(decision.service or "the site")
            )
        )
        return
    src, dst, relation = decision.edge
    what = describe_alert({"src": src, "dst": dst, "relation": relation})
    if action is Action.APPROVE:
        out.print(f"Approved alert {alert_id}: {what} is normal from now on.")
    else:
        out.print(f"Denied alert {alert_id}: {what} is blocked in protect mode.")


_ABOUT_DECIDED = {
    ("new-service", Action.APPROVE): "Approved alert {id}: {who} is yours; it learns what it does.",
    (
        "new-service",
        Action.DENY,
    ): "Denied alert {id}: {who} is blocked, and refused in protect mode.",
    ("flood", Action.APPROVE): "Approved alert {id}: {who} may send this much.",
    (
        "flood",
        Action.DENY,
    ): "Denied alert {id}: {who} stays at its ceiling (dropped in protect mode).",
    ("edge-burst", Action.APPROVE): "Approved alert {id}: the new edges of {who} are normal.",
    (
        "edge-burst",
        Action.DENY,
    ): "Denied alert {id}: the new edges of {who} are blocked in protect mode.",
    ("auth-failure", Action.APPROVE): "Approved alert {id}: {who} is no longer watched for this.",
    ("auth-failure", Action.DENY): "Denied alert {id}: {who} is refused in protect mode.",
    ("malformed", Action.APPROVE): "Approved alert {id}: {who} is no longer watched for this.",
    ("malformed", Action.DENY): "Denied alert {id}: {who} is refused in protect mode.",
    (
        "connection-flood",
        Action.APPROVE,
    ): "Approved alert {id}: {who} may hold this many connections.",
    ("connection-flood", Action.DENY): "Denied alert {id}: {who} is refused in protect mode.",
}


@cli.command()
@click.argument("alert_id", metavar="ID", type=int)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.option("--by", help="Who decides (default: user@host).")
@click.pass_obj
def approve(ctx: Context, alert_id: int, reason: str, by: str | None) -> None:
    """Approve an alert: the relationship becomes normal."""
    _decide(ctx, alert_id, Action.APPROVE, reason, by)


@cli.command()
@click.argument("alert_id", metavar="ID", type=int)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.option("--by", help="Who decides (default: user@host).")
@click.pass_obj
def deny(ctx: Context, alert_id: int, reason: str, by: str | None) -> None:
    """Deny an alert: the relationship is blocked in protect mode."""
    _decide(ctx, alert_id, Action.DENY, reason, by)


@cli.command()
@click.argument("service")
@click.argument("mode", type=click.Choice([*[m.value for m in Mode], "default"]))
@click.option("--reason", default="")
@click.option("--by", help="Who decides (default: user@host).")
@click.pass_obj
def mode(ctx: Context, service: str, mode: str, reason: str, by: str | None) -> None:
    """Set a service's mode: learn, monitor, protect, or default (the configured one)."""
    chosen = None if mode == "default" else Mode(mode)
    _change(
        ctx,
        lambda engine: engine.set_mode(
            service, chosen, by=by or who_decides(), at=time.time(), reason=reason
        ),
    )
    out.print(f"{esc(service)} is now in {mode} mode.")


@cli.group()
def learn() -> None:
    """Learning phases."""


@learn.command("reset")
@click.argument("service")
@click.option("--reason", default="")
@click.option("--by", help="Who decides (default: user@host).")
@click.pass_obj
def learn_reset(ctx: Context, service: str, reason: str, by: str | None) -> None:
    """Restart a service's learning phase; it starts at the service's next message."""
    _change(
        ctx,
        lambda engine: engine.reset_learning(
            service, by=by or who_decides(), at=time.time(), reason=reason
        ),
    )
    out.print(f"{esc(service)} learns again, starting with its next message.")
