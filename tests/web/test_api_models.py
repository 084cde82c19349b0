"""``GET /api/v1/models`` and ``/api/v1/models/{service}`` against a real Daemon on a real
SQLite file, over real HTTP (aiohttp's test server).

The node (node-a) holds the site key: once thermo and ctl have learned, it publishes its own
models of them (source "self"). A model of valve from node-b arrives from the site broker
(source "sync"); valve, first seen afterwards, adopts it instead of learning.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.model import ModelEdge, ServiceModel, canonical_json, open_model, sign_model
from commgraph.signing import PublicKey, load_private, load_public, write_keypair
from commgraph.store import Store
from commgraph.web import api
from commgraph.web.auth import Credentials, load_or_create
from commgraph.web.state import STATE, AppState

T = 1_700_000_000.0
VALVE = ServiceModel(
    service="valve",
    version=3,
    node="node-b",
    issued_at=T - 100,
    edges=(
        ModelEdge(relation="deliver", peer="valves/+/set", direction="in", label="learned"),
        ModelEdge(
            relation="publish",
            peer="valves/status",
            direction="out",
            label="approved",
            decided_at=T - 200,
            decided_by="alice",
        ),
    ),
)


@dataclass
class Site:
    client: TestClient[web.Request, web.Application]
    daemon: Daemon
    credentials: Credentials
    trusted: dict[str, PublicKey]
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials.api_token}"}

    async def get(self, path: str, status: int = 200) -> Any:
        response = await self.client.get(path, headers=self.auth)
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    kid = write_keypair(tmp_path / "site.key", tmp_path / "site.pub")
    config = parse_config(
        {
            "node": {"name": "node-a"},
            "learning": {"duration": "1s"},
            "keys": {"private": "site.key", "trusted": ["site.pub"]},
        },
        base=tmp_path,
    )
    store = Store(tmp_path / "n.db")
    daemon = Daemon(config, store)
    daemon.observe(T, "thermo", "home/kitchen/temp", "publish", 12)
    daemon.observe(T + 0.5, "home/kitchen/temp", "ctl", "deliver", 12)
    await asyncio.sleep(0)  # the daemon writes new structure right after the event
    daemon.every_second()  # learning is over (the clock is now): publishes thermo and ctl
    envelope = sign_model(VALVE, load_private(tmp_path / "site.key"))
    assert daemon.model_received("valve", "node-b", envelope, source="sync")
    daemon.observe(T + 20, "valves/kitchen/set", "valve", "deliver", 3)  # adopts node-b's
    await asyncio.sleep(0)

    credentials = load_or_create(tmp_path / "creds")
    app = web.Application()
    app[STATE] = AppState(node=daemon, credentials=credentials)
    api.setup(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Site(client, daemon, credentials, {kid: load_public(tmp_path / "site.pub")}, kid)
    finally:
        await client.close()
        store.close()


async def test_models_need_the_token(site: Site) -> None:
    for path in ("/api/v1/models", "/api/v1/models/valve"):
        response = await site.client.get(path)
        assert response.status == 401
        body = await response.json()
        assert body["status"] == 401 and "token" in body["error"]


async def test_list_models(site: Site) -> None:
    rows = await site.get("/api/v1/models")
    assert [(r["service"], r["node"], r["source"]) for r in rows] == [
        ("ctl", "node-a", "self"),
        ("thermo", "node-a", "self"),
        ("valve", "node-b", "sync"),
    ]
    for row in rows:
        assert set(row) >= {"service", "node", "source", "received_at", "version", "edges"}
        assert isinstance(row["received_at"], float)
        # the envelope is a JSON object that still verifies, and holds what the row says
        assert set(row["envelope"]) == {"document", "key", "signature"}
        assert row["envelope"]["key"] == row["key"] == site.key
        model = open_model(json.dumps(row["envelope"]).encode(), site.trusted)
        assert row["model"] == json.loads(canonical_json(model))
        assert (model.service, model.node, model.version) == (
            row["service"],
            row["node"],
            row["version"],
        )
        assert row["edges"] == len(model.edges)
    thermo = rows[1]
    assert thermo["version"] == 1
    assert [(e["relation"], e["peer"], e["label"]) for e in thermo["model"]["edges"]] == [
        ("publish", "home/kitchen/temp", "learned")
    ]
    valve = rows[2]
    assert (valve["version"], valve["edges"], valve["issued_at"]) == (3, 2, T - 100)


async def test_models_of_one_service(site: Site) -> None:
    [row] = await site.get("/api/v1/models/valve")
    assert (row["service"], row["node"], row["source"]) == ("valve", "node-b", "sync")
    assert row["model"]["edges"][1]["decided_by"] == "alice"
    assert open_model(json.dumps(row["envelope"]).encode(), site.trusted) == VALVE
    [row] = await site.get("/api/v1/models/thermo")
    assert row["node"] == "node-a"


async def test_no_model_is_404(site: Site) -> None:
    body = await site.get("/api/v1/models/nosuch", status=404)
    assert body["status"] == 404 and "nosuch" in body["error"]


async def test_services_say_where_a_model_came_from(site: Site) -> None:
    rows = {r["name"]: r for r in await site.get("/api/v1/services")}
    assert rows["valve"]["model_from"] == "node-b"
    assert rows["valve"]["phase"] == "active"
    assert rows["thermo"]["model_from"] is None
    assert (await site.get("/api/v1/services/valve"))["model_from"] == "node-b"


async def test_openapi_describes_the_model_routes(site: Site) -> None:
    doc = await (await site.client.get("/api/v1/openapi.json")).json()
    listing = doc["paths"]["/api/v1/models"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Model"},
    }
    one = doc["paths"]["/api/v1/models/{service}"]["get"]
    assert {"200", "401", "404"} <= set(one["responses"])
    assert [p["name"] for p in one["parameters"]] == ["service"]
    schemas = doc["components"]["schemas"]
    assert {"service", "node", "source", "received_at", "version", "edges", "envelope"} <= set(
        schemas["Model"]["properties"]
    )
    assert "model_from" in schemas["Service"]["properties"]
