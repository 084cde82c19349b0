"""The ``commgraph`` command.

Contracts (DESIGN.md): ``commgraph [--db PATH] COMMAND``; ``--db`` defaults to
``$COMMGRAPH_DB``, else a file under the user's state directory. Listings take ``--json`` and
then print one JSON array of objects. Exit status 0 on success, 1 on a user error with one
line on stderr, never a traceback for bad input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape as esc
from rich.table import Table

from commgraph import __version__
from commgraph.alerts import Action, Decision, describe_row
from commgraph.config import Config, format_duration, load_config, parse_duration
from commgraph.enforce import EnforceError, mosquitto_acl, mosquitto_dynsec, mud
from commgraph.engine import Engine
from commgraph.errors import CommgraphError
from commgraph.evaluate import EvalResult, LabelledFlow
from commgraph.events import Event, VertexKind, iter_event_lines
from commgraph.export import to_dot, to_graphml, to_json
from commgraph.identity import Identity
from commgraph.model import (
    ModelError,
    ServiceModel,
    SignedModel,
    canonical_json,
    diff,
    open_model,
    parse_model,
    read_envelope,
    sign_model,
)
from commgraph.phases import LearningSettings, Mode, Phase
from commgraph.signing import PublicKey, key_id, load_private, load_trusted, public_pem
from commgraph.store import Store
from commgraph.templates import Templates

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def default_db() -> Path:
    """``$COMMGRAPH_DB``, else ``$XDG_STATE_HOME/commgraph/commgraph.db`` (~/.local/state)."""
    env = os.environ.get("COMMGRAPH_DB")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "commgraph" / "commgraph.db"


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _emit_json(rows: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
    click.echo(json.dumps(rows, indent=None if isinstance(rows, list) else 2, default=str))


def _who() -> str:
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
            _fail(
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


# -- replay -------------------------------------------------------------------------------


def _settings(
    store: Store,
    config: Config | None,
    learning: str | None,
    min_events: int | None,
    mode: str | None,
) -> LearningSettings:
    base = config.learning if config else (store.settings() or LearningSettings())
    changes: dict[str, Any] = {}
    if learning is not None:
        try:
            changes["duration"] = parse_duration(learning)
        except ValueError as exc:
            _fail(f"--learning: {exc}")
    if min_events is not None:
        changes["min_events"] = min_events
    if mode is not None:
        changes["mode"] = Mode(mode)
    if not changes:
        return base
    return LearningSettings(
        duration=changes.get("duration", base.duration),
        durations=base.durations,
        min_events=changes.get("min_events", base.min_events),
        mode=changes.get("mode", base.mode),
        modes=base.modes,
        block_pending=base.block_pending,
    )


def _engine_for(
    store: Store,
    config: Config | None,
    node: str | None,
    settings: LearningSettings | None = None,
) -> Engine:
    """The engine a database holds, with the site config's identity rules, templates and
    detectors when there is one (as a running node of that config has them)."""
    if config is None:
        return store.load_engine(settings, node=node)
    return store.load_engine(
        settings or config.learning,
        Identity(config.identity),
        node=node,
        templates=Templates(config.templates, routes=config.route_templates),
        detectors=config.detectors,
        guardrails=config.guardrails,
    )


class _Progress:
    """A progress bar when stderr is a terminal: over the bytes of ``stream`` when there is
    one, else over ``total`` records (a count, with no end, when the total is unknown)."""

    def __init__(self, stream: IO[bytes] | None, total: int | None, unit: str = "lines") -> None:
        self.stream, self.total, self.unit = stream, total, unit
        self.bar: Any = None
        self.task: Any = None
        if err.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            by_bytes = stream is not None and total is not None
            columns: list[Any] = [SpinnerColumn(), TextColumn("replaying")]
            if by_bytes:
                columns += [BarColumn(), DownloadColumn()]
            elif total is not None:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns.append(TextColumn(f"{{task.fields[done]:,}} {unit}"))
            if total is not None:
                columns.append(TimeRemainingColumn())
            self.bar = Progress(*columns, console=err, transient=True)
            self.task = self.bar.add_task("replay", total=total, done=0)
            self.bar.start()

    def lines(self) -> Iterator[bytes]:
        assert self.stream is not None
        yield from self.stream

    def __call__(self, position: int) -> None:
        if self.bar is not None:
            completed = self.stream.tell() if self.stream is not None and self.total else position
            self.bar.update(self.task, completed=completed, done=position)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--learning", metavar="DURATION", help="Learning phase per service, e.g. 10m, 1h.")
@click.option("--min-events", type=click.IntRange(min=0), help="Also learn until N events.")
@click.option("--mode", type=click.Choice([m.value for m in Mode]), help="Site default mode.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--node", help="Name of the observing node.")
@click.option("--strict", is_flag=True, help="Stop at the first malformed line.")
@click.option(
    "--mqtt-port",
    "mqtt_ports",
    type=click.IntRange(1, 65535),
    multiple=True,
    help="A capture's TCP port to decode as MQTT (default 1883); repeatable.",
)
@json_option
@click.pass_obj
def replay(
    ctx: Context,
    file: Path,
    learning: str | None,
    min_events: int | None,
    mode: str | None,
    config_path: Path | None,
    node: str | None,
    strict: bool,
    mqtt_ports: tuple[int, ...],
    as_json: bool,
) -> None:
    """Run recorded traffic through the engine, in event time.

    FILE is JSON-lines events (one per line: {"ts": 1700000000.0, "src": "thermo-1", "dst":
    "home/kitchen/temp", "relation": "publish", "size": 12}; - reads them from stdin), a pcap
    or pcapng capture, or a Zeek conn.log (tab-separated or JSON) or IoT-23 CSV; the format
    is told from the first bytes. The database keeps what was learned: a second replay
    continues where the first stopped. With --config, the kept service models its [keys]
    trusted keys vouch for are adopted, as by a running node.
    """
    from commgraph.adapters.recorded import open_recording
    from commgraph.daemon import replay_records

    config = load_config(config_path) if config_path else None
    if config and config.db and ctx.db_path == default_db():
        ctx.db_path = config.db
    with ctx.store(must_exist=False) as store:
        settings = _settings(store, config, learning, min_events, mode)
        store.save_settings(settings)
        engine = _engine_for(store, config, node or (config.node if config else None), settings)
        if config and config.trusted_keys:
            # as the live node does: services with a trusted kept model adopt it
            _adopt_kept(engine, store.models(), load_trusted(config.trusted_keys), "ignored")
        before = len(engine.alerts.by_id)
        if str(file) == "-":
            progress = _Progress(None, None)
            records: Iterable[tuple[int, Any]] = iter_event_lines(sys.stdin.buffer)
            recording = None
        else:
            try:
                recording = open_recording(
                    file,
                    on_dns=lambda answer: engine.learn_name(answer.ip, answer.name),
                    mqtt_ports=frozenset(mqtt_ports or (1883,)),
                )
            except OSError as exc:
                _fail(f"cannot read {file}: {exc.strerror or exc}")
            records = recording.records
            if recording.stream is not None:
                progress = _Progress(recording.stream, file.stat().st_size, recording.unit)
            else:
                progress = _Progress(None, recording.total, recording.unit)
        try:
            summary = replay_records(records, engine, store, strict=strict, progress=progress)
        finally:
            progress.close()
            if recording is not None:
                recording.close()
        pending = store.alerts(state="pending", limit=10)
        waiting = store.count_alerts("pending")
        report = {
            "file": str(file),
            "format": recording.format.value if recording is not None else "events",
            "events": summary.events,
            "skipped": summary.skipped,
            "seconds": round(summary.seconds, 3),
            "events_per_s": round(summary.events_per_s),
            "services": len(engine.phases.states),
            "edges": engine.graph.edge_count,
            "new_alerts": len(engine.alerts.by_id) - before,
            "pending_alerts": waiting,
            "first_event": summary.first_ts,
            "last_event": summary.last_ts,
            "errors": [str(e) for e in summary.errors],
        }
    if as_json:
        _emit_json(report)
        return
    for error in summary.errors:
        err.print(f"[yellow]skipped[/] {esc(str(file))}: {esc(str(error))}")
    if summary.skipped > len(summary.errors):
        err.print(f"[yellow]... and {summary.skipped - len(summary.errors)} more skipped lines[/]")
    out.print(
        f"Replayed [bold]{summary.events:,}[/] events "
        f"({_when(summary.first_ts)} to {_when(summary.last_ts)}) "
        f"in {summary.seconds:.2f} s ({summary.events_per_s:,.0f} events/s)"
        + (f", skipped {summary.skipped} malformed lines" if summary.skipped else "")
    )
    out.print(
        f"{report['services']} services, {report['edges']} edges, "
        f"{report['new_alerts']} new alerts; {waiting} waiting for you."
    )
    _print_alerts(pending)
    if pending:
        out.print(
            f"\nApprove one with [bold]commgraph --db {esc(str(ctx.db_path))} approve ID[/], "
            f"block it with [bold]deny ID[/]."
        )


# -- the live node ------------------------------------------------------------------------


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site configuration (TOML).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every decision applied and more.")
@click.pass_obj
def run(ctx: Context, config_path: Path, verbose: bool) -> None:
    """Run this node: the MQTT proxy in front of the broker and/or a passive capture on an
    interface ([capture]), learning, alerting and (the proxy) enforcing.

    Stops cleanly on Ctrl-C or SIGTERM, writing the statistics it holds.
    """
    import logging

    from commgraph.daemon import run_daemon

    config = load_config(config_path)
    if config.mqtt.upstream is None and config.capture is None and not config.http.routes:
        _fail(
            f"{config_path}: nothing to observe: set [mqtt] listen and upstream (the proxy), "
            "[[http.routes]] (HTTP sidecars), or [capture] interface (passive)"
        )
    if config.db and ctx.db_path == default_db():
        ctx.db_path = config.db
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        run_daemon(config, ctx.db_path)
    except OSError as exc:  # e.g. the listen port is taken
        _fail(f"cannot start the proxy: {exc.strerror or exc}")
    except CommgraphError as exc:  # e.g. capture without CAP_NET_RAW
        _fail(str(exc))


# -- listings -----------------------------------------------------------------------------


def _table(title: str, columns: Sequence[str]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, column in enumerate(columns):
        # the first column names the row (a service, an id): it never breaks mid-word
        table.add_column(column, overflow="fold", no_wrap=i == 0)
    return table


def _describe(alert: dict[str, Any]) -> str:
    """An alert in words a site owner understands (escaped for rich)."""
    return esc(describe_row(alert))


_KIND_WORDS = {
    "new-edge": "new",
    "rate": "far more often than learned",
    "periodicity": "silent for longer than its rhythm",
    "size": "unusual message size",
    "new-service": "waiting for you",
    "flood": "flood",
    "edge-burst": "storm",
    "auth-failure": "brute force?",
    "malformed": "fuzzing?",
    "connection-flood": "connection flood",
}


def _print_alerts(alerts: Sequence[dict[str, Any]]) -> None:
    if not alerts:
        return
    table = _table("Alerts", ["id", "state", "what", "count", "first seen", "last seen"])
    for a in alerts:
        colour = {"pending": "red", "approved": "green", "denied": "bright_black"}[a["state"]]
        table.add_row(
            str(a["id"]),
            f"[{colour}]{a['state']}[/]",
            f"{_describe(a)} ({_KIND_WORDS.get(a['kind'], a['kind'])})",
            str(a["count"]),
            _when(a["first_seen"]),
            _when(a["last_seen"]),
        )
    out.print(table)


@cli.command()
@json_option
@click.pass_obj
def status(ctx: Context, as_json: bool) -> None:
    """What the database holds: services, edges by label, alerts by state."""
    with ctx.store() as store:
        info = store.status()
    if as_json:
        _emit_json(info)
        return
    labels = info["edges_by_label"]
    states = info["alerts_by_state"]
    out.print(f"[bold]{esc(info['db'])}[/] (schema {info['schema']})")
    out.print(
        f"{info['events']:,} events from {_when(info['first_event'])} to "
        f"{_when(info['last_event'])}"
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
    """Services with their learning phase and mode, and the node whose model a service
    adopted instead of learning (model_from)."""
    with ctx.store() as store:
        rows = store.services()
    if as_json:
        _emit_json(rows)
        return
    table = _table(
        "Services", ["name", "phase", "mode", "learning ends", "events", "edges", "pending"]
    )
    for r in rows:
        phase = "[yellow]learning[/]" if r["phase"] == "learning" else r["phase"]
        if r.get("model_from"):
            phase += f" (model from {esc(r['model_from'])})"
        ends = (
            "at next event"
            if r["phase"] == "learning" and r["learning_ends_at"] is None
            else _when(r["learning_ends_at"])
        )
        table.add_row(
            esc(r["name"]),
            phase,
            f"{r['mode']} ({r['mode_source']})",
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
        _emit_json(rows)
        return
    table = _table(
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
            _when(r["last_seen"]),
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
        _emit_json(rows)
        return
    if not rows:
        out.print("No alerts" + (f" in state {state}." if state else "."))
        return
    _print_alerts(rows)


@cli.command()
@json_option
@click.pass_obj
def decisions(ctx: Context, as_json: bool) -> None:
    """The audit log: every approve, deny, mode change and learning reset."""
    with ctx.store() as store:
        rows = store.decisions()
    if as_json:
        _emit_json(rows)
        return
    table = _table("Decisions", ["id", "when", "who", "action", "about", "reason"])
    for r in rows:
        about = (
            f"alert {r['alert']}: {r['src']} {r['relation']} {r['dst']}"
            if r["alert"]
            else f"{r['service']} {r['detail']}".strip()
        )
        table.add_row(
            str(r["id"]), _when(r["at"]), esc(r["by"]), r["action"], esc(about), esc(r["reason"])
        )
    out.print(table)


# -- the owner's actions ------------------------------------------------------------------


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
            alert_id, action, by=by or _who(), at=time.time(), reason=reason
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
    what = _describe({"src": src, "dst": dst, "relation": relation})
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
            service, chosen, by=by or _who(), at=time.time(), reason=reason
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
            service, by=by or _who(), at=time.time(), reason=reason
        ),
    )
    out.print(f"{esc(service)} learns again, starting with its next message.")


# -- keys -----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write NAME.key and NAME.pub.",
)
@click.option("--name", default="site", show_default=True, help="File name of the key pair.")
def keygen(out_dir: Path, name: str) -> None:
    """Make the site's Ed25519 key pair for signing service models.

    The private key (NAME.key, readable by you only) stays on the nodes allowed to issue
    models; NAME.pub goes to every node as a trusted key. Existing files are never replaced.
    """
    from commgraph.signing import write_keypair

    out_dir.mkdir(parents=True, exist_ok=True)
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    kid = write_keypair(private, public)
    out.print(f"Wrote {esc(str(private))} (private, 0600) and {esc(str(public))}; key id {kid}.")
    out.print(
        f'Nodes trust it with \\[keys] trusted = ["{esc(str(public))}"]; issuers also set '
        f'private = "{esc(str(private))}".'
    )


# -- service models -------------------------------------------------------------------------


@cli.group("model")
def model_group() -> None:
    """Service models: what each service may do, signed and shared between the site's nodes.

    A node keeps the models it trusts (its own, the site broker's, imported files) and a
    service with a kept model adopts it instead of learning.
    """


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site configuration (TOML): node name, [keys], templates, database.",
)
_trusted_option = click.option(
    "--trusted",
    "trusted_paths",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A trusted public key (PEM, from commgraph keygen); repeatable; adds to [keys] trusted.",
)
_STATUS_COLOURS = {"verified": "green", "not verified": "yellow"}


def _site_config(ctx: Context, config_path: Path | None) -> Config | None:
    """The site configuration if given; its [node] db is used unless --db names another."""
    if config_path is None:
        return None
    config = load_config(config_path)
    if config.db and ctx.db_path == default_db():
        ctx.db_path = config.db
    return config


def _trusted_keys(config: Config | None, paths: Sequence[Path]) -> dict[str, PublicKey]:
    """Key id -> public key, from [keys] trusted and --trusted (SigningError naming a file)."""
    return dict(load_trusted([*(config.trusted_keys if config else ()), *paths]))


def _read_input(file: Path) -> tuple[bytes, str]:
    """The bytes of FILE (``-``: stdin) without surrounding whitespace, and its name."""
    if str(file) == "-":
        return sys.stdin.buffer.read().strip(), "stdin"
    try:
        return file.read_bytes().strip(), str(file)
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}")


def _unverified(data: bytes) -> tuple[SignedModel, ServiceModel]:
    """The envelope and the model it holds, read without checking the signature (for showing
    and diffing only, never for keeping); raises ModelError."""
    signed = read_envelope(data)
    return signed, parse_model(signed.document)


def _model_file(file: Path) -> ServiceModel:
    data, name = _read_input(file)
    try:
        return _unverified(data)[1]
    except ModelError as exc:
        _fail(f"{name}: not a service model ({exc})")


def _model_view(envelope: bytes, trusted: Mapping[str, PublicKey] | None) -> dict[str, Any]:
    """What an envelope (or bare model document) holds, and its status: "verified" or
    "refused: REASON" against ``trusted``, "not verified" when no key is given."""
    view: dict[str, Any] = {
        "version": None,
        "issued_at": None,
        "key": None,
        "edges": None,
        "status": "refused: malformed" if trusted is not None else "malformed",
        "problem": None,
        "model": None,
    }
    try:
        signed, model = _unverified(envelope)
    except ModelError as exc:
        view["problem"] = str(exc)
        return view
    view.update(
        version=model.version,
        issued_at=model.issued_at,
        key=signed.key_id if signed.signature is not None else None,
        edges=len(model.edges),
        model=json.loads(canonical_json(model)),
        status="not verified",
    )
    if trusted is not None:
        try:
            open_model(envelope, trusted)
        except ModelError as exc:
            view["status"], view["problem"] = f"refused: {exc.reason}", str(exc)
        else:
            view["status"] = "verified"
    return view


def _status_text(status: str) -> str:
    colour = "red" if status.startswith(("refused", "malformed")) else _STATUS_COLOURS[status]
    return f"[{colour}]{esc(status)}[/]"


def _labels_summary(edges: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for edge in edges:
        counts[edge["label"]] = counts.get(edge["label"], 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items()))


def _edges_text(count: int) -> str:
    return "1 edge" if count == 1 else f"{count} edges"


def _print_model_edges(title: str, document: Mapping[str, Any]) -> None:
    colours = {"denied": "red", "approved": "green", "learned": "default", "pending": "yellow"}
    table = _table(title, ["relation", "peer", "direction", "label", "decided at", "decided by"])
    for edge in document["edges"]:
        table.add_row(
            esc(edge["relation"]),
            esc(edge["peer"]),
            edge["direction"],
            f"[{colours.get(edge['label'], 'default')}]{edge['label']}[/]",
            _when(edge["decided_at"]),
            esc(edge["decided_by"] or "-"),
        )
    out.print(table)


def _print_model(row: Mapping[str, Any]) -> None:
    document = row["model"]
    origin = f"file {row['file']}" if row["source"] == "file" else f"kept from {row['source']}"
    out.print(
        f"[bold]{esc(document['service'])}[/] from node {esc(document['node'])}: "
        f"version {document['version']}, issued {_when(document['issued_at'])}, "
        f"{esc(origin)}, key {esc(row['key'] or 'none (unsigned)')}, "
        f"{_status_text(row['status'])}" + (f" ({esc(row['problem'])})" if row["problem"] else "")
    )
    if document["edges"]:
        _print_model_edges(_edges_text(len(document["edges"])).capitalize(), document)
    else:
        out.print("no edges")


@model_group.command("export")
@click.argument("service")
@_config_option
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site's private key to sign with (default: [keys] private of --config).",
)
@_trusted_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the signed model to this file (default: stdout).",
)
@click.pass_obj
def model_export(
    ctx: Context,
    service: str,
    config_path: Path | None,
    key_path: Path | None,
    trusted_paths: tuple[Path, ...],
    output: Path | None,
) -> None:
    """Sign and write this node's current model of SERVICE.

    The model holds what the service learned and the owner decided here, joined with the
    kept site models of it that a trusted key signed (models signed by the signing key
    itself count as trusted). Its version is one above the highest kept one.
    """
    config = _site_config(ctx, config_path)
    key_file = key_path or (config.private_key if config else None)
    if key_file is None:
        _fail(
            "no private key to sign the model with: make the site's key pair with "
            "'commgraph keygen', then pass --key site.key (or set [keys] private in --config)"
        )
    private = load_private(key_file)
    trusted = _trusted_keys(config, trusted_paths)
    own_public = public_pem(private)
    trusted.setdefault(key_id(own_public), own_public)
    with ctx.store() as store:
        node = config.node if config else _own_node(store)
        engine = _engine_for(store, config, node)
        kept = store.models(service)
    vid = engine.graph.vertex(VertexKind.SERVICE, service)
    state = None if vid is None else engine.phases.states.get(vid)
    if state is None:
        _fail(f"there is no service {service!r} in {ctx.db_path} (see commgraph services)")
    highest = 0
    for row in kept:
        with contextlib.suppress(ModelError):
            highest = max(highest, _unverified(row["envelope"])[1].version)
    _adopt_kept(engine, kept, trusted, "left out")
    if state.phase is Phase.LEARNING:
        err.print(
            f"warning: {service} is still learning (until {_when(state.ends_at)}): "
            "the model holds only what it learned so far",
            markup=False,
        )
    now = time.time()
    version = highest + 1
    # model_of joins in the kept models; the issue (node, version, time) is this export's own
    built = engine.model_of(service, node=node, issued_at=now, version=version)
    model = ServiceModel(
        service=service, version=version, node=node, issued_at=now, edges=built.edges
    )
    envelope = sign_model(model, private) + b"\n"
    if output is None or str(output) == "-":
        sys.stdout.buffer.write(envelope)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(envelope)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    out.print(
        f"Wrote the model of {esc(service)} to {esc(str(output))}: version {version}, "
        f"node {esc(node)}, {_edges_text(len(model.edges))}, "
        f"signed with key {key_id(own_public)}."
    )


def _adopt_kept(
    engine: Engine, kept: Sequence[Mapping[str, Any]], trusted: Mapping[str, PublicKey], verb: str
) -> None:
    """Adopt the kept models (``Store.models()`` rows) that a trusted key signed, as a running
    node does when it starts; warn on stderr about each one left out."""
    for row in kept:
        try:
            model = open_model(row["envelope"], trusted)
            if model.service != row["service"]:
                raise ModelError(f"it holds a model of {model.service!r}")
        except ModelError as exc:
            err.print(
                f"warning: {verb} the kept model of {row['service']} from node {row['node']}: "
                f"{exc}",
                markup=False,
            )
            continue
        engine.adopt(model, row["node"])


def _own_node(store: Store) -> str:
    """The name this database's node publishes its own models under, else "node"."""
    own = [row for row in store.models() if row["source"] == "self"]
    if not own:
        return "node"
    return str(max(own, key=lambda row: row["received_at"])["node"])


def _claimed_service(data: bytes) -> str | None:
    """The service a refused document says it describes, for the audit log (if readable)."""
    try:
        return _unverified(data)[1].service
    except ModelError:
        return None


@model_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@_config_option
@_trusted_option
@click.option("--by", help="Who imports (default: user@host).")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.pass_obj
def model_import(
    ctx: Context,
    file: Path,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    by: str | None,
    reason: str,
) -> None:
    """Keep the model in FILE (- for stdin) if a trusted key signed it.

    Kept or refused, the audit log says so. A node running on this database takes a kept
    model in within a second: services of that type seen from then on adopt it instead of
    learning, and its decisions apply to matching edges.
    """
    config = _site_config(ctx, config_path)
    trusted = _trusted_keys(config, trusted_paths)
    if not trusted:
        _fail(
            "no trusted key to check the model with: pass --trusted site.pub "
            "(or set [keys] trusted in --config)"
        )
    data, name = _read_input(file)
    who = by or _who()
    with ctx.store(must_exist=False) as store:
        now = time.time()
        try:
            model = open_model(data, trusted)
        except ModelError as exc:
            store.audit(
                Decision(
                    action=Action.MODEL_REJECTED,
                    by=who,
                    at=now,
                    reason=str(exc),
                    service=_claimed_service(data),
                    detail=f"{exc.reason}; imported from {name}",
                )
            )
            hints = {
                "unknown-key": f"; this node trusts {', '.join(sorted(trusted))}",
                "unsigned": " (commgraph model export signs models)",
            }
            _fail(f"refused the model in {name}: {exc}{hints.get(exc.reason, '')}")
        for row in store.models(model.service):
            if row["node"] != model.node:
                continue
            if row["envelope"] == data:
                out.print(
                    f"The model of {esc(model.service)} from node {esc(model.node)} "
                    f"(version {model.version}) is already kept: nothing to do."
                )
                return
            with contextlib.suppress(ModelError):
                kept = _unverified(row["envelope"])[1]
                if (kept.version, kept.issued_at) > (model.version, model.issued_at):
                    _fail(
                        f"not imported: the model of {model.service} from node {model.node} "
                        f"kept here is newer (version {kept.version}, issued "
                        f"{_when(kept.issued_at)}) than the one in {name} (version "
                        f"{model.version}, issued {_when(model.issued_at)})"
                    )
        store.save_model(model.service, model.node, data, at=now, source="import")
        store.audit(
            Decision(
                action=Action.MODEL_KEPT,
                by=who,
                at=now,
                reason=reason,
                service=model.service,
                detail=f"version {model.version} from node {model.node}; imported from {name}",
            )
        )
    document = json.loads(canonical_json(model))
    signer = read_envelope(data).key_id
    out.print(
        f"Kept the model of [bold]{esc(model.service)}[/] from node {esc(model.node)}: "
        f"version {model.version}, issued {_when(model.issued_at)}, "
        f"{_edges_text(len(model.edges))}"
        + (f" ({_labels_summary(document['edges'])})" if model.edges else "")
        + f", signed with key {esc(signer or '')}."
    )
    if model.edges:
        _print_model_edges("Edges", document)
    out.print(
        f"A node running on {esc(str(ctx.db_path))} takes it in within a second; services "
        f"of that type seen from then on adopt it instead of learning."
    )


@model_group.command("show")
@click.argument("target", metavar="[SERVICE|FILE]", required=False)
@_config_option
@_trusted_option
@json_option
@click.pass_obj
def model_show(
    ctx: Context,
    target: str | None,
    config_path: Path | None,
    trusted_paths: tuple[Path, ...],
    as_json: bool,
) -> None:
    """The kept models, one service's, or the one in a file.

    Without SERVICE, a table of the models this node keeps; with SERVICE, the edges of each
    kept model of it; with FILE (- for stdin), the model in that file. With trusted keys
    (--trusted, [keys] trusted), each says whether it is verified or refused, and why.
    """
    config = _site_config(ctx, config_path)
    trusted = _trusted_keys(config, trusted_paths) or None
    rows: list[dict[str, Any]]
    if target is not None and (target == "-" or Path(target).is_file()):
        data, name = _read_input(Path(target))
        view = _model_view(data, trusted)
        if view["model"] is None:
            _fail(f"{name}: not a service model ({view['problem']})")
        document = view["model"]
        rows = [
            {
                "service": document["service"],
                "node": document["node"],
                "source": "file",
                "file": name,
                "received_at": None,
                **view,
            }
        ]
    else:
        with ctx.store() as store:
            kept = store.models(target)
        rows = [
            {
                "service": row["service"],
                "node": row["node"],
                "source": row["source"],
                "received_at": row["received_at"],
                **_model_view(row["envelope"], trusted),
            }
            for row in kept
        ]
        if target is not None and not rows:
            _fail(
                f"no model of {target!r} is kept in {ctx.db_path}, and there is no file of "
                "that name (see commgraph model show)"
            )
    if as_json:
        _emit_json(rows)
        return
    if target is not None:
        for row in rows:
            if row["model"] is None:
                out.print(
                    f"[bold]{esc(row['service'])}[/] from node {esc(row['node'])}: "
                    f"{_status_text(row['status'])} ({esc(row['problem'] or '')})"
                )
            else:
                _print_model(row)
        return
    if not rows:
        out.print(
            f"No models kept in {esc(str(ctx.db_path))}: a node keeps its own, the site's "
            "(with [sync]) and imported ones (commgraph model import FILE)."
        )
        return
    table = _table(
        "Service models",
        ["service", "node", "source", "version", "edges", "issued at", "key", "status"],
    )
    for row in rows:
        table.add_row(
            esc(row["service"]),
            esc(row["node"]),
            row["source"],
            "-" if row["version"] is None else str(row["version"]),
            "-" if row["edges"] is None else str(row["edges"]),
            _when(row["issued_at"]),
            esc(row["key"] or "unsigned"),
            _status_text(row["status"]),
        )
    out.print(table)


@model_group.command("diff")
@click.argument("a", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.argument("b", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@json_option
def model_diff(a: Path, b: Path, as_json: bool) -> None:
    """What changes from model file A to model file B.

    A and B are signed envelopes or bare model documents (signatures are not checked). Lines:
    + an edge B adds, - one it drops, ~ one whose label or figures change.
    """
    first, second = _model_file(a), _model_file(b)
    if first.service != second.service:
        err.print(
            f"warning: {a} holds a model of {first.service}, {b} one of {second.service}",
            markup=False,
        )
    lines = diff(first, second)
    if as_json:
        _emit_json([{"change": line[0], "what": line[2:], "line": line} for line in lines])
        return
    if not lines:
        out.print("no differences")
        return
    colours = {"+": "green", "-": "red", "~": "yellow"}
    for line in lines:
        out.print(f"[{colours.get(line[0], 'default')}]{esc(line)}[/]")


# -- pictures -----------------------------------------------------------------------------


# -- evaluation ----------------------------------------------------------------------------------


def _labelled_flows(file: Path) -> list[LabelledFlow]:
    """The flows of a recording in time order, with labels where it has them: a Zeek
    conn.log or IoT-23 CSV (labelled), a pcap or JSON-lines events (no labels)."""
    from commgraph.adapters.recorded import Format, open_recording, sniff
    from commgraph.adapters.zeek import flow_fields, flows_in_time_order

    try:
        with file.open("rb") as probe:
            kind = sniff(probe.read(4096))
        if kind is Format.CONNLOG:
            records, errors = flows_in_time_order(file)
            skipped = [str(error) for error in errors]
            flows: list[LabelledFlow] = [
                (*fields, record.label)
                for fields, record in zip(flow_fields(records), records, strict=True)
            ]
        else:
            flows, skipped = [], []
            with open_recording(file, format=kind) as recording:
                for _, item in recording.records:
                    if isinstance(item, tuple):
                        flows.append((*item, None))
                    elif isinstance(item, Event):
                        flows.append((item.ts, item.src, item.dst, item.relation, item.size, None))
                    else:
                        skipped.append(str(item))
            flows.sort(key=lambda flow: flow[0])
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror or exc}")
    for problem in skipped[:5]:
        err.print(f"warning: {file}: skipped {problem}", markup=False)
    if len(skipped) > 5:
        err.print(f"warning: {file}: {len(skipped) - 5} more bad records skipped", markup=False)
    if not flows:
        _fail(f"{file}: no flows found (expected a conn.log, IoT-23 CSV, pcap or JSON lines)")
    return flows


def _durations(text: str, option: str) -> list[float]:
    try:
        return [parse_duration(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        _fail(f"{option}: {exc}")


def _eval_table(results: Sequence[EvalResult]) -> Table:
    table = _table(
        "Evaluation",
        [
            "learning",
            "flows",
            "malicious flagged",
            "benign flagged",
            "alerts",
            "alerts/day",
            "first detection after",
        ],
    )
    for r in results:
        delay = "-" if r.detection_delay_s is None else format_duration(r.detection_delay_s)
        table.add_row(
            format_duration(r.learning_s),
            str(r.flows),
            f"{r.malicious_flagged}/{r.malicious_flows}",
            f"{r.benign_flagged}/{r.benign_flows}",
            str(r.alerts),
            "-" if r.alerts_per_day is None else f"{r.alerts_per_day:.1f}",
            delay,
        )
    return table


@cli.command("eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--learning", metavar="DURATION", default="1h", show_default=True, help="Learning phase."
)
@click.option("--sweep", metavar="D1,D2,...", help="Several learning phases, e.g. 5m,15m,1h,4h.")
@click.option("--min-events", type=click.IntRange(min=0), default=0, help="Also learn N events.")
@_config_option
@click.option(
    "--timeline",
    "timeline_png",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the graph over time to this PNG (needs commgraph[eval]).",
)
@click.option(
    "--plot",
    "plot_png",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw owner interactions against the learning phase to this PNG (with --sweep).",
)
@json_option
def eval_command(
    file: Path,
    learning: str,
    sweep: str | None,
    min_events: int,
    config_path: Path | None,
    timeline_png: Path | None,
    plot_png: Path | None,
    as_json: bool,
) -> None:
    """How well anomalies are found in labelled traffic, and how often the owner would act.

    FILE is a Zeek conn.log (tab-separated or JSON lines) or an IoT-23 labelled CSV; a pcap
    or JSON-lines events work too, without labels (alerts and timeline only). Each service
    learns for the learning phase from its first flow; after that every new edge is an alert
    the owner would have been sent.
    """
    from commgraph.evaluate import sweep as run_sweep

    config = load_config(config_path) if config_path else None
    identity = Identity(config.identity) if config else None
    flows = _labelled_flows(file)
    phases = _durations(sweep, "--sweep") if sweep else _durations(learning, "--learning")
    if not phases:
        _fail("--sweep: give at least one duration, e.g. 5m,15m,1h")
    results = run_sweep(
        flows,
        phases,
        identity=identity,
        min_events=min_events,
        detectors=config.detectors if config else None,
    )
    if plot_png is not None or timeline_png is not None:
        from commgraph.plots import sweep_curve, timeline_chart

        if plot_png is not None:
            sweep_curve(results, plot_png, title=f"{file.name}: learning against owner's work")
        if timeline_png is not None:
            timeline_chart(results[-1], timeline_png, title=file.name)
    if as_json:
        rows = [r.to_json() for r in results]
        _emit_json(rows if sweep else rows[0])
        return
    out.print(_eval_table(results))
    last = results[-1]
    if last.alert_edges:
        shown = last.alert_edges[:20]
        out.print(
            f"What the owner would have been asked with {format_duration(last.learning_s)} "
            f"of learning ({len(last.alert_edges)} alerts):"
        )
        for src, relation, dst, label, kind in shown:
            out.print(f"  {esc(src)} {esc(relation)} {esc(dst)}  ({kind}, {label})")
        if len(last.alert_edges) > len(shown):
            out.print(f"  ... and {len(last.alert_edges) - len(shown)} more")
    for picture in (plot_png, timeline_png):
        if picture is not None:
            out.print(f"Wrote {esc(str(picture))}.")


# -- enforcement exports -----------------------------------------------------------------------


@cli.group("export")
def export_group() -> None:
    """Let the broker (or the network) enforce what the site's models allow.

    The models are this node's views of its services, joined with the kept site models that
    a trusted key signed: learned and approved relationships are allowed, nothing else.
    """


def _site_models(
    ctx: Context, config_path: Path | None, trusted_paths: Sequence[Path]
) -> list[ServiceModel]:
    config = _site_config(ctx, config_path)
    trusted = _trusted_keys(config, trusted_paths)
    with ctx.store() as store:
        node = config.node if config else _own_node(store)
        engine = _engine_for(store, config, node)
        kept = store.models()
    _adopt_kept(engine, kept, trusted, "left out")
    states = engine.phases.states.values()
    here = sorted(state.service for state in states)
    for state in states:
        if state.phase is Phase.LEARNING:
            err.print(
                f"warning: {state.service} is still learning: only what it learned so far "
                "is allowed",
                markup=False,
            )
    now = time.time()
    models = [
        dataclasses.replace(view, version=max(view.version, 1))
        for view in (engine.models_of(here, node=node, issued_at=now, version=0) if here else [])
    ]
    elsewhere = sorted(set(engine.models) - set(here))
    models += [engine.models[name].model for name in elsewhere]
    if not models:
        _fail(f"no service models in {ctx.db_path}: nothing has been learned or imported yet")
    return models


def _usernames(pairs: Sequence[str]) -> dict[str, str]:
    names = {}
    for pair in pairs:
        service, sep, username = pair.partition("=")
        if not sep or not service or not username:
            _fail(f"--username {pair!r}: expected SERVICE=USERNAME")
        names[service] = username
    return names


def _write_text(text: str, output: Path | None, what: str) -> None:
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    out.print(f"Wrote {what} to {esc(str(output))}.")


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
@_config_option
@_trusted_option
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
        _fail(str(exc))
    _write_text(text, output, f"the ACL of {len(models)} services")


@export_group.command("mosquitto-dynsec")
@_config_option
@_trusted_option
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
            _fail(f"{base}: not a dynamic-security config ({exc})")
    try:
        config = mosquitto_dynsec(models, usernames=_usernames(username_pairs), base=base_config)
    except EnforceError as exc:
        _fail(str(exc))
    _write_text(json.dumps(config, indent=2) + "\n", output, "the dynamic-security config")


@export_group.command("mud")
@click.argument("service")
@click.option("--mud-url", required=True, help="Where the MUD file will be served (https://...).")
@click.option("--broker", help="The MQTT broker's name or address (needed for MQTT models).")
@click.option("--systeminfo", help="A short description of the device (60 characters).")
@_config_option
@_trusted_option
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
        _fail(f"there is no model of {service!r} (see commgraph services, commgraph model show)")
    try:
        document = mud(model, mud_url=mud_url, broker=broker, systeminfo=systeminfo)
    except EnforceError as exc:
        _fail(str(exc))
    _write_text(json.dumps(document, indent=2) + "\n", output, f"the MUD file of {service}")


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
        output.write_text(text, encoding="utf-8")
        out.print(
            f"Wrote {len(vertices)} vertices and {len(edge_rows)} edges to {esc(str(output))}"
        )


_BARS = " ▁▂▃▄▅▆▇█"


def _spark(values: Sequence[int]) -> str:
    top = max(values, default=0)
    if top == 0:
        return " " * len(values)
    return "".join(_BARS[min(8, -(-v * 8 // top))] for v in values)


@cli.command()
@json_option
@click.pass_obj
def timeline(ctx: Context, as_json: bool) -> None:
    """How the graph changed over time, minute by minute (the paper's figure)."""
    with ctx.store() as store:
        rows = store.timeline()
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        out.print("The timeline is empty: replay some traffic first.")
        return
    table = _table(
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
            _when(r["ts"])[:-3],
            str(r["vertices"]),
            str(r["services"]),
            str(r["learning"]),
            str(r["edges"]),
            f"+{r['learned']}" if r["learned"] else "",
            f"[red]{r['anomalies']}[/]" if r["anomalies"] else "",
            str(r["decisions"]) if r["decisions"] else "",
        )
    out.print(table)
    out.print(f"edges     {_spark([r['edges'] for r in rows])}")
    out.print(f"learned   {_spark([r['learned'] for r in rows])}")
    out.print(f"anomalies [red]{_spark([r['anomalies'] for r in rows])}[/]")


# -- demo ---------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
)
@click.option("--seconds", type=click.FloatRange(min=1), help="Stop after this long.")
@click.option("--api-port", type=int, default=8080, show_default=True, help="Dashboard port.")
@click.option(
    "--notify",
    "notify_urls",
    multiple=True,
    metavar="URL",
    help="Also send the notification to this Apprise URL (repeatable).",
)
@click.option("--replay", is_flag=True, help="The old demo: generate events and replay them.")
@click.pass_obj
def demo(
    ctx: Context,
    out_dir: Path,
    seconds: float | None,
    api_port: int,
    notify_urls: tuple[str, ...],
    replay: bool,
) -> None:
    """A live heating site behind the proxy, with the dashboard (Ctrl-C stops it)."""
    if replay:
        _replay_demo(out_dir)
        return
    import logging

    from commgraph.daemon import run_live_demo

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    alerts = run_live_demo(out_dir, seconds=seconds, api_port=api_port, notify_urls=notify_urls)
    pending = [a for a in alerts if a["state"] == "pending"]
    if pending:
        _print_alerts(pending)


def _replay_demo(out_dir: Path) -> None:
    """Generate a small heating site, replay it, and show the anomaly it raises."""
    from commgraph.daemon import replay as run_replay
    from commgraph.demo import heating_site

    out_dir.mkdir(parents=True, exist_ok=True)
    events_file = out_dir / "heating.jsonl"
    db_path = out_dir / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    events = list(heating_site())
    events_file.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    out.print(
        f"[bold]1.[/] Generated {len(events)} events of a heating site in {esc(str(events_file))}:"
    )
    out.print("   2 sensors, a heating controller, 2 valves; a bedroom sensor added at minute 15;")
    out.print("   the kitchen sensor starts commanding the kitchen valve at minute 25.")
    settings = LearningSettings(duration=600.0)
    with Store(db_path) as store:
        store.save_settings(settings)
        engine = store.load_engine(settings)
        with events_file.open("rb") as stream:
            summary = run_replay(stream, engine, store)
        rows = store.services()
        pending = store.alerts(state="pending")
    out.print(
        f"[bold]2.[/] Replayed them with a 10 minute learning phase: {summary.events} events, "
        f"{len(rows)} services, {engine.graph.edge_count} edges."
    )
    bedroom = next((r for r in rows if r["name"] == "thermo-bedroom"), None)
    question = next((a for a in pending if a["kind"] == "new-service"), None)
    others = [a for a in pending if a is not question]
    if bedroom:
        asked = f"you are asked once if it is yours (alert {question['id']})." if question else ""
        out.print(
            f"[bold]3.[/] thermo-bedroom appeared at {_when(bedroom['first_seen'])}, after the "
            f"site had learned, and learned on its own until {_when(bedroom['learned_at'])}; "
            + (asked or "nothing to approve.")
        )
    waits = "question waits" if len(pending) == 1 else "questions wait"
    out.print(f"[bold]4.[/] {len(pending)} {waits} for you:")
    _print_alerts(pending)
    db = esc(str(db_path))
    out.print("\nWhat you can do next:")
    if question:
        out.print(f"  commgraph --db {db} approve {question['id']} --reason 'my new sensor'")
    if others:
        out.print(f"  commgraph --db {db} approve {others[0]['id']} --reason 'new valve logic'")
        out.print(
            f"  commgraph --db {db} deny {others[0]['id']} --reason 'sensor must not drive valves'"
        )
    out.print(f"  commgraph --db {db} services | edges | timeline | graph --format dot")


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
