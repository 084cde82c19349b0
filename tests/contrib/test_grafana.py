"""The Grafana dashboard and Prometheus config under contrib/, against a running node."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import HOST, Proxy, free_port, port_accepts, wait_until

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
METRIC = re.compile(r"\bcommgraph_[a-z_]+\b")


def queried() -> set[str]:
    dashboard = json.loads((CONTRIB / "grafana" / "commgraph.json").read_text())
    assert dashboard["uid"] == "commgraph" and dashboard["panels"]
    names = set()
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        for target in panel["targets"]:
            names.update(METRIC.findall(target["expr"]))
    return names


def test_every_metric_the_dashboard_queries_is_exported(
    start_proxy: Callable[..., Proxy],
) -> None:
    api = free_port()
    proxy = start_proxy(mode="monitor", api={"listen": f"{HOST}:{api}"})
    wait_until(lambda: port_accepts(api), 20, 0.1, "the API")
    credentials = Path(f"{proxy.db}.credentials")
    token = wait_until(
        lambda: credentials.exists() and json.loads(credentials.read_text())["api_token"], 20
    )
    request = urllib.request.Request(
        f"http://{HOST}:{api}/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    exported = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    wanted = queried()
    assert {"commgraph_events_total", "commgraph_alerts_by_kind"} <= wanted
    assert wanted <= exported, sorted(wanted - exported)


def test_the_scrape_config_sends_the_bearer_token_from_a_file() -> None:
    text = (CONTRIB / "prometheus" / "prometheus.yml").read_text()
    assert "type: Bearer" in text and "credentials_file:" in text
    assert "metrics_path: /metrics" in text
