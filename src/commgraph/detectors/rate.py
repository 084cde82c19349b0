"""Rate: a sustained rate above what was learned.

The short damped count of an edge is about the number of its events in the last short
window. While its service learns, the peak of that count is kept; afterwards the edge is
too fast when the count exceeds the peak by ``rate_factor`` and is at least
``rate_min_count``, so an edge that sends twice where it sent once does not alarm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commgraph.detectors import DetectorSettings


def too_fast(short_count: float, learned_peak: float, settings: DetectorSettings) -> bool:
    return (
        short_count >= settings.rate_min_count and short_count > learned_peak * settings.rate_factor
    )
