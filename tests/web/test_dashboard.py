"""The dashboard against a real Daemon on a temporary SQLite file: first through aiohttp's
test client (login, CSRF, owner actions, notification links), then end to end in Debian's
Chromium driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from commgraph.alerts import Action
from commgraph.config import parse_config
from commgraph.daemon import Daemon
from commgraph.links import make_action_token
from commgraph.model import ModelEdge, ServiceModel, sign_model
from commgraph.signing import load_private, write_keypair
from commgraph.store import Store
from commgraph.web import dashboard
from commgraph.web.auth import Credentials, load_or_create
from commgraph.web.state import STATE, AppState
from conftest import free_port, seed_alerts, seeded_state

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path("/tmp/commgraph-artifacts")
PAGES = ["/", "/graph", "/graph?view=services", "/services/thermo-kitchen", "/alerts", "/timeline"]


@dataclass
class Site:
    daemon: Daemon
    credentials: Credentials
    clock: list[float]
    alert: int  # the pending alert: thermo-kitchen publish valves/kitchen/set

    def observe(self, src: str, dst: str, relation: str, size: int = 5) -> Any:
        self.clock[0] += 1.0
        return self.daemon.observe(self.clock[0], src, dst, relation, size)


def learning_then_anomaly(site_daemon: Daemon, clock: list[float]) -> int:
    """Ten minutes of learning, then the kitchen sensor commands the kitchen valve."""
    observe = site_daemon.observe
    t = clock[0]
    observe(t, "thermo-kitchen", "home/kitchen/temp", "publish", 12)
    observe(t + 0.1, "home/kitchen/temp", "controller", "deliver", 12)
    observe(t + 1, "controller", "valves/kitchen/set", "publish", 9)
    observe(t + 1.1, "valves/kitchen/set", "valve-kitchen", "deliver", 9)
    clock[0] = t + 700
    site_daemon.every_second()
    verdict = observe(clock[0], "thermo-kitchen", "valves/kitchen/set", "publish", 5)
    assert verdict.alert is not None
    site_daemon.every_second()
    return int(verdict.alert)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    clock = [time.time() - 3600]
    config = parse_config({"node": {"name": "node-a"}, "learning": {"duration": "10m"}})
    store = Store(tmp_path / "node.db")
    daemon = Daemon(config, store, clock=lambda: clock[0])
    alert = learning_then_anomaly(daemon, clock)
    yield Site(daemon, load_or_create(tmp_path / "credentials"), clock, alert)
    store.close()


@pytest.fixture
async def client(site: Site) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    app[STATE] = AppState(node=site.daemon, credentials=site.credentials)
    dashboard.setup(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field in the page"
    return found.group(1)


async def log_in(client: TestClient[web.Request, web.Application], token: str) -> Any:
    page = await (await client.get("/login")).text()
    return await client.post(
        "/login",
        data={"token": token, "login_nonce": field(page, "login_nonce")},
        allow_redirects=False,
    )


async def csrf(client: TestClient[web.Request, web.Application], path: str = "/") -> str:
    return field(await (await client.get(path)).text(), "csrf")


def alert_state(site: Site, alert: int) -> dict[str, Any]:
    [row] = [a for a in site.daemon.store.alerts() if a["id"] == alert]
    return row


# -- login and CSRF ---------------------------------------------------------------------------


async def test_every_page_needs_login(client: TestClient[web.Request, web.Application]) -> None:
    for path in PAGES:
        response = await client.get(path, allow_redirects=False)
        assert response.status == 303, path
        assert response.headers["Location"] == "/login"
    response = await client.post("/alerts/1/approve", data={}, allow_redirects=False)
    assert response.headers["Location"] == "/login"


async def test_wrong_token_is_refused(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    response = await log_in(client, "not-the-token")
    assert response.status == 401
    assert "not this node" in await response.text()
    assert (await client.get("/", allow_redirects=False)).status == 303
    # A login post without the form's own nonce (another site's form) is refused too.
    response = await client.post("/login", data={"token": site.credentials.api_token})
    assert response.status == 403


async def test_login_sets_a_strict_httponly_cookie_and_logout_clears_it(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    response = await log_in(client, site.credentials.api_token)
    assert response.status == 303 and response.headers["Location"] == "/"
    cookie = response.cookies["commgraph_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    for path in PAGES:
        assert (await client.get(path)).status == 200, path
    token = await csrf(client)
    response = await client.post("/logout", data={"csrf": token}, allow_redirects=False)
    assert response.headers["Location"] == "/login"
    client.session.cookie_jar.clear()
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_a_form_without_the_csrf_field_changes_nothing(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    await log_in(client, site.credentials.api_token)
    for data in ({}, {"csrf": "0" * 64}):
        response = await client.post(f"/alerts/{site.alert}/approve", data=data)
        assert response.status == 403
        response = await client.post("/services/thermo-kitchen/mode", data=data | {"mode": "learn"})
        assert response.status == 403
        response = await client.post("/services/thermo-kitchen/reset", data=data)
        assert response.status == 403
    assert alert_state(site, site.alert)["state"] == "pending"
    assert site.daemon.store.decisions() == []


# -- owner actions ----------------------------------------------------------------------------


async def test_overview_lists_the_pending_alert_and_approving_it_works(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    await log_in(client, site.credentials.api_token)
    page = await (await client.get("/")).text()
    assert "thermo-kitchen publishes to valves/kitchen/set" in page
    assert f'action="/alerts/{site.alert}/approve"' in page
    response = await client.post(
        f"/alerts/{site.alert}/approve",
        data={"csrf": field(page, "csrf"), "next": "/", "reason": "the new valve logic"},
        allow_redirects=False,
    )
    assert response.status == 303 and response.headers["Location"] == "/"
    row = alert_state(site, site.alert)
    assert (row["state"], row["decided_by"], row["reason"]) == (
        "approved",
        "dashboard",
        "the new valve logic",
    )
    page = await (await client.get("/")).text()
    assert f"Alert {site.alert} approved." in page
    assert "No pending alerts" in page
    # The flash is shown once.
    assert f"Alert {site.alert} approved." not in await (await client.get("/")).text()
    # Deciding the same way again is refused with a message, not an error page.
    response = await client.post(
        f"/alerts/{site.alert}/approve", data={"csrf": await csrf(client), "next": "/alerts"}
    )
    assert response.status == 200 and "Not done" in await response.text()


async def test_deny_from_the_alerts_table(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    await log_in(client, site.credentials.api_token)
    page = await (await client.get("/alerts?state=pending")).text()
    assert f'id="alert-{site.alert}"' in page
    response = await client.post(
        f"/alerts/{site.alert}/deny",
        data={"csrf": field(page, "csrf"), "next": "/alerts?state=pending"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/alerts?state=pending"
    assert alert_state(site, site.alert)["state"] == "denied"
    page = await (await client.get("/graph")).text()
    assert 'data-src="thermo-kitchen" data-dst="valves/kitchen/set" data-relation="publish"' in page
    assert (await client.get("/alerts?state=bogus")).status == 400


async def test_mode_switch(client: TestClient[web.Request, web.Application], site: Site) -> None:
    await log_in(client, site.credentials.api_token)
    token = await csrf(client, "/services/thermo-kitchen")
    response = await client.post(
        "/services/thermo-kitchen/mode",
        data={"csrf": token, "mode": "protect", "next": "/services/thermo-kitchen"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/services/thermo-kitchen"
    [svc] = [s for s in site.daemon.store.services() if s["name"] == "thermo-kitchen"]
    assert (svc["mode"], svc["mode_source"]) == ("protect", "owner")
    page = await (await client.get("/services/thermo-kitchen")).text()
    assert "mode set to protect" in page
    await client.post("/services/thermo-kitchen/mode", data={"csrf": token, "mode": "default"})
    [svc] = [s for s in site.daemon.store.services() if s["name"] == "thermo-kitchen"]
    assert svc["mode_source"] == "default"
    response = await client.post("/services/nobody/mode", data={"csrf": token, "mode": "learn"})
    assert response.status == 404


async def test_reset_learning_then_the_progress_bar(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    await log_in(client, site.credentials.api_token)
    page = await (await client.get("/services/thermo-kitchen")).text()
    assert "<progress" not in page  # learned long ago
    response = await client.post(
        "/services/thermo-kitchen/reset", data={"csrf": field(page, "csrf")}
    )
    assert response.status == 200
    [decision] = site.daemon.store.decisions()
    assert (decision["action"], decision["service"], decision["by"]) == (
        "reset",
        "thermo-kitchen",
        "dashboard",
    )
    # Learning starts again at its next message: now, by the wall clock, for ten minutes.
    site.clock[0] = time.time()
    site.daemon.observe(site.clock[0], "thermo-kitchen", "home/kitchen/temp", "publish", 3)
    site.daemon.every_second()  # what the running daemon does within a second
    page = await (await client.get("/services/thermo-kitchen")).text()
    assert "<progress" in page
    assert re.search(r"Learning: \d+% · (9|10) min", page), page


async def test_names_from_the_network_are_escaped(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    site.observe("<script>alert(1)</script>", 'x"&<img src=x>', "publish")
    await asyncio.sleep(0)
    await log_in(client, site.credentials.api_token)
    for path in ["/", "/graph", "/graph?view=services", "/alerts"]:
        page = await (await client.get(path)).text()
        assert "<script>" not in page and "<img" not in page, path
    page = await (await client.get("/graph")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Its own page, with the slash in its name quoted in the link.
    href = re.search(r'href="(/services/[^"]*script[^"]*)"', page)
    assert href is not None
    page = await (await client.get(href.group(1))).text()
    assert "<h1>&lt;script&gt;alert(1)&lt;/script&gt;</h1>" in page


async def test_a_newcomer_waits_for_you_with_learn_it_and_block_it(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    site.observe("intruder-<b>7</b>", "valves/kitchen/set", "publish")
    site.daemon.every_second()
    await log_in(client, site.credentials.api_token)
    page = await (await client.get("/")).text()
    assert "a newcomer waiting for you" in page
    assert "a new device intruder-&lt;b&gt;7&lt;/b&gt; connected to node-a and published to" in page
    assert "<b>7</b>" not in page, "a client id is data, never markup"
    assert "Approve (learn it)" in page and "Deny (block it)" in page
    [question] = [
        a for a in site.daemon.store.alerts(state="pending") if a["kind"] == "new-service"
    ]
    assert "<code>publish valves/kitchen/set</code>" in page
    response = await client.post(
        f"/alerts/{question['id']}/approve",
        data={"csrf": field(page, "csrf"), "next": "/", "reason": "my new valve tester"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert alert_state(site, question["id"])["state"] == "approved"
    services = {s["name"]: s for s in site.daemon.store.services()}
    assert services["intruder-<b>7</b>"]["phase"] == "learning"


# -- notification links -----------------------------------------------------------------------


def link(site: Site, action: str = "approve", **kw: Any) -> str:
    kw.setdefault("now", time.time())
    kw.setdefault("valid_for", 3600.0)
    return "/act/" + make_action_token(site.credentials.link_key, site.alert, action, **kw)


async def test_act_link_shows_then_does_it_once(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    url = link(site)
    page = await client.get(url)
    assert page.status == 200
    text = await page.text()
    assert "Approve:</b> thermo-kitchen publishes to valves/kitchen/set" in text
    assert alert_state(site, site.alert)["state"] == "pending"  # GET changes nothing
    done = await client.post(url)
    assert done.status == 200
    assert "Approved: thermo-kitchen publishes to valves/kitchen/set" in await done.text()
    row = alert_state(site, site.alert)
    assert (row["state"], row["decided_by"]) == ("approved", "notification link")
    again = await client.post(url)
    assert again.status == 409
    assert "already used" in await again.text()


async def test_act_link_expired_or_forged(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    expired = link(site, "deny", now=time.time() - 7200, valid_for=60)
    for response in (await client.get(expired), await client.post(expired)):
        assert response.status == 410
        assert "expired" in await response.text()
    forged = link(site, "deny")[:-4] + "AAAA"
    assert (await client.post(forged)).status == 400
    assert (await client.post("/act/garbage")).status == 400
    assert alert_state(site, site.alert)["state"] == "pending"


async def test_act_link_for_an_alert_decided_meanwhile(
    client: TestClient[web.Request, web.Application], site: Site
) -> None:
    site.daemon.decide(site.alert, Action.APPROVE, by="cli")
    response = await client.post(link(site, "approve"))
    assert response.status == 409
    assert "approved" in (await response.text()).lower()


# -- site models ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def logged_in(daemon: Daemon, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The dashboard of ``daemon`` in a test client, the owner logged in."""
    credentials = load_or_create(tmp_path / "credentials")
    app = web.Application()
    app[STATE] = AppState(node=daemon, credentials=credentials)
    dashboard.setup(app)
    async with TestClient(TestServer(app)) as client:
        await log_in(client, credentials.api_token)
        yield client


