"""Where the benchmarks find the real IoT traffic they replay (read by path, never copied).

``$COMMGRAPH_DATA`` if set; else ``shared/data`` beside the checkout (``../shared/data``).
The tests look in the same places (``tests/conftest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data"


def data_dir() -> Path:
    """The directory of the shared test data."""
    return Path(os.environ.get("COMMGRAPH_DATA") or BESIDE)
