"""The benchmarks stay runnable: each prints one JSON object with the keys its issue names.

Only the shape is checked here; the figures belong in the README, not in timed tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "keys"),
    [
        (
            "engine.py",
            {
                "events_per_s",
                "new_edges_per_s",
                "bytes_per_edge",
                "edges",
                "events_per_s_plain_dict",
                "engine_over_plain",
                "bytes_seed_scenario",
                "bytes_empty_engine",
            },
        ),
        (
            "replay.py",
            {"events_per_s", "parse_per_s", "events", "pcap_packets_per_s", "connlog_rows_per_s"},
        ),
        ("pcap.py", {"pcap_packets_per_s", "parse_packets_per_s"}),
        (
            "connlog.py",
            {
                "connlog_rows_per_s",
                "parse_rows_per_s",
                "split_rows_per_s",
                "connlog_over_parse_only",
            },
        ),
        ("models.py", {"envelope_bytes", "sign_ms", "open_ms", "merge_ms"}),
        (
            "alert_pages.py",
            {
                "page_first_ms",
                "page_last_ms",
                "one_alert_ms",
                "overview_ms",
                "baseline_whole_listing_ms",
            },
        ),
        ("cli_startup.py", {"cli_status_over_python", "cli_status_s", "python_pass_s"}),
        (
            "http_proxy.py",
            {
                "rtt_sidecar_p50_ms",
                "relay_added_p50_ms",
                "requests_per_s_direct",
                "requests_per_s_sidecar",
                "throughput_ratio",
            },
        ),
        (
            "mqtt_proxy.py",
            {"rtt_direct_p50_ms", "rtt_proxy_p50_ms", "msgs_per_s_direct", "msgs_per_s_proxy"},
        ),
    ],
)
def test_benchmark_prints_one_json_object(script: str, keys: set[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert keys <= set(result)
    assert all(result[key] > 0 for key in keys)


ABUSE_COUNTS = (
    "storm_topics",
    "storm_alerts",
    "storm_edges",
    "cycles_per_batch",
    "cycles_alerts",
    "cycles_services_added",
    "rss_baseline_kib",
    "rss_python_import_kib",
    "cycles_rss_after_first_kib",
    "cycles_rss_after_second_kib",
)
ABUSE_KEYS = {
    *ABUSE_COUNTS,
    "storm_alerts_by_kind",
    "storm_rss_growth_kib",
    "storm_established",
    "storm_fresh",
    "cycles_growth_second_batch_kib",
    "cycles_alerts_by_kind",
    "python",
    "mosquitto",
    "cpus",
    "targets",
    "targets_met",
    "meets_targets",
}


def test_abuse_benchmark_prints_its_figures() -> None:
    """bench/abuse.py (a real Mosquitto and node): the keys and sane counts, no targets."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "abuse.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) >= ABUSE_KEYS
    assert all(isinstance(result[key], int) and result[key] >= 0 for key in ABUSE_COUNTS)
    for kinds in (result["storm_alerts_by_kind"], result["cycles_alerts_by_kind"]):
        assert all(isinstance(n, int) and n > 0 for n in kinds.values())
    assert sum(result["storm_alerts_by_kind"].values()) == result["storm_alerts"]
    for run in (result["storm_established"], result["storm_fresh"]):
        assert 0 <= run["delivered"] <= run["topics"] == result["storm_topics"]
        assert run["alerts"] >= 0 and run["edges"] >= 0
    assert isinstance(result["meets_targets"], bool)