async def test_an_adopted_service_says_whose_model_it_follows(tmp_path: Path) -> None:
    write_keypair(tmp_path / "site.key", tmp_path / "site.pub")
    config = parse_config(
        {"node": {"name": "node-a"}, "keys": {"trusted": ["site.pub"]}}, base=tmp_path
    )
    store = Store(tmp_path / "node.db")
    daemon = Daemon(config, store)
    model = ServiceModel(
        service="valve-kitchen",
        version=2,
        node="node-b",
        issued_at=time.time() - 60,
        edges=(
            ModelEdge(relation="deliver", peer="valves/+/set", direction="in", label="learned"),
        ),
    )
    envelope = sign_model(model, load_private(tmp_path / "site.key"))
    assert daemon.model_received("valve-kitchen", "node-b", envelope, source="sync")
    daemon.observe(time.time(), "valves/kitchen/set", "valve-kitchen", "deliver", 3)
    daemon.observe(time.time(), "thermo-kitchen", "home/kitchen/temp", "publish", 3)
    await asyncio.sleep(0)
    try:
        async with logged_in(daemon, tmp_path) as client:
            page = await (await client.get("/")).text()
            assert page.count("model from node node-b") == 1  # valve only, not the sensor
            page = await (await client.get("/services/valve-kitchen")).text()
            assert "model from node <b>node-b</b>" in page
            assert "Adopted the site model from node node-b" in page
            assert "Site models (1)" in page and "<td>node-b</td><td>sync</td><td>2</td>" in page
            page = await (await client.get("/services/thermo-kitchen")).text()
            assert "model from" not in page and "Site models" not in page
    finally:
        store.close()


