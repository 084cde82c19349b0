"""Running traffic through the engine: ``replay``, ``run`` (the live node) and ``demo``."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.markup import escape as esc

from commgraph.cli.group import Context, cli, default_db, json_option
from commgraph.cli.models import warn
from commgraph.cli.output import emit_json, err, fail, make_dir, out, print_alerts, when
from commgraph.config import Config, load_config, parse_duration
from commgraph.errors import CommgraphError
from commgraph.events import iter_event_lines
from commgraph.phases import LearningSettings, Mode
from commgraph.signing import load_trusted
from commgraph.store import Store


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
            fail(f"--learning: {exc}")
    if min_events is not None:
        changes["min_events"] = min_events
    if mode is not None:
        changes["mode"] = Mode(mode)
    if not changes:
        return base
    return dataclasses.replace(base, **changes)


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
@click.option(
    "--dns",
    "dns_log",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A Zeek dns.log whose answers name a conn.log's addresses (default: dns.log beside it).",
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
    dns_log: Path | None,
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
    from commgraph.daemon import engine_for
    from commgraph.replay import replay_records
    from commgraph.site_models import adopt_kept

    config = load_config(config_path) if config_path else None
    if config and config.db and ctx.db_path == default_db():
        ctx.db_path = config.db
    with ctx.store(must_exist=False) as store:
        settings = _settings(store, config, learning, min_events, mode)
        store.save_settings(settings)
        engine = engine_for(store, config, node or (config.node if config else None), settings)
        if config and config.trusted_keys:
            # as the live node does: services with a trusted kept model adopt it
            adopt_kept(engine, store.models(), load_trusted(config.trusted_keys), warn("ignored"))
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
                    dns=dns_log,
                )
            except OSError as exc:
                fail(f"cannot read {file}: {exc.strerror or exc}")
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
        emit_json(report)
        return
    for error in summary.errors:
        err.print(f"[yellow]skipped[/] {esc(str(file))}: {esc(str(error))}")
    if summary.skipped > len(summary.errors):
        err.print(f"[yellow]... and {summary.skipped - len(summary.errors)} more skipped lines[/]")
    out.print(
        f"Replayed [bold]{summary.events:,}[/] events "
        f"({when(summary.first_ts)} to {when(summary.last_ts)}) "
        f"in {summary.seconds:.2f} s ({summary.events_per_s:,.0f} events/s)"
        + (f", skipped {summary.skipped} malformed lines" if summary.skipped else "")
    )
    out.print(
        f"{report['services']} services, {report['edges']} edges, "
        f"{report['new_alerts']} new alerts; {waiting} waiting for you."
    )
    print_alerts(pending)
    if pending:
        out.print(
            f"\nApprove one with [bold]commgraph --db {esc(str(ctx.db_path))} approve ID[/], "
            f"block it with [bold]deny ID[/]."
        )


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site configuration (TOML).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every decision applied and more.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object a line (for Loki or Elastic).",
)
@click.pass_obj
def run(ctx: Context, config_path: Path, verbose: bool, log_format: str) -> None:
    """Run this node: the MQTT proxy in front of the broker and/or a passive capture on an
    interface ([capture]), learning, alerting and (the proxy) enforcing.

    Stops cleanly on Ctrl-C or SIGTERM, writing the statistics it holds.
    """
    import logging

    from commgraph.daemon import run_daemon

    config = load_config(config_path)
    if config.mqtt.upstream is None and config.capture is None and not config.http.routes:
        fail(
            f"{config_path}: nothing to observe: set [mqtt] listen and upstream (the proxy), "
            "[[http.routes]] (HTTP sidecars), or [capture] interface (passive)"
        )
    if config.db and ctx.db_path == default_db():
        ctx.db_path = config.db
    from commgraph.logs import configure

    configure(log_format, logging.DEBUG if verbose else logging.INFO)
    try:
        run_daemon(config, ctx.db_path)
    except OSError as exc:  # e.g. the listen port is taken
        fail(f"cannot start the proxy: {exc.strerror or exc}")
    except CommgraphError as exc:  # e.g. capture without CAP_NET_RAW
        fail(str(exc))


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
)
@click.option(
    "--seconds", type=click.FloatRange(min=1), help="Stop after this long on the demo's clock."
)
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
    make_dir(out_dir)
    if replay:
        _replay_demo(out_dir)
        return
    import logging

    from commgraph.demo.live import run_live_demo

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    alerts = run_live_demo(out_dir, seconds=seconds, api_port=api_port, notify_urls=notify_urls)
    pending = [a for a in alerts if a["state"] == "pending"]
    if pending:
        print_alerts(pending)


def _replay_demo(out_dir: Path) -> None:
    """Generate a small heating site, replay it, and show the anomaly it raises."""
    from commgraph.demo.offline import run_replay_demo

    result = run_replay_demo(out_dir)
    out.print(
        f"[bold]1.[/] Generated {result.events} events of a heating site in "
        f"{esc(str(result.events_file))}:"
    )
    out.print("   2 sensors, a heating controller, 2 valves; a bedroom sensor added at minute 15;")
    out.print("   the kitchen sensor starts commanding the kitchen valve at minute 25.")
    rows, pending = result.services, result.pending
    out.print(
        f"[bold]2.[/] Replayed them with a 10 minute learning phase: {result.summary.events} "
        f"events, {len(rows)} services, {result.edges} edges."
    )
    bedroom = next((r for r in rows if r["name"] == "thermo-bedroom"), None)
    question = next((a for a in pending if a["kind"] == "new-service"), None)
    others = [a for a in pending if a is not question]
    if bedroom:
        asked = f"you are asked once if it is yours (alert {question['id']})." if question else ""
        out.print(
            f"[bold]3.[/] thermo-bedroom appeared at {when(bedroom['first_seen'])}, after the "
            f"site had learned, and learned on its own until {when(bedroom['learned_at'])}; "
            + (asked or "nothing to approve.")
        )
    waits = "question waits" if len(pending) == 1 else "questions wait"
    out.print(f"[bold]4.[/] {len(pending)} {waits} for you:")
    print_alerts(pending)
    db = esc(str(result.db))
    out.print("\nWhat you can do next:")
    if question:
        out.print(f"  commgraph --db {db} approve {question['id']} --reason 'my new sensor'")
    if others:
        out.print(f"  commgraph --db {db} approve {others[0]['id']} --reason 'new valve logic'")
        out.print(
            f"  commgraph --db {db} deny {others[0]['id']} --reason 'sensor must not drive valves'"
        )
    out.print(f"  commgraph --db {db} services | edges | timeline | graph --format dot")
