"""Evaluation on labelled traffic: how well anomalies are found, and how often the owner acts.

:func:`evaluate` runs labelled flows (in time order) through a fresh engine with a given
learning phase, as a node would have seen them, and counts:

- per flow: malicious flows flagged (their edge was not normal when they came) and benign
  flows flagged (false alarms);
- per edge (source, destination, relation): the same, an edge being malicious if any of its
  flows is;
- the alerts the owner would have been sent (one per new edge after learning: each one is an
  interaction), per day of traffic after learning;
- the time from the first malicious flow to the first alert about a malicious edge.

:func:`sweep` does it for several learning phases: the paper's central claim is that a long
enough learning phase gives a low interaction rate. Pure: no files, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from commgraph.adapters.pcap import DNSAnswer
from commgraph.alerts import Alert, AlertKind
from commgraph.detectors import DetectorSettings
from commgraph.detectors.guardrails import SignalNote
from commgraph.engine import Engine, TimelineRow, Verdict
from commgraph.events import EventFields
from commgraph.identity import Identity
from commgraph.phases import LearningSettings, Mode
from commgraph.replay import replay_records

__all__ = ["EvalResult", "LabelledFlow", "evaluate", "sweep"]

LabelledFlow = tuple[float, str, str, str, int | None, str | None]
"""``(ts, src, dst, relation, size, label)``; label "malicious", "benign" or None."""

DAY = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalResult:
    """What one run found; ``to_json()`` keeps these names."""

    learning_s: float
    flows: int
    malicious_flows: int
    malicious_flagged: int
    benign_flows: int
    benign_flagged: int
    unlabelled_flows: int
    flows_while_learning: int
    edges: int
    malicious_edges: int
    malicious_edges_flagged: int
    benign_edges: int
    benign_edges_flagged: int
    alerts: int  # of every kind: each is an owner interaction
    alerts_by_kind: dict[str, int]  # new-edge, rate, periodicity, size
    alerts_on_malicious_edges: int
    days: float  # span of the traffic
    days_after_learning: float
    alerts_per_day: float | None  # owner interactions per day after learning
    first_malicious_at: float | None
    first_malicious_alert_at: float | None
    detection_delay_s: float | None
    # (src, relation, dst, label, kind) of each alert, label "malicious", "benign", "unlabelled"
    alert_edges: tuple[tuple[str, str, str, str, str], ...] = ()
    first_at: float | None = None
    last_at: float | None = None
    timeline: tuple[TimelineRow, ...] = field(default=(), repr=False)
    flagged_per_minute: tuple[tuple[int, int], ...] = field(default=(), repr=False)

    @property
    def detection_rate(self) -> float | None:
        return _ratio(self.malicious_flagged, self.malicious_flows)

    @property
    def false_alarm_rate(self) -> float | None:
        return _ratio(self.benign_flagged, self.benign_flows)

    def to_json(self) -> dict[str, Any]:
        result = asdict(self)
        result.pop("timeline")
        result.pop("flagged_per_minute")
        result["alert_edges"] = [
            {"src": src, "relation": relation, "dst": dst, "label": label, "kind": kind}
            for src, relation, dst, label, kind in self.alert_edges
        ]
        result["detection_rate"] = self.detection_rate
        result["false_alarm_rate"] = self.false_alarm_rate
        return result


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def evaluate(
    flows: Sequence[LabelledFlow],
    learning: float,
    *,
    identity: Identity | None = None,
    min_events: int = 0,
    detectors: DetectorSettings | None = None,
    notes: Sequence[tuple[int, DNSAnswer | SignalNote]] = (),
) -> EvalResult:
    """Run ``flows`` (sorted by time) through an engine whose services learn for ``learning``
    seconds from their first flow, in monitor mode, and count what it flagged: a flow is
    flagged when its edge is not normal or it raised a rate or size alert. ``notes`` are
    the DNS answers and protocol signals of a capture, each with the index of the flow it
    came before (from :func:`commgraph.adapters.recorded.labelled_flows`): the one driver
    hears them where a replay of the capture would."""
    engine = Engine(
        LearningSettings(duration=learning, min_events=min_events, mode=Mode.MONITOR),
        identity,
        detectors=detectors,
    )
    counts = {"malicious": [0, 0], "benign": [0, 0], None: [0, 0]}  # label -> [flows, flagged]
    edge_labels: dict[int, set[str | None]] = {}
    edge_flagged: set[int] = set()
    first_malicious: float | None = None
    timeline: list[TimelineRow] = []
    flagged: dict[int, int] = {}  # minute -> flows flagged in it

    def ticked(ts: float) -> None:
        timeline.extend(engine.take_changes().timeline)

    def judged(i: int, verdict: Verdict) -> None:
        nonlocal first_malicious
        ts, src, dst, relation, _, label = flows[i]
        key = label if label in ("malicious", "benign") else None
        tally = counts[key]
        tally[0] += 1
        if key == "malicious" and first_malicious is None:
            first_malicious = ts
        # The edge the flow landed on: the newest one if it made one, else found again.
        e = engine.edge_of(src, dst, relation)
        if e is not None:  # None: beyond its service's edge cap, counted on its burst alert
            edge_labels.setdefault(e, set()).add(key)
        if verdict.anomalous or verdict.alert is not None:
            tally[1] += 1
            if e is not None:
                edge_flagged.add(e)
            minute = int(ts // 60)
            flagged[minute] = flagged.get(minute, 0) + 1

    replay_records(
        _records(flows, notes),
        engine,
        None,
        on_verdict=judged,
        on_tick=ticked,
    )
    learning_flows = _flows_while_learning(engine, flows)
    malicious_edges = {e for e, labels in edge_labels.items() if "malicious" in labels}
    benign_edges = {e for e, labels in edge_labels.items() if labels == {"benign"}}
    first_ts = flows[0][0] if flows else 0.0
    last_ts = flows[-1][0] if flows else 0.0
    learned_until = first_ts + learning
    after = max(0.0, last_ts - learned_until) / DAY
    raised = sorted(engine.alerts.by_id.values(), key=lambda alert: alert.id)
    by_kind = {kind.value: 0 for kind in AlertKind}
    for alert in raised:
        by_kind[alert.kind.value] += 1
    malicious_alerts = sorted(a.first_seen for a in raised if a.edge in malicious_edges)
    first_alert = next(
        (ts for ts in malicious_alerts if first_malicious is not None and ts >= first_malicious),
        None,
    )
    return EvalResult(
        learning_s=learning,
        flows=len(flows),
        malicious_flows=counts["malicious"][0],
        malicious_flagged=counts["malicious"][1],
        benign_flows=counts["benign"][0],
        benign_flagged=counts["benign"][1],
        unlabelled_flows=counts[None][0],
        flows_while_learning=learning_flows,
        edges=engine.graph.edge_count,
        malicious_edges=len(malicious_edges),
        malicious_edges_flagged=len(malicious_edges & edge_flagged),
        benign_edges=len(benign_edges),
        benign_edges_flagged=len(benign_edges & edge_flagged),
        alerts=len(raised),
        alerts_by_kind=by_kind,
        alerts_on_malicious_edges=len(malicious_alerts),
        days=(last_ts - first_ts) / DAY,
        days_after_learning=after,
        alerts_per_day=len(raised) / after if after > 0 else None,
        first_malicious_at=first_malicious,
        first_malicious_alert_at=first_alert,
        detection_delay_s=None
        if first_alert is None or first_malicious is None
        else first_alert - first_malicious,
        alert_edges=tuple(
            sorted(
                (
                    *_names(engine, alert),
                    "malicious"
                    if alert.edge in malicious_edges
                    else "benign"
                    if alert.edge in benign_edges
                    else "unlabelled",
                    alert.kind.value,
                )
                for alert in raised
            )
        ),
        first_at=flows[0][0] if flows else None,
        last_at=flows[-1][0] if flows else None,
        timeline=tuple(timeline),
        flagged_per_minute=tuple(sorted(flagged.items())),
    )


def _records(
    flows: Sequence[LabelledFlow], notes: Sequence[tuple[int, DNSAnswer | SignalNote]]
) -> Iterator[tuple[int, EventFields | DNSAnswer | SignalNote]]:
    """The flows as the driver's records, each note before the flow it preceded."""
    if not notes:
        for i, flow in enumerate(flows):
            yield i, flow[:5]
        return
    pending = iter(notes)
    upcoming = next(pending, None)
    for i, flow in enumerate(flows):
        while upcoming is not None and upcoming[0] <= i:
            yield i, upcoming[1]
            upcoming = next(pending, None)
        yield i, flow[:5]
    while upcoming is not None:
        yield len(flows), upcoming[1]
        upcoming = next(pending, None)


