"""Anomalies on relationships that are known: rate, periodicity and size, per edge.

Each edge keeps a few fixed-size figures (:class:`Features`, array columns beside the
graph's; no growth with traffic): damped event counts over a short and a long window, a
robust estimate of its dominant period and jitter, and, once its service has learned, a
*baseline*: the peak short-window count, the period and jitter, and the size range seen while
learning. The detectors compare against the baseline and say which kind of alert is due:

- :mod:`.rate`: a sustained rate above the learned peak by ``rate_factor``, with at least
  ``rate_min_count`` events in the short window (sparse edges do not alarm);
- :mod:`.periodicity`: a periodic edge silent for more than ``silence_periods`` periods
  (checked as time passes, in ``tick``, not only when traffic comes);
- :mod:`.size`: a message outside the learned size range by ``size_margin``.

Everything here is pure: time comes with the events and ``tick``.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from math import exp
from typing import Any, cast

from commgraph.detectors.periodicity import track_gap
from commgraph.detectors.rate import too_fast
from commgraph.detectors.size import out_of_range

__all__ = ["KINDS", "DetectorSettings", "EdgeFigures", "Features", "figures_from"]

KINDS = frozenset({"rate", "periodicity", "size"})
RATE, PERIODICITY, SIZE = 1, 2, 3  # what update() and silent() report
# One edge's figures as stored: counts, period, jitter, hits, misses, the baseline's peak,
# period, jitter, size range, and whether there is a baseline.
_PACKED = struct.Struct("<ffffHHfffIIB")


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorSettings:
    """Thresholds of the detectors (``[detectors]`` in the site config)."""

    kinds: frozenset[str] = field(default_factory=lambda: KINDS)
    rate_factor: float = 5.0  # alert above the learned peak times this
    rate_min_count: float = 10.0  # ... with at least this many events in the short window
    short_window: float = 60.0  # seconds: time constant of the short damped count
    long_window: float = 3600.0
    silence_periods: float = 3.0  # a periodic edge silent this many periods
    min_period_hits: int = 5  # gaps near the period before an edge counts as periodic
    burst_gap: float = 1.0  # gaps shorter than this are within one burst (request, answer)
    size_margin: float = 2.0  # outside [min / margin, max * margin], give or take the slack
    size_slack: int = 64  # bytes
    rate_limit: bool = False  # in protect mode, drop what a rate alert is raised on

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - KINDS)
        if unknown:
            raise ValueError(f"unknown detector {unknown[0]!r} (known: {', '.join(sorted(KINDS))})")
        for name in ("rate_factor", "size_margin", "silence_periods"):
            if getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be at least 1")
        for name in ("short_window", "long_window", "burst_gap"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class EdgeFigures:
    """What an edge's figures say, for people and models (None where not known)."""

    period_s: float | None
    jitter_s: float | None
    rate_per_min: float | None
    baseline: bool


