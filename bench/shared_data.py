"""Where the benchmarks find the real IoT traffic they replay (read by path, never copied).

``$COMMGRAPH_DATA`` if set; else ``shared/data`` beside the checkout (``../shared/data``);
else ``/work/shared/data``, where the development machines keep it. The tests use the same
order (``tests/conftest.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

CANDIDATES = (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))


def data_dir() -> Path:
    """The directory of the shared test data (the first candidate that exists)."""
    if os.environ.get("COMMGRAPH_DATA"):
        return Path(os.environ["COMMGRAPH_DATA"])
    return next((path for path in CANDIDATES if path.is_dir()), CANDIDATES[0])