# -- end to end in Chromium -------------------------------------------------------------------


def heating_site_in_the_last_40_minutes(daemon: Daemon) -> None:
    """The demo's heating site, plus two dozen sensors and a logger so the picture is not a
    toy; two alerts: the kitchen sensor commands its valve, the controller calls a host."""
    from commgraph.demo import heating_site

    start = time.time() - 40 * 60
    events = [
        (e.ts, e.src, e.dst, e.relation, e.size) for e in heating_site(minutes=40, start=start)
    ]
    for i in range(24):
        topic = f"site/zone-{i % 6}/sensor-{i:02d}/value"
        for at in range(60 + i * 5, 40 * 60, 300):
            events.append((start + at, f"sensor-{i:02d}", topic, "publish", 4))
            events.append((start + at + 0.1, topic, "logger", "deliver", 4))
    events.append((start + 1500, "heating-controller", "api.weather.example:443", "tcp/443", 0))
    for ts, src, dst, relation, size in sorted(events, key=lambda e: e[0]):
        daemon.observe(ts, src, dst, relation, size)
    daemon.every_second()


def save(shot: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)


async def test_end_to_end_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            "Chromium is missing at /usr/bin/chromium; install it with: "
            "sudo apt-get install -y chromium"
        )
    from playwright.async_api import async_playwright

    port = free_port()
    config = parse_config(
        {
            "node": {"name": "node-a"},
            "learning": {"duration": "10m"},
            "api": {"listen": f"127.0.0.1:{port}", "credentials": str(tmp_path / "cred.json")},
        }
    )
    with Store(tmp_path / "node.db") as store:
        daemon = Daemon(config, store)
        heating_site_in_the_last_40_minutes(daemon)
        [pending] = [
            a
            for a in store.alerts(state="pending")
            if (a["src"], a["dst"]) == ("thermo-kitchen", "valves/kitchen/set")
        ]
        runner = await daemon._start_web()  # the daemon's own web server, in this loop
        assert runner is not None
        token = load_or_create(daemon.credentials_path()).api_token
        base = f"http://127.0.0.1:{port}"
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    await browse(browser, base, token, daemon, pending, tmp_path)
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()


