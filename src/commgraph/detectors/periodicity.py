"""Periodicity: the dominant period of an edge and its jitter, and silence.

Gaps shorter than ``burst_gap`` are inside one burst (a request and its answer, a reconnect),
the others are between bursts. A robust tracker follows the dominant gap with a fixed-size
state: a gap within a factor 1.5 of the current estimate moves it (and the jitter, the mean
absolute deviation) by 1/8; any other gap is a miss, and when misses outnumber hits twice
over, the estimate starts again from the latest gap. An edge is periodic once it has
``min_period_hits`` hits and at least twice as many hits as misses; a periodic edge silent
for ``silence_periods`` periods (plus three jitters) is reported by ``Features.silent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commgraph.detectors import Features

_STEP = 0.125
_BAND = 1.5
_CAP = 0xFFFF


def track_gap(features: Features, e: int, gap: float) -> None:
    period = features.period[e]
    hits, misses = features.hits[e], features.misses[e]
    if period <= 0.0 or misses > 2 * hits + 3:
        features.period[e] = gap
        features.jitter[e] = 0.0
        features.hits[e], features.misses[e] = 1, 0
        return
    if period / _BAND <= gap <= period * _BAND:
        period += (gap - period) * _STEP
        features.period[e] = period
        features.jitter[e] += (abs(gap - period) - features.jitter[e]) * _STEP
        hits += 1
    else:
        misses += 1
    if hits >= _CAP or misses >= _CAP:
        hits, misses = hits // 2, misses // 2
    features.hits[e], features.misses[e] = hits, misses
