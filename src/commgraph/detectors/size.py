"""Size: a message outside the learned size range by a margin.

Learned range ``[lo, hi]`` (bytes); a message is out of range above ``hi * size_margin +
size_slack`` or below ``lo / size_margin - size_slack``. The slack keeps small messages from
alarming over a few bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commgraph.detectors import DetectorSettings, Features


def out_of_range(size: int, e: int, features: Features, settings: DetectorSettings) -> bool:
    margin, slack = settings.size_margin, settings.size_slack
    return (
        size > features.base_max[e] * margin + slack or size < features.base_min[e] / margin - slack
    )
