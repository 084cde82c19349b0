"""The REST API against a real Daemon on a real SQLite file, over real HTTP (aiohttp's test
server). The traffic: thermo publishes a topic ctrl reads (learned in the first second), then
two new edges after learning: alert 1 (thermo publish home/evil), alert 2 (ctrl tcp/443).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.links import make_action_token
from commgraph.store import SCHEMA_VERSION, Store
from commgraph.web import api, session
from commgraph.web.auth import Credentials, load_or_create
from commgraph.web.state import STATE, AppState
from conftest import seed_alerts, seeded_state

T = 1_700_000_000.0


@dataclass
class Site:
    client: TestClient[web.Request, web.Application]
    daemon: Daemon
    credentials: Credentials
    db: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials.api_token}"}

    async def get(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.get(path, headers=self.auth, **kwargs)
        assert response.status == status, await response.text()
        return await response.json()

    async def post(self, path: str, body: Any = None, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.post(path, headers=self.auth, json=body, **kwargs)
        assert response.status == status, await response.text()
        return await response.json()

    def link(self, alert: int, action: str, *, now: float | None = None, key: bytes = b"") -> str:
        return make_action_token(
            key or self.credentials.link_key,
            alert,
            action,
            now=time.time() if now is None else now,
            valid_for=3600,
        )


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    db = tmp_path / "n.db"
    config = parse_config(
        {
            "node": {"name": "node-a"},
            "learning": {"duration": "1s"},
            "modes": {"default": "protect"},
        }
    )
    store = Store(db)
    daemon = Daemon(config, store)
    daemon.observe(T, "thermo", "home/kitchen/temp", "publish", 12)
    daemon.observe(T, "ctrl", "home/kitchen/temp", "subscribe", 0)
    daemon.observe(T + 0.5, "home/kitchen/temp", "ctrl", "deliver", 12)
    assert daemon.observe(T + 10, "thermo", "home/evil", "publish", 5).alert == 1
    assert daemon.observe(T + 11, "ctrl", "example.com:443", "tcp/443", 5).alert == 2
    await asyncio.sleep(0)  # the daemon writes new structure right after the event

    async with serving(daemon, tmp_path) as served:
        yield served
    store.close()


@contextlib.asynccontextmanager
async def serving(daemon: Daemon, tmp_path: Path) -> AsyncIterator[Site]:
    """The API of ``daemon`` on a test server."""
    credentials = load_or_create(tmp_path / "creds")
    app = web.Application(client_max_size=64 * 1024)
    app[STATE] = AppState(node=daemon, credentials=credentials)
    api.setup(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Site(client, daemon, credentials, daemon.store.path)
    finally:
        await client.close()


def assert_error(body: Any, status: int, *words: str) -> None:
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    for word in words:
        assert word in body["error"]


# -- health, metrics -------------------------------------------------------------------------


async def test_healthz_needs_no_token(site: Site) -> None:
    response = await site.client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "node": "node-a", "schema": SCHEMA_VERSION}


async def test_metrics_needs_the_token(site: Site) -> None:
    response = await site.client.get("/metrics")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_metrics_reports_counts(site: Site) -> None:
    await site.post("/api/v1/alerts/1/approve")
    response = await site.client.get("/metrics", headers=site.auth)
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    for name in (
        "commgraph_events_total 5.0",
        "commgraph_edges 5.0",
        'commgraph_alerts{state="pending"} 1.0',
        'commgraph_alerts{state="approved"} 1.0',
        'commgraph_alerts{state="denied"} 0.0',
        'commgraph_edges_by_label{label="learned"} 3.0',
        'commgraph_edges_by_label{label="approved"} 1.0',
        'commgraph_edges_by_label{label="pending"} 1.0',
        'commgraph_services{phase="active"} 2.0',
        'commgraph_services{phase="learning"} 0.0',
        "commgraph_proxy_connections_open 0.0",
        "commgraph_proxy_connections_total 0.0",
        "commgraph_proxy_packets_total 0.0",
        "commgraph_proxy_blocked_total 0.0",
        "commgraph_decode_errors_total 0.0",
        "commgraph_engine_errors_total 0.0",
    ):
        assert name in text.splitlines(), name


# -- authentication --------------------------------------------------------------------------


async def test_no_token_is_401_with_challenge(site: Site) -> None:
    for path in ("/api/v1/services", "/api/v1/alerts", "/api/v1/alerts/1", "/api/v1/graph"):
        response = await site.client.get(path)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(await response.json(), 401, "token")


async def test_wrong_token_is_401(site: Site) -> None:
    for header in ("Bearer nope", f"Basic {site.credentials.api_token}", "Bearer", ""):
        response = await site.client.get("/api/v1/alerts", headers={"Authorization": header})
        assert response.status == 401, header
    response = await site.client.post("/api/v1/alerts/1/approve")
    assert response.status == 401
    assert (await site.get("/api/v1/alerts/1"))["state"] == "pending"


async def test_token_in_cookie_works(site: Site) -> None:
    cookie = {"Cookie": f"{session.COOKIE}={site.credentials.api_token}"}
    response = await site.client.get("/api/v1/alerts", headers=cookie)
    assert response.status == 200
    assert len(await response.json()) == 2
    wrong = await site.client.get("/api/v1/alerts", headers={"Cookie": f"{session.COOKIE}=nope"})
    assert wrong.status == 401
    # A form on another site cannot use the owner's cookie; the dashboard's own page can.
    evil = await site.client.post(
        "/api/v1/alerts/1/approve", headers={**cookie, "Origin": "https://evil.example"}
    )
    assert evil.status == 401
    own = f"http://{site.client.host}:{site.client.port}"
    same = await site.client.post("/api/v1/alerts/1/approve", headers={**cookie, "Origin": own})
    assert same.status == 200
    assert (await same.json())["state"] == "approved"


async def test_authorized_is_reusable(site: Site) -> None:
    from aiohttp.test_utils import make_mocked_request

    app = web.Application()
    credentials = Credentials(api_token="s3cret", link_key=b"k", created=False)
    app[STATE] = AppState(node=site.daemon, credentials=credentials)
    ok = make_mocked_request("GET", "/", headers={"Authorization": "Bearer s3cret"}, app=app)
    by_cookie = make_mocked_request(
        "GET", "/", headers={"Cookie": "commgraph_token=s3cret"}, app=app
    )
    bad = make_mocked_request("GET", "/", headers={"Cookie": "commgraph_token=s3cre"}, app=app)
    none = make_mocked_request("GET", "/", app=app)
    assert session.authorized(ok) and session.authorized(by_cookie)
    assert not session.authorized(bad) and not session.authorized(none)


# -- errors of the router --------------------------------------------------------------------


async def test_unknown_route_and_method_are_json(site: Site) -> None:
    body = await site.get("/api/v1/nowhere", status=404)
    assert_error(body, 404)
    assert (await site.client.get("/api/v1/nowhere")).status == 404  # no secret in a 404
    response = await site.client.delete("/api/v1/alerts/1", headers=site.auth)
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert_error(await response.json(), 405)


# -- services --------------------------------------------------------------------------------


async def test_services_list_with_progress(site: Site) -> None:
    rows = await site.get("/api/v1/services")
    assert [r["name"] for r in rows] == ["ctrl", "thermo"]
    for row in rows:
        assert row["phase"] == "active" and row["mode"] == "protect"
        assert row["learning_progress"] == 1.0 and row["learning_left_s"] == 0.0
        assert row["learning_ends_at"] == T + 1


async def test_service_still_learning_shows_progress(site: Site) -> None:
    # a newcomer after the site learned, in protect mode: held until the owner approves it
    site.daemon.observe(time.time(), "newcomer", "home/new", "publish", 1)
    row = await site.get("/api/v1/services/newcomer")
    assert row["phase"] == "held" and row["pending_alerts"] == 1
    (question,) = [a for a in await site.get("/api/v1/alerts") if a["kind"] == "new-service"]
    assert (question["src"], question["detail"]["examples"]) == ("newcomer", ["publish home/new"])
    await site.post(f"/api/v1/alerts/{question['id']}/approve")
    site.daemon.observe(time.time(), "newcomer", "home/new", "publish", 1)
    row = await site.get("/api/v1/services/newcomer")
    assert row["phase"] == "learning"
    assert 0.0 <= row["learning_progress"] <= 1.0
    assert 0.0 <= row["learning_left_s"] <= 1.0


async def test_service_detail_has_its_edges(site: Site) -> None:
    row = await site.get("/api/v1/services/thermo")
    assert row["name"] == "thermo" and row["pending_alerts"] == 1
    assert {(e["dst"], e["relation"], e["label"]) for e in row["edges"]} == {
        ("home/kitchen/temp", "publish", "learned"),
        ("home/evil", "publish", "pending"),
    }


async def test_unknown_service_is_404(site: Site) -> None:
    assert_error(await site.get("/api/v1/services/ghost", status=404), 404, "ghost")
    body = await site.post("/api/v1/services/ghost/mode", {"mode": "learn"}, status=404)
    assert_error(body, 404)
    assert_error(await site.post("/api/v1/services/ghost/learning/reset", status=404), 404)


async def test_set_mode(site: Site) -> None:
    decision = await site.post(
        "/api/v1/services/thermo/mode", {"mode": "monitor", "reason": "testing", "by": "ann"}
    )
    assert decision["action"] == "mode" and decision["service"] == "thermo"
    assert decision["detail"] == "monitor" and decision["by"] == "ann"
    row = await site.get("/api/v1/services/thermo")
    assert (row["mode"], row["mode_source"]) == ("monitor", "owner")
    await site.post("/api/v1/services/thermo/mode", {"mode": None})
    row = await site.get("/api/v1/services/thermo")
    assert (row["mode"], row["mode_source"]) == ("protect", "default")
    log = await site.get("/api/v1/decisions")
    assert [(d["action"], d["service"], d["by"]) for d in log] == [
        ("mode", "thermo", "ann"),
        ("mode", "thermo", "api"),
    ]


async def test_set_mode_bad_input(site: Site) -> None:
    body = await site.post("/api/v1/services/thermo/mode", {"mode": "panic"}, status=400)
    assert_error(body, 400, "'mode'", "panic")
    assert_error(await site.post("/api/v1/services/thermo/mode", {}, status=400), 400, "'mode'")
    body = await site.post("/api/v1/services/thermo/mode", {"mode": 3}, status=400)
    assert_error(body, 400, "'mode'")
    body = await site.post(
        "/api/v1/services/thermo/mode", {"mode": "learn", "reason": 5}, status=400
    )
    assert_error(body, 400, "'reason'")
    assert_error(await site.post("/api/v1/services/thermo/mode", [1], status=400), 400, "object")
    response = await site.client.post(
        "/api/v1/services/thermo/mode", data=b'{"mode": ', headers=site.auth
    )
    assert response.status == 400
    assert_error(await response.json(), 400, "JSON")
    empty = await site.client.post("/api/v1/services/thermo/mode", headers=site.auth)
    assert empty.status == 400
    assert await site.get("/api/v1/decisions") == []


async def test_reset_learning(site: Site) -> None:
    decision = await site.post("/api/v1/services/ctrl/learning/reset", {"reason": "new firmware"})
    assert decision["action"] == "reset" and decision["service"] == "ctrl"
    assert decision["reason"] == "new firmware" and decision["by"] == "api"
    row = await site.get("/api/v1/services/ctrl")
    assert row["phase"] == "learning"
    assert row["learning_progress"] is None  # the clock starts at its next message
    assert [d["action"] for d in await site.get("/api/v1/decisions")] == ["reset"]


# -- edges, alerts ---------------------------------------------------------------------------


async def test_edges_filters(site: Site) -> None:
    assert len(await site.get("/api/v1/edges")) == 5
    pending = await site.get("/api/v1/edges", params={"label": "pending"})
    assert {(e["src"], e["dst"]) for e in pending} == {
        ("thermo", "home/evil"),
        ("ctrl", "example.com:443"),
    }
    ctrl = await site.get("/api/v1/edges", params={"service": "ctrl", "label": "learned"})
    assert {e["relation"] for e in ctrl} == {"subscribe", "deliver"}
    assert await site.get("/api/v1/edges", params={"service": "ghost"}) == []
    body = await site.get("/api/v1/edges", params={"label": "weird"}, status=400)
    assert_error(body, 400, "'label'", "weird")


async def test_alerts_list_and_detail(site: Site) -> None:
    rows = await site.get("/api/v1/alerts")
    assert [(a["id"], a["state"], a["kind"]) for a in rows] == [
        (1, "pending", "new-edge"),
        (2, "pending", "new-edge"),
    ]
    response = await site.client.get("/api/v1/alerts", headers=site.auth)
    assert response.headers["X-Total-Count"] == "2" and "Link" not in response.headers
    one = await site.get("/api/v1/alerts/1")
    assert (one["src"], one["relation"], one["dst"]) == ("thermo", "publish", "home/evil")
    assert await site.get("/api/v1/alerts", params={"state": "approved"}) == []
    assert_error(await site.get("/api/v1/alerts", params={"state": "x"}, status=400), 400, "state")
    assert_error(await site.get("/api/v1/alerts/99", status=404), 404, "99")
    assert_error(await site.get("/api/v1/alerts/abc", status=400), 400, "alert id")
    assert_error(await site.get("/api/v1/alerts/²", status=400), 400, "alert id")
    assert_error(await site.get(f"/api/v1/alerts/{2**64}", status=404), 404)


async def test_approve_has_real_durable_effects(site: Site) -> None:
    row = await site.post("/api/v1/alerts/1/approve", {"reason": "new sensor", "by": "ann"})
    assert row["id"] == 1 and row["state"] == "approved"
    assert (row["decided_by"], row["reason"]) == ("ann", "new sensor")
    edges = await site.get("/api/v1/edges", params={"service": "thermo"})
    assert {e["dst"]: e["label"] for e in edges}["home/evil"] == "approved"
    assert [a["id"] for a in await site.get("/api/v1/alerts", params={"state": "pending"})] == [2]
    log = await site.get("/api/v1/decisions")
    assert len(log) == 1
    assert (log[0]["action"], log[0]["alert"], log[0]["by"]) == ("approve", 1, "ann")
    assert (log[0]["src"], log[0]["dst"], log[0]["relation"]) == ("thermo", "home/evil", "publish")
    with Store(site.db) as other:  # a second connection: committed, not just in memory
        assert {a["id"]: a["state"] for a in other.alerts()} == {1: "approved", 2: "pending"}
        assert len(other.decisions()) == 1
    # the engine itself lets the edge through now (protect mode)
    assert not site.daemon.observe(T + 20, "thermo", "home/evil", "publish", 5).block


async def test_approve_twice_is_409_and_deny_then_works(site: Site) -> None:
    await site.post("/api/v1/alerts/1/approve")
    assert_error(await site.post("/api/v1/alerts/1/approve", status=409), 409)
    row = await site.post("/api/v1/alerts/1/deny", {"reason": "changed my mind"})
    assert row["state"] == "denied" and row["decided_by"] == "api"
    assert len(await site.get("/api/v1/decisions")) == 2


async def test_deny(site: Site) -> None:
    row = await site.post("/api/v1/alerts/2/deny")
    assert row["state"] == "denied"
    denied = await site.get("/api/v1/edges", params={"label": "denied"})
    assert [(e["src"], e["dst"]) for e in denied] == [("ctrl", "example.com:443")]
    assert site.daemon.observe(T + 30, "ctrl", "example.com:443", "tcp/443", 5).block


async def test_decide_bad_input(site: Site) -> None:
    assert_error(await site.post("/api/v1/alerts/99/approve", status=404), 404, "99")
    assert_error(await site.post("/api/v1/alerts/x/deny", status=400), 400, "alert id")
    response = await site.client.post("/api/v1/alerts/1/approve", data=b"{nope", headers=site.auth)
    assert response.status == 400
    assert_error(await response.json(), 400, "JSON")
    assert_error(await site.post("/api/v1/alerts/1/deny", {"by": ""}, status=400), 400, "'by'")
    assert (await site.get("/api/v1/alerts/1"))["state"] == "pending"


# -- graph, timeline -------------------------------------------------------------------------


async def test_graph_topics_view(site: Site) -> None:
    for params in ({}, {"view": "topics"}):
        graph = await site.get("/api/v1/graph", params=params)
        assert {v["name"] for v in graph["vertices"]} == {
            "thermo",
            "ctrl",
            "home/kitchen/temp",
            "home/evil",
            "example.com:443",
        }
        assert len(graph["edges"]) == 5


async def test_graph_services_view(site: Site) -> None:
    graph = await site.get("/api/v1/graph", params={"view": "services"})
    assert {(e["src"], e["dst"], e["relation"]) for e in graph["edges"]} == {
        ("thermo", "ctrl", "via topics"),
        ("ctrl", "example.com:443", "tcp/443"),
    }
    assert {(v["name"], v["kind"]) for v in graph["vertices"]} == {
        ("thermo", "service"),
        ("ctrl", "service"),
        ("example.com:443", "host"),
    }
    assert_error(await site.get("/api/v1/graph", params={"view": "3d"}, status=400), 400, "view")


async def test_timeline_counts_decisions(site: Site) -> None:
    assert isinstance(await site.get("/api/v1/timeline"), list)
    await site.post("/api/v1/alerts/1/approve")
    rows = await site.get("/api/v1/timeline")
    assert sum(r["decisions"] for r in rows) == 1
    assert all({"ts", "edges", "anomalies", "decisions"} <= set(r) for r in rows)


# -- notification links ----------------------------------------------------------------------


async def test_action_link_approves_once(site: Site) -> None:
    token = site.link(1, "approve")
    response = await site.client.post(f"/api/v1/act/{token}")  # no API token needed
    assert response.status == 200
    body = await response.json()
    assert body["alert"]["state"] == "approved"
    assert body["alert"]["decided_by"] == "notification link"
    assert body["message"] == "Approved: thermo publish home/evil is normal now."
    again = await site.client.post(f"/api/v1/act/{token}")
    assert again.status == 409
    assert_error(await again.json(), 409, "already used")
    with Store(site.db) as other:
        assert [d["by"] for d in other.decisions()] == ["notification link"]


async def test_action_link_denies(site: Site) -> None:
    response = await site.client.post(f"/api/v1/act/{site.link(2, 'deny')}")
    assert response.status == 200
    body = await response.json()
    assert body["alert"]["state"] == "denied"
    assert body["message"].startswith("Denied: ctrl tcp/443 example.com:443")
    assert (await site.get("/api/v1/alerts/2"))["state"] == "denied"


async def test_action_link_expired_is_410(site: Site) -> None:
    token = make_action_token(
        site.credentials.link_key, 1, "approve", now=time.time() - 7200, valid_for=3600
    )
    response = await site.client.post(f"/api/v1/act/{token}")
    assert response.status == 410
    assert_error(await response.json(), 410, "expired")
    assert (await site.get("/api/v1/alerts/1"))["state"] == "pending"


async def test_action_link_forged_or_damaged_is_400(site: Site) -> None:
    forged = site.link(1, "approve", key=b"not the node's key" * 2)
    for token in (forged, "garbage", forged.replace(".", "")):
        response = await site.client.post(f"/api/v1/act/{token}")
        assert response.status == 400, token
        assert_error(await response.json(), 400)
    assert (await site.get("/api/v1/alerts/1"))["state"] == "pending"


async def test_action_link_for_unknown_or_decided_alert(site: Site) -> None:
    response = await site.client.post(f"/api/v1/act/{site.link(99, 'approve')}")
    assert response.status == 404
    await site.post("/api/v1/alerts/1/approve")
    response = await site.client.post(f"/api/v1/act/{site.link(1, 'approve')}")
    assert response.status == 409


async def test_action_link_is_post_only(site: Site) -> None:
    response = await site.client.get(f"/api/v1/act/{site.link(1, 'approve')}")
    assert response.status == 405
    assert (await site.get("/api/v1/alerts/1"))["state"] == "pending"


# -- the OpenAPI document --------------------------------------------------------------------


async def test_openapi_covers_every_route(site: Site) -> None:
    response = await site.client.get("/api/v1/openapi.json")  # public
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.0")
    registered: set[tuple[str, str]] = set()
    for route in site.client.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method != "HEAD" and (
            path.startswith("/api/v1") or path in ("/healthz", "/metrics")
        ):
            registered.add((path, route.method.lower()))
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert registered == documented
    refs = {s for s in str(doc).split("'") if s.startswith("#/components/schemas/")}
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(doc["components"]["schemas"])


async def test_openapi_documents_the_alert_pages(site: Site) -> None:
    operation = (await site.get("/api/v1/openapi.json"))["paths"]["/api/v1/alerts"]["get"]
    params = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert params["limit"] == {"type": "integer", "minimum": 1, "default": 100, "maximum": 1000}
    assert params["offset"] == {"type": "integer", "minimum": 0, "default": 0}
    assert set(operation["responses"]["200"]["headers"]) == {"X-Total-Count", "Link"}


# -- 20,000 alerts: pages --------------------------------------------------------------------

MANY = 20_000
PENDING = [i for i in range(1, MANY + 1) if seeded_state(i) == "pending"]


@pytest.fixture(scope="module")
def many_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("many") / "many.db"
    seed_alerts(db, MANY)
    return db


@pytest.fixture
async def many(tmp_path: Path, many_db: Path) -> AsyncIterator[Site]:
    """A node of 20,000 alerts (a fresh copy for each test) behind its API."""
    db = tmp_path / "n.db"
    shutil.copy(many_db, db)
    config = parse_config({"node": {"name": "node-a"}, "learning": {"duration": "10m"}})
    with Store(db) as store:
        async with serving(Daemon(config, store), tmp_path) as served:
            yield served


async def page(site: Site, **params: Any) -> tuple[list[int], int, dict[str, str]]:
    """(ids, X-Total-Count, {rel: link}) of one GET /api/v1/alerts."""
    response = await site.client.get("/api/v1/alerts", headers=site.auth, params=params)
    assert response.status == 200, await response.text()
    rows = await response.json()
    links = {
        rel: url
        for url, rel in re.findall(r'<([^>]*)>; rel="(\w+)"', response.headers.get("Link", ""))
    }
    return [row["id"] for row in rows], int(response.headers["X-Total-Count"]), links


async def test_alerts_come_in_pages_of_100_by_default(many: Site) -> None:
    ids, total, links = await page(many)
    assert ids == list(range(1, 101)) and total == MANY
    assert links == {"next": "/api/v1/alerts?limit=100&offset=100"}
    ids, total, links = await page(many, limit=1000, offset=MANY - 500)
    assert ids == list(range(MANY - 499, MANY + 1)) and total == MANY
    assert links == {"prev": f"/api/v1/alerts?limit=1000&offset={MANY - 1500}"}
    ids, _, links = await page(many, limit=7, offset=3)
    assert ids == [4, 5, 6, 7, 8, 9, 10]
    assert links == {
        "next": "/api/v1/alerts?limit=7&offset=10",
        "prev": "/api/v1/alerts?limit=7&offset=0",
    }


async def test_a_state_filters_the_pages_and_their_links(many: Site) -> None:
    ids, total, links = await page(many, state="pending", limit=50, offset=50)
    assert ids == PENDING[50:100] and total == len(PENDING)
    assert links == {
        "next": "/api/v1/alerts?state=pending&limit=50&offset=100",
        "prev": "/api/v1/alerts?state=pending&limit=50&offset=0",
    }
    # A client that follows rel="next" (aiohttp's own parser here) gets each alert once.
    seen: list[int] = []
    url: Any = "/api/v1/alerts?limit=1000&state=denied"
    while url is not None:
        response = await many.client.get(url, headers=many.auth)
        seen += [row["id"] for row in await response.json()]
        url = response.links.get("next", {}).get("url")  # resolved against the request
        url = url and url.relative()  # which the test client wants again
    assert seen == [i for i in range(1, MANY + 1) if seeded_state(i) == "denied"]


async def test_a_page_past_the_end_is_empty_and_points_back(many: Site) -> None:
    ids, total, links = await page(many, offset=10**30)
    assert ids == [] and total == MANY
    assert links == {"prev": f"/api/v1/alerts?limit=100&offset={MANY - 100}"}
    ids, total, links = await page(many, state="approved", limit=1000, offset=0)
    assert len(ids) == 1000 and total == MANY // 5 and set(links) == {"next"}


async def test_bad_page_parameters_are_400_naming_the_parameter(many: Site) -> None:
    for name, value in [
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "-5"),
        ("limit", "ten"),
        ("limit", "1.5"),
        ("limit", ""),
        ("limit", "1e3"),
        ("offset", "-1"),
        ("offset", " 3"),
        ("offset", "+3"),
        ("offset", "²"),
        ("offset", "9" * 5000),
    ]:
        body = await many.get("/api/v1/alerts", params={name: value}, status=400)
        assert_error(body, 400, f"query parameter {name!r}", "whole number")
        assert len(body["error"]) < 200
    body = await many.get("/api/v1/alerts", params={"limit": "5000"}, status=400)
    assert (
        body["error"] == "query parameter 'limit' must be a whole number from 1 to 1000, not '5000'"
    )


async def test_the_20000th_alert_by_itself(many: Site) -> None:
    one = await many.get(f"/api/v1/alerts/{MANY}")
    assert (one["id"], one["src"], one["dst"], one["state"]) == (
        MANY,
        "svc-0",
        f"site/svc-0/t{MANY}",
        "pending",
    )
    row = await many.post(f"/api/v1/alerts/{MANY}/approve", {"reason": "fine", "by": "ann"})
    assert (row["id"], row["state"], row["decided_by"], row["reason"]) == (
        MANY,
        "approved",
        "ann",
        "fine",
    )
    response = await many.client.post(f"/api/v1/act/{many.link(MANY - 1, 'deny')}")
    assert response.status == 200
    assert (await response.json())["alert"]["state"] == "denied"
    ids, total, _ = await page(many, state="pending", limit=2, offset=len(PENDING) - 4)
    assert ids == PENDING[-4:-2] and total == len(PENDING) - 2
    assert_error(await many.get(f"/api/v1/alerts/{MANY + 1}", status=404), 404, str(MANY + 1))


async def test_metrics_count_20000_alerts(many: Site) -> None:
    response = await many.client.get("/metrics", headers=many.auth)
    lines = (await response.text()).splitlines()
    assert f'commgraph_alerts{{state="pending"}} {float(len(PENDING))}' in lines
    assert f'commgraph_alerts{{state="approved"}} {float(MANY // 5)}' in lines


async def test_a_service_shows_its_promotion_to_protect(tmp_path: Path) -> None:
    config = parse_config(
        {"learning": {"duration": "1s"}, "modes": {"default": "monitor", "promote_after": "1d"}}
    )
    clock = [T]
    store = Store(tmp_path / "n.db")
    daemon = Daemon(config, store, clock=lambda: clock[0])
    daemon.observe(T, "thermo", "home/kitchen/temp", "publish", 12)
    clock[0] = T + 5
    daemon.every_second()
    try:
        async with serving(daemon, tmp_path) as site:
            row = await site.get("/api/v1/services/thermo")
            assert (row["mode"], row["mode_source"], row["mode_set_by"]) == (
                "monitor",
                "default",
                None,
            )
            assert (row["promotion"], row["promote_at"]) == ("counting", T + 1 + 86400)
            clock[0] = T + 1 + 86400
            daemon.every_second()
            row = await site.get("/api/v1/services/thermo")
            assert (row["mode"], row["mode_source"], row["mode_set_by"], row["mode_set_at"]) == (
                "protect",
                "promoted",
                "commgraph",
                T + 1 + 86400,
            )
            assert (row["promotion"], row["promote_at"]) == (None, None)
            [decision] = await site.get("/api/v1/decisions")
            assert (decision["by"], decision["service"], decision["detail"]) == (
                "commgraph",
                "thermo",
                "protect",
            )
            schema = (await site.get("/api/v1/openapi.json"))["components"]["schemas"]
            assert {"mode_set_by", "mode_set_at", "promote_at", "promotion"} <= set(
                schema["Service"]["properties"]
            )
    finally:
        store.close()


async def test_metrics_count_the_failures_of_each_part(site: Site) -> None:
    class Broken:
        def on_alert(self, notice: object) -> None:
            raise RuntimeError("the phone is off")

    site.daemon.hooks.add("notify", Broken())
    assert site.daemon.observe(T + 12, "thermo", "home/worse", "publish", 5).alert == 3
    await asyncio.sleep(0)
    text = await (await site.client.get("/metrics", headers=site.auth)).text()
    assert 'commgraph_part_failures_total{part="notify"} 1.0' in text
    assert 'commgraph_part_failures_total{part="tick"} 0.0' in text
