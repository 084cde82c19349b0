"""Listings of what a database holds: status, services, edges, alerts, decisions, timeline,
graph."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape as esc

from commgraph.cli.group import Context, cli, json_option
from commgraph.cli.output import emit_json, new_table, out, print_alerts, spark, when, write_file
from commgraph.config import format_duration
from commgraph.export import to_dot, to_graphml, to_json


@cli.command()
@json_option
@click.pass_obj
def status(ctx: Context, as_json: bool) -> None:
    """What the database holds: services, edges by label, alerts by state."""
    with ctx.store() as store:
        info = store.status()
    if as_json:
        emit_json(info)
        return
    labels = info["edges_by_label"]
    states = info["alerts_by_state"]
    out.print(f"[bold]{esc(info['db'])}[/] (schema {info['schema']})")
    out.print(
        f"{info['events']:,} events from {when(info['first_event'])} to {when(info['last_event'])}"
    )
    out.print(
        f"{info['services']} services ({info['services_learning']} learning), "
        f"{info['vertices']} vertices, {info['edges']} edges: "
        + ", ".join(f"{n} {label}" for label, n in labels.items())
    )
    out.print(
        "alerts: "
        + ", ".join(f"{n} {state}" for state, n in states.items())
        + f"; {info['decisions']} decisions in the audit log"
    )


@cli.command()
@json_option
@click.pass_obj
def services(ctx: Context, as_json: bool) -> None:
    """Services with their learning phase and mode (who set it and when; with [modes]
    promote_after, when a monitored service will be protected: promote_at), and the node
    whose model a service adopted instead of learning (model_from)."""
    with ctx.store() as store:
        rows = store.services()
    if as_json:
        emit_json(rows)
        return
    table = new_table(
        "Services", ["name", "phase", "mode", "learning ends", "events", "edges", "pending"]
    )
    for r in rows:
        phase = "[yellow]learning[/]" if r["phase"] == "learning" else r["phase"]
        if r.get("model_from"):
            phase += f" (model from {esc(r['model_from'])})"
        ends = (
            "at next event"
            if r["phase"] == "learning" and r["learning_ends_at"] is None
            else when(r["learning_ends_at"])
        )
        mode = f"{r['mode']} ({r['mode_source']})"
        if r["mode_set_by"] and r["mode_source"] in ("owner", "promoted"):
            mode = f"{r['mode']} (by {esc(r['mode_set_by'])}, {when(r['mode_set_at'])})"
        if r["promote_at"] is not None:
            mode += f", protect on {when(r['promote_at'])}"
        elif r["promotion"] == "waiting":
            mode += ", protect once nothing is open"
        table.add_row(
            esc(r["name"]),
            phase,
            mode,
            ends,
            f"{r['events']:,}",
            str(r["edges"]),
            f"[red]{r['pending_alerts']}[/]" if r["pending_alerts"] else "0",
        )
    out.print(table)


@cli.command()
@click.option("--service", help="Only edges from or to this service.")
@click.option("--label", type=click.Choice(["learned", "approved", "pending", "denied"]))
@json_option
@click.pass_obj
def edges(ctx: Context, service: str | None, label: str | None, as_json: bool) -> None:
    """Edges of the communication graph with their statistics."""
    with ctx.store() as store:
        rows = store.edges(service=service, label=label)
    if as_json:
        emit_json(rows)
        return
    table = new_table(
        "Edges",
        ["src", "relation", "dst", "label", "count", "period", "per min", "size", "last seen"],
    )
    colours = {"pending": "red", "denied": "bright_black", "approved": "green"}
    for r in rows:
        period, jitter = r["period_s"], r["jitter_s"]
        size = "-" if r["size_min"] is None else f"{r['size_min']}-{r['size_max']} B"
        table.add_row(
            esc(r["src"]),
            esc(r["relation"]),
            esc(r["dst"]),
            f"[{colours.get(r['label'], 'default')}]{r['label']}[/]",
            f"{r['count']:,}",
            "-" if period is None else f"{format_duration(period)} ±{jitter:.2g}s",
            "-" if r["rate_per_min"] is None else f"{r['rate_per_min']:.3g}",
            size,
            when(r["last_seen"]),
        )
    out.print(table)


@cli.command()
@click.option("--state", type=click.Choice(["pending", "approved", "denied"]))
@click.option(
    "--limit", type=click.IntRange(min=1), help="Only the first N (by id: the oldest); default all."
)
@json_option
@click.pass_obj
def alerts(ctx: Context, state: str | None, limit: int | None, as_json: bool) -> None:
    """Anomalies found: pending ones wait for your approve or deny."""
    with ctx.store() as store:
        rows = store.alerts(state=state, limit=limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out.print("No alerts" + (f" in state {state}." if state else "."))
        return
    print_alerts(rows)


@cli.command()
@json_option
@click.pass_obj
def decisions(ctx: Context, as_json: bool) -> None:
    """The audit log: every approve, deny, mode change and learning reset."""
    with ctx.store() as store:
        rows = store.decisions()
    if as_json:
        emit_json(rows)
        return
    table = new_table("Decisions", ["id", "when", "who", "action", "about", "reason"])
    for r in rows:
        about = (
            f"alert {r['alert']}: {r['src']} {r['relation']} {r['dst']}"
            if r["alert"]
            else f"{r['service']} {r['detail']}".strip()
        )
        table.add_row(
            str(r["id"]), when(r["at"]), esc(r["by"]), r["action"], esc(about), esc(r["reason"])
        )
    out.print(table)


@cli.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dot", "graphml", "json"]),
    default="dot",
    show_default=True,
)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file."
)
@click.pass_obj
def graph(ctx: Context, fmt: str, output: Path | None) -> None:
    """The communication graph (render DOT with: dot -Tsvg -o graph.svg)."""
    with ctx.store() as store:
        vertices, edge_rows = store.vertices(), store.edges()
    text = {"dot": to_dot, "graphml": to_graphml, "json": to_json}[fmt](vertices, edge_rows)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_file(output, text)
        out.print(
            f"Wrote {len(vertices)} vertices and {len(edge_rows)} edges to {esc(str(output))}"
        )


@cli.command()
@json_option
@click.pass_obj
def timeline(ctx: Context, as_json: bool) -> None:
    """How the graph changed over time, minute by minute (the paper's figure)."""
    with ctx.store() as store:
        rows = store.timeline()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out.print("The timeline is empty: replay some traffic first.")
        return
    table = new_table(
        "Graph changes over time",
        [
            "minute",
            "vertices",
            "services",
            "learning",
            "edges",
            "learned",
            "anomalies",
            "decisions",
        ],
    )
    for r in rows:
        table.add_row(
            when(r["ts"])[:-3],
            str(r["vertices"]),
            str(r["services"]),
            str(r["learning"]),
            str(r["edges"]),
            f"+{r['learned']}" if r["learned"] else "",
            f"[red]{r['anomalies']}[/]" if r["anomalies"] else "",
            str(r["decisions"]) if r["decisions"] else "",
        )
    out.print(table)
    out.print(f"edges     {spark([r['edges'] for r in rows])}")
    out.print(f"learned   {spark([r['learned'] for r in rows])}")
    out.print(f"anomalies [red]{spark([r['anomalies'] for r in rows])}[/]")
