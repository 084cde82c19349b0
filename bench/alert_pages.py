"""Alert listings of a node with 20,000 alerts: one page, one alert, the overview's reads.

Prints one JSON object, in ms. The baseline, measured in the same run, is the whole listing:
what GET /api/v1/alerts, the overview and every one-alert lookup read before pagination.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from commgraph.alerts import Action
from commgraph.events import Event
from commgraph.phases import LearningSettings
from commgraph.store import Store

T0 = 1_700_000_000.0
SERVICES = 50


def build(db: Path, alerts: int) -> None:
    """Through the engine and the store's writing path: each service learns one edge, then
    raises ``alerts`` new-edge alerts between them; one in five approved, one in five denied."""
    with Store(db) as store:
        engine = store.load_engine(LearningSettings(duration=600.0))
        for s in range(SERVICES):
            engine.observe(
                Event(ts=T0, src=f"svc-{s}", dst=f"site/{s}/learned", relation="publish")
            )
        engine.tick(T0 + 700)
        for i in range(1, alerts + 1):
            s = i % SERVICES
            event = Event(
                ts=T0 + 1000 + i, src=f"svc-{s}", dst=f"site/{s}/t{i}", relation="publish"
            )
            engine.observe(event)
        for i in range(1, alerts + 1):
            if i % 5 in (1, 2):
                action = Action.APPROVE if i % 5 == 1 else Action.DENY
                engine.decide(i, action, by="owner", at=T0 + 90_000 + i)
        store.flush(engine)


def ms(fn: Callable[[], object], runs: int) -> float:
    """Median milliseconds of one call over ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 alerts, few runs")
    args = parser.parse_args(argv)
    count = 2000 if args.quick else 20_000
    runs = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "node.db"
        build(db, count)
        with Store(db) as store:
            last = count - 100
            assert store.alert(count) is not None and store.count_alerts() == count

            def overview() -> None:
                store.status()
                store.alerts(state="pending", limit=20, newest_first=True)
                store.services()
                store.decisions(limit=10, newest_first=True)

            whole_ms = ms(store.alerts, runs)
            result = {
                "alerts": count,
                "page_first_ms": ms(lambda: store.alerts(limit=100), runs),
                "page_last_ms": ms(lambda: store.alerts(limit=100, offset=last), runs),
                "count_ms": ms(store.count_alerts, runs),
                "one_alert_ms": ms(lambda: store.alert(count), runs),
                "overview_ms": ms(overview, runs),
                "baseline_whole_listing_ms": whole_ms,  # a page or one alert, before
                "baseline_pending_listing_ms": ms(lambda: store.alerts(state="pending"), runs),
                "quick": args.quick,
            }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
