"""Pictures for evaluations: the sweep curve and the timeline, as PNG files (matplotlib).

matplotlib is an optional extra (``pip install 'commgraph[eval]'``); without it these raise
:class:`PlotError` saying so. Only this module imports it, and only when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from commgraph.engine import TimelineRow
from commgraph.errors import PlotError
from commgraph.evaluate import EvalResult

__all__ = ["PlotError", "sweep_curve", "timeline_chart"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(
            "drawing needs matplotlib: pip install 'commgraph[eval]' (or pip install matplotlib)"
        ) from None
    return plt


def _save(figure: Any, path: Path) -> None:
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise PlotError(f"cannot write {path}: {exc.strerror or exc}") from None


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


def sweep_curve(results: Sequence[EvalResult], path: Path, *, title: str = "") -> None:
    """Owner interactions per day after learning, and the share of malicious flows flagged,
    against the length of the learning phase."""
    plt = _pyplot()
    runs = sorted(results, key=lambda r: r.learning_s)
    x = [r.learning_s / 3600 for r in runs]
    figure, left = plt.subplots(figsize=(7, 4))
    try:
        per_day = [r.alerts_per_day if r.alerts_per_day is not None else float("nan") for r in runs]
        left.plot(x, per_day, marker="o", color="#c0392b", label="owner interactions / day")
        left.set_xscale("log")
        left.set_xticks(x, [_hours(r.learning_s) for r in runs])
        left.set_xlabel("learning phase")
        left.set_ylabel("alerts per day after learning", color="#c0392b")
        left.grid(True, which="both", alpha=0.3)
        if any(r.malicious_flows for r in runs):
            right = left.twinx()
            rate = [100 * (r.detection_rate or 0.0) for r in runs]
            right.plot(x, rate, marker="s", color="#2c3e50", label="malicious flows flagged")
            right.set_ylabel("malicious flows flagged (%)", color="#2c3e50")
            right.set_ylim(0, 105)
        left.set_title(title or "Learning phase length against the owner's work")
        _save(figure, path)
    finally:
        plt.close(figure)


def timeline_chart(result: EvalResult, path: Path, *, title: str = "") -> None:
    """The graph over time (services, edges, services learning) above the flows flagged per
    minute, with a mark at each alert the owner would have been sent."""
    plt = _pyplot()
    rows: Sequence[TimelineRow] = result.timeline
    if not rows:
        raise PlotError("nothing to draw: the timeline is empty")

    def when(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, tz=UTC)

    times = [when(r.minute * 60) for r in rows]
    # The last row holds until the traffic ends: draw it to there.
    end = when(result.last_at) if result.last_at is not None else times[-1]
    times.append(max(end, times[-1]))
    last = rows[-1]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    try:
        for label, values, colour in (
            ("edges", [r.edges for r in rows] + [last.edges], "#2980b9"),
            ("services", [r.services for r in rows] + [last.services], "#27ae60"),
            ("services learning", [r.learning for r in rows] + [last.learning], "#f39c12"),
        ):
            top.step(times, values, where="post", label=label, color=colour)
        top.set_ylabel("count")
        top.legend(loc="upper left")
        top.grid(True, alpha=0.3)
        flagged = result.flagged_per_minute
        if flagged:
            bottom.bar(
                [when(minute * 60) for minute, _ in flagged],
                [count for _, count in flagged],
                width=1 / 1440,
                color="#c0392b",
                label="flows flagged",
            )
        alerts = [when(r.minute * 60) for r in rows if r.anomalies]
        if alerts:
            bottom.plot(alerts, [0] * len(alerts), "v", color="black", label="alerts")
        bottom.set_ylabel("flagged / min")
        bottom.set_xlabel("time (UTC)")
        bottom.grid(True, alpha=0.3)
        if flagged or alerts:
            bottom.legend(loc="upper left")
        top.set_title(title or "The communication graph over time")
        figure.autofmt_xdate()
        _save(figure, path)
    finally:
        plt.close(figure)
