"""``commgraph demo --replay``: generate the heating site's events and replay them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commgraph.demo.site import heating_site
from commgraph.phases import LearningSettings
from commgraph.replay import ReplaySummary, replay
from commgraph.store import Store

__all__ = ["ReplayDemo", "run_replay_demo"]

LEARNING = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayDemo:
    """What the replayed heating site left in ``db``."""

    events_file: Path
    db: Path
    events: int
    summary: ReplaySummary
    edges: int
    services: list[dict[str, Any]]
    pending: list[dict[str, Any]]


def run_replay_demo(out_dir: Path) -> ReplayDemo:
    """Write 40 minutes of the heating site to ``out_dir``/heating.jsonl and replay them
    into a fresh ``out_dir``/demo.db with a 10 minute learning phase."""
    out_dir.mkdir(parents=True, exist_ok=True)
    events_file = out_dir / "heating.jsonl"
    db_path = out_dir / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    events = list(heating_site())
    events_file.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    settings = LearningSettings(duration=LEARNING)
    with Store(db_path) as store:
        store.save_settings(settings)
        engine = store.load_engine(settings)
        with events_file.open("rb") as stream:
            summary = replay(stream, engine, store)
        return ReplayDemo(
            events_file=events_file,
            db=db_path,
            events=len(events),
            summary=summary,
            edges=engine.graph.edge_count,
            services=store.services(),
            pending=store.alerts(state="pending"),
        )