class Features:
    """The figures of every edge, by edge id; :meth:`update` is on the engine's hot path."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        s = self.settings
        self._short, self._long = 1.0 / s.short_window, 1.0 / s.long_window
        self._rate = "rate" in s.kinds
        self._size = "size" in s.kinds
        self._periodic = "periodicity" in s.kinds
        self.count_short = array("f")  # damped event counts: about the events of a window
        self.count_long = array("f")
        self.period = array("f")  # the dominant gap between bursts, and its jitter
        self.jitter = array("f")
        self.hits = array("H")  # gaps near the period, gaps not
        self.misses = array("H")
        self.base_rate = array("f")  # while learning: the peak short count so far
        self.base_period = array("f")  # 0: not periodic
        self.base_jitter = array("f")
        self.base_min = array("I")
        self.base_max = array("I")
        self.baseline = bytearray()  # 1 once the edge's figures are learned
        self.periodic: set[int] = set()  # edges with a learned period: checked in silent()
        # Every per-edge column but ``baseline``, in the order they are stored.
        self._columns: tuple[Any, ...] = (
            self.count_short,
            self.count_long,
            self.period,
            self.jitter,
            self.hits,
            self.misses,
            self.base_rate,
            self.base_period,
            self.base_jitter,
            self.base_min,
            self.base_max,
        )
        self._float_columns = tuple(
            cast("array[float]", c) for c in self._columns if c.typecode == "f"
        )
        self._int_columns = tuple(cast("array[int]", c) for c in self._columns if c.typecode != "f")
        self._burst = s.burst_gap

    def __len__(self) -> int:
        return len(self.baseline)

    def extend(self, edges: int) -> None:
        """Room for edges ``0 .. edges - 1`` (new edges start with no figures)."""
        grow = edges - len(self.baseline)
        if grow <= 0:
            return
        if grow == 1:  # the usual case: one new edge
            for floats in self._float_columns:
                floats.append(0.0)
            for ints in self._int_columns:
                ints.append(0)
            self.baseline.append(0)
            return
        zeros_f = array("f", bytes(4 * grow))
        for floats in self._float_columns:
            floats.extend(zeros_f)
        for ints in self._int_columns:
            ints.extend(array(ints.typecode, bytes(ints.itemsize * grow)))
        self.baseline.extend(bytes(grow))

    def update(self, e: int, gap: float, size: int | None) -> int:
        """Count one event of edge ``e`` (``gap`` seconds after its previous one); returns
        RATE or SIZE when that detector fires, else 0. Learns while there is no baseline."""
        if e >= len(self.baseline):
            self.extend(e + 1)
        counts, long_counts = self.count_short, self.count_long
        if gap > 0.0:
            short = counts[e] * exp(-gap * self._short) + 1.0
            long_counts[e] = long_counts[e] * exp(-gap * self._long) + 1.0
            if gap >= self._burst:
                track_gap(self, e, gap)
        else:
            short = counts[e] + 1.0
            long_counts[e] += 1.0
        counts[e] = short
        if not self.baseline[e]:
            if short > self.base_rate[e]:
                self.base_rate[e] = short
            return 0
        settings = self.settings
        if self._rate and too_fast(short, self.base_rate[e], settings):
            return RATE
        if self._size and size is not None and out_of_range(size, e, self, settings):
            return SIZE
        return 0

    def learn(self, e: int, size_min: int, size_max: int) -> None:
        """Freeze edge ``e``'s figures as its baseline (its service's learning is over)."""
        if e >= len(self.baseline):
            self.extend(e + 1)
        settings = self.settings
        hits, misses = self.hits[e], self.misses[e]
        periodic = hits >= settings.min_period_hits and hits >= 2 * misses
        self.base_period[e] = self.period[e] if periodic else 0.0
        self.base_jitter[e] = self.jitter[e] if periodic else 0.0
        self.base_rate[e] = max(self.base_rate[e], 1.0)
        self.base_min[e], self.base_max[e] = size_min, size_max
        self.baseline[e] = 1
        if periodic and self._periodic:
            self.periodic.add(e)
        else:
            self.periodic.discard(e)

    def widen(self, e: int, kind: int, size_min: int, size_max: int) -> None:
        """The owner approved a ``kind`` alert on ``e``: what it saw becomes normal."""
        if kind == RATE:
            self.base_rate[e] = max(self.base_rate[e], self.count_short[e])
        elif kind == SIZE:
            self.base_min[e] = min(self.base_min[e], size_min)
            self.base_max[e] = max(self.base_max[e], size_max)
        elif kind == PERIODICITY:  # it may be quiet now: no longer expected like a clock
            self.base_period[e] = 0.0
            self.periodic.discard(e)

    def silent(self, now: float, last: array[float]) -> list[tuple[int, float]]:
        """Periodic edges whose silence at ``now`` is longer than the detector allows, each
        with the moment it became too long (time may have jumped: a replay, a late tick)."""
        if not self.periodic:
            return []
        allowed = self.settings.silence_periods
        period, jitter = self.base_period, self.base_jitter
        found = []
        for e in self.periodic:
            due = last[e] + period[e] * allowed + 3.0 * jitter[e]
            if now > due:
                found.append((e, due))
        return found

    def learned_figures(self, e: int) -> dict[str, float]:
        """Edge ``e``'s baseline in a model's terms (empty before it has one)."""
        if e >= len(self.baseline) or not self.baseline[e]:
            return {}
        figures = {
            "rate_per_min": round(float(self.base_rate[e]) * 60.0 / self.settings.short_window, 4)
        }
        if self.base_period[e] > 0:
            figures["period_s"] = round(float(self.base_period[e]), 3)
            figures["jitter_s"] = round(float(self.base_jitter[e]), 3)
        if self.base_max[e] != 0xFFFFFFFF:
            figures["size_min"] = float(self.base_min[e])
            figures["size_max"] = float(self.base_max[e])
        return figures

    def figures(self, e: int) -> EdgeFigures:
        if e >= len(self.baseline):
            return EdgeFigures(None, None, None, False)
        s = self.settings
        hits, misses = self.hits[e], self.misses[e]
        periodic = hits >= s.min_period_hits and hits >= 2 * misses
        rate = self.count_long[e] * s.short_window / s.long_window
        return EdgeFigures(
            period_s=round(float(self.period[e]), 3) if periodic else None,
            jitter_s=round(float(self.jitter[e]), 3) if periodic else None,
            rate_per_min=round(rate * 60.0 / s.short_window, 4) if self.count_long[e] else None,
            baseline=bool(self.baseline[e]),
        )

    def seed(
        self,
        e: int,
        *,
        rate_per_min: float | None,
        period_s: float | None,
        jitter_s: float | None,
        size_min: int | None,
        size_max: int | None,
    ) -> None:
        """A baseline that came with a site model (learned on another node)."""
        if e >= len(self.baseline):
            self.extend(e + 1)
        s = self.settings
        if rate_per_min is not None:
            self.base_rate[e] = max(1.0, rate_per_min * s.short_window / 60.0)
        if period_s:
            self.base_period[e] = period_s
            self.base_jitter[e] = jitter_s or 0.0
            if self._periodic:
                self.periodic.add(e)
        if size_min is not None and size_max is not None:
            self.base_min[e], self.base_max[e] = size_min, size_max
        else:
            self.base_min[e], self.base_max[e] = 0, 0xFFFFFFFF
        self.baseline[e] = 1

    def pack(self, e: int) -> bytes | None:
        """Edge ``e``'s figures as bytes for the store (None before it has any)."""
        if e >= len(self.baseline):
            return None
        return _PACKED.pack(*(column[e] for column in self._columns), self.baseline[e])

    def restore(self, e: int, packed: bytes) -> None:
        """Edge ``e``'s figures as :meth:`pack` wrote them (ValueError if they are not)."""
        try:
            *values, baseline = _PACKED.unpack(packed)
        except struct.error as exc:
            raise ValueError(f"edge {e}: stored figures are damaged ({exc})") from None
        if e >= len(self.baseline):
            self.extend(e + 1)
        for column, value in zip(self._columns, values, strict=True):
            column[e] = value
        self.baseline[e] = baseline
        if baseline and self.base_period[e] > 0 and self._periodic:
            self.periodic.add(e)

    def nbytes(self) -> int:
        """Bytes the figures take in memory, allocation slack included."""
        return (
            sum(sys.getsizeof(column) for column in self._columns)
            + sys.getsizeof(self.baseline)
            + sys.getsizeof(self.periodic)
        )


def figures_from(packed: bytes | None, settings: DetectorSettings | None = None) -> EdgeFigures:
    """What stored figures say (for listings that have no engine)."""
    if packed is None:
        return EdgeFigures(None, None, None, False)
    features = Features(settings)
    features.restore(0, packed)
    return features.figures(0)