async def browse(
    browser: Any, base: str, token: str, daemon: Daemon, pending: dict[str, Any], out: Path
) -> None:
    store = daemon.store
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(base + "/")
    assert page.url == base + "/login"
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")
    card = page.locator(f"#alert-{pending['id']}")
    assert "thermo-kitchen publishes to valves/kitchen/set" in await card.inner_text()
    await page.screenshot(path=out / "overview-pending.png", full_page=True)
    save(out / "overview-pending.png")

    await card.locator("input[name=reason]").fill("the kitchen sensor drives its valve now")
    await card.get_by_role("button", name="Approve").click()
    await page.wait_for_url(base + "/")
    assert f"Alert {pending['id']} approved." in await page.locator(".flash").inner_text()
    [row] = [a for a in store.alerts() if a["id"] == pending["id"]]
    assert (row["state"], row["decided_by"]) == ("approved", "dashboard")

    await page.goto(base + "/graph")
    edge = page.locator(
        'svg path.edge[data-src="thermo-kitchen"][data-dst="valves/kitchen/set"]'
        '[data-relation="publish"]'
    )
    assert await edge.get_attribute("data-label") == "approved"
    table_row = page.locator(
        'tr.edge-row[data-src="thermo-kitchen"][data-dst="valves/kitchen/set"]'
    )
    assert "approved" in await table_row.inner_text()
    await page.screenshot(path=out / "graph.png", full_page=True)
    save(out / "graph.png")
    await page.goto(base + "/graph?view=services")
    await page.screenshot(path=out / "graph-services.png", full_page=True)
    save(out / "graph-services.png")

    # The same message again: approved now, so no new alert.
    before = store.alerts()
    verdict = daemon.observe(time.time(), "thermo-kitchen", "valves/kitchen/set", "publish", 11)
    assert verdict.alert is None
    await asyncio.sleep(0)
    daemon.every_second()
    assert [(a["id"], a["state"]) for a in store.alerts()] == [
        (a["id"], a["state"]) for a in before
    ]
    await page.goto(base + "/graph")
    assert await edge.get_attribute("data-label") == "approved"

    await page.goto(base + "/timeline")
    assert await page.locator("#timeline svg path.series-edges").count() == 1
    await page.screenshot(path=out / "timeline.png", full_page=True)
    save(out / "timeline.png")

    phone = await browser.new_page(viewport={"width": 390, "height": 844})
    await phone.context.add_cookies(await page.context.cookies())
    await phone.goto(base + "/services/thermo-kitchen")
    await phone.screenshot(path=out / "phone-service.png", full_page=True)
    save(out / "phone-service.png")


