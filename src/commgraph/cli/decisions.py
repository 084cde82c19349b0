"""The owner's decisions: ``approve``, ``deny``, ``mode`` and ``learn reset``.

Each is written to the database's audit log. When a node runs on that database, the
command waits until the node has taken it in (within a second); exit status 1, with one
line on stderr, when the node refused it: it stays in the audit log but is not in effect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape as esc

from commgraph.alerts import Action
from commgraph.cli.group import Context, cli, who_decides
from commgraph.cli.output import describe_alert, err, fail, out
from commgraph.phases import Mode
from commgraph.running import wait_applied

APPLY_WAIT = 5.0  # seconds a running node has to take a decision in (it does within one)


def _change(ctx: Context, act: Callable[[Any], Any]) -> Any:
    """Load the engine, apply one owner action, commit it durably before returning.

    When a node runs on the database, wait (up to ``APPLY_WAIT`` seconds) until it has taken
    the decision in. If it refused it (its state moved on: the alert was decided there
    meanwhile, the service is not known there), that is one error line and exit status 1:
    the decision is in the audit log, but not in effect where traffic is judged. If it does
    not answer in time, a warning line (exit status 0: it is recorded and will apply).
    """
    with ctx.store() as store:
        engine = store.load_engine()
        result = act(engine)
        ids = store.write_changes(engine, engine.take_changes())
        applied = wait_applied(store, max(ids), timeout=APPLY_WAIT) if ids else None
    if applied is not None and applied.taken is False:
        fail(
            f"decision {applied.decision} is recorded in {ctx.db_path}, but the node running "
            f"on it (pid {applied.pid}) did not take it: {applied.reason}"
        )
    if applied is not None and applied.taken is None:
        err.print(
            f"warning: decision {applied.decision} is recorded in {ctx.db_path}; the node "
            f"running on it (pid {applied.pid}) has not confirmed it within {APPLY_WAIT:g} s",
            markup=False,
        )
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
    """Approve an alert: the relationship becomes normal.

    Exit status 1 if the node running on the database does not take it in.
    """
    _decide(ctx, alert_id, Action.APPROVE, reason, by)


@cli.command()
@click.argument("alert_id", metavar="ID", type=int)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.option("--by", help="Who decides (default: user@host).")
@click.pass_obj
def deny(ctx: Context, alert_id: int, reason: str, by: str | None) -> None:
    """Deny an alert: the relationship is blocked in protect mode.

    Exit status 1 if the node running on the database does not take it in.
    """
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
