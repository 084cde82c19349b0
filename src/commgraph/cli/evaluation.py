"""``eval``: how well anomalies are found in labelled traffic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from rich.markup import escape as esc
from rich.table import Table

from commgraph.adapters.pcap import DNSAnswer
from commgraph.cli.group import cli, config_option, json_option
from commgraph.cli.output import emit_json, err, fail, new_table, out
from commgraph.config import Config, format_duration, load_config, parse_duration
from commgraph.detectors.guardrails import SignalNote
from commgraph.evaluate import EvalResult, LabelledFlow
from commgraph.identity import Identity


def _labelled_flows(
    file: Path, notes: list[tuple[int, DNSAnswer | SignalNote]], dns: Path | None = None
) -> list[LabelledFlow]:
    """The flows of ``file`` in time order, with a warning for each of the first bad records;
    a capture's DNS answers and protocol signals go to ``notes``."""
    from commgraph.adapters.recorded import labelled_flows

    try:
        flows, skipped = labelled_flows(file, notes, dns)
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    for problem in skipped[:5]:
        err.print(f"warning: {file}: skipped {problem}", markup=False)
    if len(skipped) > 5:
        err.print(f"warning: {file}: {len(skipped) - 5} more bad records skipped", markup=False)
    if not flows:
        fail(f"{file}: no flows found (expected a conn.log, IoT-23 CSV, pcap or JSON lines)")
    return flows


def _durations(text: str, option: str) -> list[float]:
    try:
        return [parse_duration(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _eval_table(results: Sequence[EvalResult]) -> Table:
    table = new_table(
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
@config_option
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
@click.option(
    "--dns",
    "dns_log",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A Zeek dns.log whose answers name a conn.log's addresses (default: dns.log beside it).",
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
    dns_log: Path | None,
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
    identity = Identity((config or Config()).identity_rules())
    notes: list[tuple[int, DNSAnswer | SignalNote]] = []
    flows = _labelled_flows(file, notes, dns_log)
    phases = _durations(sweep, "--sweep") if sweep else _durations(learning, "--learning")
    if not phases:
        fail("--sweep: give at least one duration, e.g. 5m,15m,1h")
    results = run_sweep(
        flows,
        phases,
        identity=identity,
        min_events=min_events,
        detectors=config.detectors if config else None,
        notes=notes,
    )
    if plot_png is not None or timeline_png is not None:
        from commgraph.plots import sweep_curve, timeline_chart

        if plot_png is not None:
            sweep_curve(results, plot_png, title=f"{file.name}: learning against owner's work")
        if timeline_png is not None:
            timeline_chart(results[-1], timeline_png, title=file.name)
    if as_json:
        rows = [r.to_json() for r in results]
        emit_json(rows if sweep else rows[0])
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