async def test_the_service_page_shows_each_edges_period_rate_and_sizes(tmp_path: Path) -> None:
    config = parse_config({"node": {"name": "node-a"}, "learning": {"duration": "10m"}})
    store = Store(tmp_path / "node.db")
    daemon = Daemon(config, store)
    start = time.time() - 3600
    for n in range(30):  # a heartbeat every 60 s, 12 to 14 bytes
        daemon.engine.observe_fields(
            start + 60 * n, "lock-hub", "locks/front/state", "publish", 12 + n % 3
        )
    daemon.engine.tick(start + 60 * 30)
    store.flush(daemon.engine)
    try:
        async with logged_in(daemon, tmp_path) as client:
            page = await (await client.get("/services/lock-hub")).text()
            assert '<td class="period">60 s ± ' in page
            assert "12–14 B" in page
    finally:
        store.close()


# -- 20,000 alerts ----------------------------------------------------------------------------

MANY = 20_000
NEWEST_PENDING = [i for i in range(MANY, 0, -1) if seeded_state(i) == "pending"]


@pytest.fixture(scope="module")
def many_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("many") / "many.db"
    seed_alerts(db, MANY)
    return db


@pytest.fixture
def many(tmp_path: Path, many_db: Path) -> Iterator[Daemon]:
    """A node of 20,000 alerts (a fresh copy for each test)."""
    db = tmp_path / "node.db"
    shutil.copy(many_db, db)
    config = parse_config(
        {
            "node": {"name": "node-a"},
            "learning": {"duration": "10m"},
            "api": {"listen": f"127.0.0.1:{free_port()}", "credentials": str(tmp_path / "c")},
        }
    )
    with Store(db) as store:
        yield Daemon(config, store)


def alert_ids(page: str) -> list[int]:
    """The alerts shown on a page, in order: cards on the overview, rows on /alerts."""
    return [int(i) for i in re.findall(r'<(?:li|tr) [^>]*id="alert-(\d+)"', page)]


