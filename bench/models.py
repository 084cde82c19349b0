"""Service models: how long signing, checking and merging take, and how big a model is.

Prints one JSON object. A site with a few dozen service types exchanges a few dozen models, so
what matters is that checking an arriving model (signature + parse + merge) stays far below
the one-second tick that carries it into the engine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable

from commgraph.model import ModelEdge, ServiceModel, merge, open_model, sign_model
from commgraph.signing import generate_keypair, key_id, load_trusted

T0 = 1_700_000_000.0


def a_model(edges: int, node: str, decided_every: int) -> ServiceModel:
    return ServiceModel(
        service="thermo",
        version=1,
        node=node,
        issued_at=T0,
        edges=tuple(
            ModelEdge(
                relation="publish",
                peer=f"home/+/metric-{n:05d}",
                direction="out",
                label="approved" if n % decided_every == 0 else "learned",
                decided_at=T0 + n if n % decided_every == 0 else None,
                decided_by="owner" if n % decided_every == 0 else None,
            )
            for n in range(edges)
        ),
    )


def per_call(fn: Callable[[], object], runs: int) -> float:
    """Median seconds per call over ``runs`` timed batches."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(20):
            fn()
        times.append((time.perf_counter() - started) / 20)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small models, few runs")
    args = parser.parse_args(argv)
    edges = 100 if args.quick else 1000
    runs = 3 if args.quick else 7
    private, public = generate_keypair()
    with tempfile.TemporaryDirectory() as tmp:
        pub = pathlib.Path(tmp) / "site.pub"
        pub.write_bytes(public)
        trusted = load_trusted([pub])
    assert key_id(public) in trusted
    a, b = a_model(edges, "node-a", 10), a_model(edges, "node-b", 7)
    envelope = sign_model(a, private)
    result = {
        "edges_per_model": edges,
        "envelope_bytes": len(envelope),
        "bytes_per_edge": round(len(envelope) / edges, 1),
        "sign_ms": round(per_call(lambda: sign_model(a, private), runs) * 1000, 3),
        "open_ms": round(per_call(lambda: open_model(envelope, trusted), runs) * 1000, 3),
        "merge_ms": round(per_call(lambda: merge(a, b), runs) * 1000, 3),
        "quick": args.quick,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