def _names(engine: Engine, alert: Alert) -> tuple[str, str, str]:
    """``(src, relation, dst)`` of an alert as the store lists it: an edge alert's edge; an
    alert about a subject names the subject, its kind and the node."""
    if alert.edge < 0:
        return engine.graph.names[alert.subject], alert.kind.value, alert.node or engine.node or ""
    src, dst, relation = engine.edge_names(alert.edge)
    return src, relation, dst


def _flows_while_learning(engine: Engine, flows: Sequence[LabelledFlow]) -> int:
    """Flows that came while their service was still learning."""
    ends: dict[str, float] = {}
    for state in engine.phases.states.values():
        if state.learned_at is not None:
            ends[state.service] = state.learned_at
    count = 0
    resolve = engine.identity.resolve
    for ts, src, *_ in flows:
        end = ends.get(resolve(src).service)
        if end is None or ts < end:
            count += 1
    return count


def sweep(
    flows: Sequence[LabelledFlow],
    learnings: Iterable[float],
    *,
    identity: Identity | None = None,
    min_events: int = 0,
    detectors: DetectorSettings | None = None,
    notes: Sequence[tuple[int, DNSAnswer | SignalNote]] = (),
) -> list[EvalResult]:
    """:func:`evaluate` once per learning phase, shortest first (each with a fresh copy
    of ``identity``, so names one run learned do not leak into the next)."""
    return [
        evaluate(
            flows,
            learning,
            identity=None if identity is None else Identity(identity.rules),
            min_events=min_events,
            detectors=detectors,
            notes=notes,
        )
        for learning in sorted(learnings)
    ]