async def test_the_overview_shows_the_newest_pending_alerts_and_how_many_more(
    many: Daemon, tmp_path: Path
) -> None:
    async with logged_in(many, tmp_path) as client:
        page = await (await client.get("/")).text()
    assert alert_ids(page) == NEWEST_PENDING[: dashboard.OVERVIEW_ALERTS]
    waiting = len(NEWEST_PENDING)
    assert f"Waiting for you ({waiting})" in page
    more = waiting - dashboard.OVERVIEW_ALERTS
    assert f'<a href="/alerts?state=pending">… and {more} more</a>' in page
    decisions = page.split('<ul class="decisions">')[1].split("</ul>")[0]
    assert decisions.count("<li>") == 10


async def test_the_alerts_page_comes_in_pages(many: Daemon, tmp_path: Path) -> None:
    size = dashboard.ALERTS_PAGE
    async with logged_in(many, tmp_path) as client:
        page = await (await client.get("/alerts?state=pending&page=2")).text()
        assert alert_ids(page) == NEWEST_PENDING[size : 2 * size]
        assert f"showing {size + 1}–{2 * size} of {len(NEWEST_PENDING)}" in page
        assert '<a rel="prev" href="/alerts?state=pending&amp;page=1">Previous</a>' in page
        assert '<a rel="next" href="/alerts?state=pending&amp;page=3">Next</a>' in page
        page = await (await client.get("/alerts")).text()
        assert alert_ids(page) == list(range(MANY, MANY - size, -1))
        assert 'rel="prev"' not in page and '<a rel="next" href="/alerts?page=2">' in page
        last = MANY // size
        page = await (await client.get(f"/alerts?page={last}")).text()
        assert alert_ids(page) == list(range(size, 0, -1))
        assert f"showing {MANY - size + 1}–{MANY} of {MANY}" in page
        assert 'rel="next"' not in page
        # Past the end (its alerts were just decided, say): the last page.
        beyond = await (await client.get(f"/alerts?page={10**30}")).text()
        assert alert_ids(beyond) == alert_ids(page)
        assert f"showing {MANY - size + 1}–{MANY} of {MANY}" in beyond
        for bad in ("0", "-1", "two", "1.0", ""):
            response = await client.get("/alerts", params={"page": bad})
            assert response.status == 400, bad
            assert "page must be a whole number" in await response.text()


async def test_the_20000th_alert_is_decided_from_its_page(many: Daemon, tmp_path: Path) -> None:
    async with logged_in(many, tmp_path) as client:
        page = await (await client.get("/alerts?state=pending")).text()
        assert alert_ids(page)[0] == MANY
        response = await client.post(
            f"/alerts/{MANY}/deny",
            data={"csrf": field(page, "csrf"), "next": "/alerts?state=pending"},
            allow_redirects=False,
        )
        assert response.headers["Location"] == "/alerts?state=pending"
        page = await (await client.get("/alerts?state=pending")).text()
        assert f"Alert {MANY} denied." in page
        assert alert_ids(page)[0] == NEWEST_PENDING[1]
        credentials = load_or_create(tmp_path / "credentials")
        token = make_action_token(
            credentials.link_key, MANY, "approve", now=time.time(), valid_for=60
        )
        page = await (await client.get(f"/act/{token}")).text()
        assert f"Approve:</b> svc-0 publishes to site/svc-0/t{MANY}" in page
    row = many.store.alert(MANY)
    assert row is not None and (row["state"], row["decided_by"]) == ("denied", "dashboard")


@contextlib.asynccontextmanager
async def chromium_page(daemon: Daemon) -> AsyncIterator[tuple[Any, str]]:
    """(a Chromium page logged in to the overview, the base URL) of the daemon's own web
    server, whose [api] listen and credentials its config names."""
    if not CHROMIUM.exists():
        pytest.fail(
            "Chromium is missing at /usr/bin/chromium; install it with: "
            "sudo apt-get install -y chromium"
        )
    from playwright.async_api import async_playwright

    listen = daemon.config.api.listen
    assert listen is not None
    base = f"http://127.0.0.1:{listen.port}"
    runner = await daemon._start_web()  # the daemon's own web server, in this loop
    assert runner is not None
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(base + "/login")
                token = load_or_create(daemon.credentials_path()).api_token
                await page.fill("input[name=token]", token)
                await page.click("button[type=submit]")
                await page.wait_for_url(base + "/")
                yield page, base
            finally:
                await browser.close()
    finally:
        await runner.cleanup()


async def test_paging_through_20000_alerts_in_chromium(many: Daemon, tmp_path: Path) -> None:
    async with chromium_page(many) as (page, base):
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.screenshot(path=tmp_path / "overview-many.png", full_page=True)
        save(tmp_path / "overview-many.png")
        await page.click("text=… and")
        await page.wait_for_url(base + "/alerts?state=pending")
        await page.get_by_role("link", name="Next").click()
        await page.wait_for_url(base + "/alerts?state=pending&page=2")
        size = dashboard.ALERTS_PAGE
        rows = page.locator("table.alerts tbody tr")
        assert await rows.count() == size
        assert await rows.first.get_attribute("id") == f"alert-{NEWEST_PENDING[size]}"
        pager = await page.locator(".pager").inner_text()
        assert f"showing {size + 1}–{2 * size} of {len(NEWEST_PENDING)}" in pager
        await page.screenshot(path=tmp_path / "alerts-page-2.png", full_page=True)
        save(tmp_path / "alerts-page-2.png")
        await page.get_by_role("link", name="Previous").click()
        await page.wait_for_url(base + "/alerts?state=pending&page=1")
        assert await rows.first.get_attribute("id") == f"alert-{MANY}"


# -- promotion to protect ([modes] promote_after) ---------------------------------------------


def promoting_site(tmp_path: Path, clock: list[float]) -> Daemon:
    """The fixture's site with ``promote_after = "7d"``, its web side on a free port: the
    kitchen sensor's question stays open, the valve's week of quiet starts when it learned."""
    config = parse_config(
        {
            "node": {"name": "node-a"},
            "learning": {"duration": "10m"},
            "modes": {"default": "monitor", "promote_after": "7d"},
            "api": {"listen": f"127.0.0.1:{free_port()}"},
        }
    )
    daemon = Daemon(config, Store(tmp_path / "node.db"), clock=lambda: clock[0])
    learning_then_anomaly(daemon, clock)
    return daemon


async def test_the_service_page_says_when_it_will_be_protected_and_who_protected_it(
    tmp_path: Path,
) -> None:
    clock = [time.time() - 30 * 86400]
    daemon = promoting_site(tmp_path, clock)
    [valve] = [s for s in daemon.store.services() if s["name"] == "valve-kitchen"]
    promote_at = valve["learned_at"] + 7 * 86400
    assert (valve["promotion"], valve["promote_at"]) == ("counting", promote_at)
    try:
        async with logged_in(daemon, tmp_path) as client:
            page = await (await client.get("/services/valve-kitchen")).text()
            assert f"Protect on <b>{dashboard._when(promote_at)}</b>" in page
            assert "after 7d in monitor mode with no open question" in page
            page = await (await client.get("/services/thermo-kitchen")).text()
            assert "Promotion to protect waits until the open questions" in page
            assert "Protect on" not in page

            clock[0] = promote_at
            daemon.every_second()  # the daemon's periodic tick
            page = await (await client.get("/services/valve-kitchen")).text()
            assert (
                f"Mode protect set by <b>commgraph</b>\n    on {dashboard._when(promote_at)}"
                in page
            )
            assert "Protect on" not in page
            assert "promoted from monitor" in page
            page = await (await client.get("/services/thermo-kitchen")).text()
            assert "set by" not in page  # still waiting for its owner
            overview = await (await client.get("/")).text()
            assert "by commgraph" in overview
            assert any(
                d["by"] == "commgraph" and d["service"] == "valve-kitchen"
                for d in daemon.store.decisions()
            )
    finally:
        daemon.store.close()


async def test_a_promotion_in_chromium(tmp_path: Path) -> None:
    clock = [time.time() - 30 * 86400]
    daemon = promoting_site(tmp_path, clock)
    [valve] = [s for s in daemon.store.services() if s["name"] == "valve-kitchen"]
    try:
        async with chromium_page(daemon) as (page, base):
            await page.goto(base + "/services/valve-kitchen")
            text = await page.locator(".promotion").inner_text()
            assert text.startswith(f"Protect on {dashboard._when(valve['promote_at'])}")
            clock[0] = valve["promote_at"]
            daemon.every_second()
            await page.goto(base + "/services/valve-kitchen")
            said = await page.locator(".mode-set").inner_text()
            assert said.startswith("Mode protect set by commgraph on")
            assert await page.locator(".promotion").count() == 0
            await page.screenshot(path=tmp_path / "service-promoted.png", full_page=True)
            save(tmp_path / "service-promoted.png")
    finally:
        daemon.store.close()
