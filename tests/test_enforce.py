"""Enforcement exports: unit tests of the three writers, then their output in a real Mosquitto.

The broker tests load the generated acl_file (and the dynamic-security config) into a private
Mosquitto on a loopback port and log in with real paho clients as each service. "Not
delivered" is proved without sleeping: after the refused message the same publisher (or one
whose PUBACK came back first) sends an allowed fence message, and Mosquitto delivers in order,
so anything the refused message produced would have arrived before the fence.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import CallbackAPIVersion, MQTTv311

from commgraph.enforce import (
    DEFAULT_ACL_ACCESS,
    DYNSEC_MARK,
    EnforceError,
    _overlap,
    http_routes,
    mosquitto_acl,
    mosquitto_dynsec,
    mud,
)
from commgraph.errors import CommgraphError
from commgraph.model import ModelEdge, ServiceModel
from conftest import HOST, MOSQUITTO, free_port, port_accepts

T0 = 1_700_000_000.0
TIMEOUT = 20.0  # waits for what must happen; a busy machine is slow
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
MOSQUITTO_CTRL = Path("/usr/bin/mosquitto_ctrl")
DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
SUBACK_FAILURE = 0x80  # MQTT 3.1.1


def edge(
    relation: str,
    peer: str,
    label: str = "learned",
    *,
    direction: str | None = None,
    decided_at: float | None = None,
) -> ModelEdge:
    return ModelEdge(
        relation=relation,
        peer=peer,
        direction=direction or ("in" if relation == "deliver" else "out"),
        label=label,
        decided_at=decided_at,
    )


def model(service: str, *edges: ModelEdge, version: int = 1) -> ServiceModel:
    return ServiceModel(service=service, version=version, node="node-a", issued_at=T0, edges=edges)


# A small site: every label, a template, a carve-out (controller reads home/# but was denied
# home/secret) and a universal reader (logger) that shows what the broker let through.
SENSOR = model(
    "sensor",
    edge("publish", "home/+/temp"),
    edge("publish", "home/kitchen/humidity", "approved"),
    edge("publish", "alarm/siren", "denied"),
    edge("publish", "home/kitchen/door", "pending"),
)
CONTROLLER = model(
    "controller",
    edge("subscribe", "home/#"),
    edge("deliver", "home/kitchen/temp"),
    edge("deliver", "home/secret", "denied"),
    edge("publish", "valves/kitchen/set", "approved"),
    edge("subscribe", "valves/#", "pending"),
)
HUB = model(
    "hub",
    edge("publish", "home/secret"),
    edge("subscribe", "alarm/#"),
    edge("subscribe", "home/+/temp"),
)
LOGGER = model("logger", edge("subscribe", "#"))
SITE = (SENSOR, CONTROLLER, HUB, LOGGER)
USERNAMES = {"sensor": "kitchen sensor"}  # a username with a space, on purpose
PASSWORDS = {
    "kitchen sensor": "pw-sensor",
    "controller": "pw-ctl",
    "hub": "pw-hub",
    "logger": "pw-log",
}

SITE_ACL = """\
# Mosquitto acl_file written by commgraph from its service models.
# Anything not listed here is denied. Regenerate this file rather than editing it.

# service controller (model version 1)
user controller
topic deny home/secret
topic read home/#
topic read home/kitchen/temp
topic write valves/kitchen/set

# service hub (model version 1)
user hub
topic read alarm/#
topic read home/+/temp
topic write home/secret

# service sensor (model version 1)
user kitchen sensor
topic write home/+/temp
topic write home/kitchen/humidity

# service logger (model version 1)
user logger
topic read #
"""


# --- mosquitto_acl ----------------------------------------------------------------------------


def test_acl_of_the_site_is_exactly_this() -> None:
    assert mosquitto_acl(SITE, usernames=USERNAMES) == SITE_ACL


def test_acl_does_not_depend_on_the_order_of_models() -> None:
    texts = {mosquitto_acl(order, usernames=USERNAMES) for order in itertools.permutations(SITE)}
    assert texts == {SITE_ACL}


def test_acl_merges_publish_and_read_of_one_topic_into_readwrite() -> None:
    text = mosquitto_acl(
        [
            model(
                "echo",
                edge("publish", "echo/x"),
                edge("subscribe", "echo/x"),
                edge("deliver", "echo/x"),
                edge("publish", "echo/y", "approved"),
            )
        ]
    )
    assert text.splitlines()[-2:] == ["topic readwrite echo/x", "topic write echo/y"]


def test_acl_merges_several_models_of_one_service_and_the_denial_wins() -> None:
    older = model("svc", edge("publish", "a/b", decided_at=T0), edge("publish", "a/c"))
    newer = model("svc", edge("publish", "a/b", "denied", decided_at=T0 + 1), version=2)
    text = mosquitto_acl([older, newer])
    assert "# service svc (model version 2)" in text
    assert "a/b" not in text
    assert text.count("user svc") == 1


def test_acl_grants_nothing_for_pending_or_denied_edges() -> None:
    text = mosquitto_acl(SITE, usernames=USERNAMES)
    for refused in ("home/kitchen/door", "alarm/siren", "valves/#"):
        assert refused not in text


def test_acl_denies_only_where_an_allowed_filter_would_let_it_through() -> None:
    text = mosquitto_acl(
        [
            model(
                "svc",
                edge("subscribe", "home/#"),
                edge("deliver", "home/secret", "denied"),  # under home/#: carve it out
                edge("deliver", "office/door", "denied"),  # nothing allows it anyway
                edge("publish", "home/secret", "pending"),  # no write grant covers it
                edge("subscribe", "home/+/temp", "denied"),  # acl_file cannot refuse filters
            )
        ]
    )
    assert [line for line in text.splitlines() if line.startswith("topic")] == [
        "topic deny home/secret",
        "topic read home/#",
    ]


def test_acl_writes_a_section_without_access_for_a_service_without_mqtt() -> None:
    text = mosquitto_acl([model("ntp-client", edge("udp/123", "pool.ntp.org"))])
    assert text.endswith("user ntp-client\n# no MQTT access\n")


@pytest.mark.parametrize(
    "username",
    ["kitchen\nsensor", "kitchen\x00", "tab\tbed", "cr\r", "del\x7f", "nel\x85", " lead", "trail "],
)
def test_acl_refuses_usernames_the_file_cannot_carry(username: str) -> None:
    with pytest.raises(EnforceError) as caught:
        mosquitto_acl([SENSOR], usernames={"sensor": username})
    assert "'sensor'" in str(caught.value)
    assert repr(username) in str(caught.value)


def test_acl_refuses_a_service_name_that_would_break_the_comment_line() -> None:
    with pytest.raises(EnforceError, match="service name"):
        mosquitto_acl([model("evil\nuser admin", edge("publish", "a"))], usernames={})


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("home/kitchen\ntopic readwrite #", "control character U+000A"),
        ("home/\x00", "control character U+0000"),
        ("home/#/temp", "'#' before its last level"),
        ("home/kitchen+", "wildcard that does not fill a whole level"),
        (" home/temp", "starts or ends with a space"),
        ("home/temp ", "starts or ends with a space"),
        ("/".join(["x"] * 202), "more than 200 levels"),
        ("a/\ud800", "U+D800"),
    ],
)
def test_acl_refuses_topics_the_file_or_mosquitto_cannot_take(topic: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        mosquitto_acl([model("sensor", edge("publish", topic))])
    message = str(caught.value)
    assert isinstance(caught.value, CommgraphError)
    assert "'sensor'" in message and repr(topic) in message and why in message


def test_acl_keeps_spaces_inside_topics_and_usernames() -> None:
    text = mosquitto_acl([model("s", edge("publish", "living room/temp"))], usernames={"s": "a b"})
    assert "user a b\ntopic write living room/temp\n" in text


def test_acl_skips_a_refused_topic_mosquitto_would_refuse_on_the_wire() -> None:
    # A garbage topic some client tried must not make the whole export fail.
    text = mosquitto_acl(
        [model("s", edge("publish", "a/#"), edge("publish", "a/#/b\n", "pending"))]
    )
    assert text.endswith("user s\ntopic write a/#\n")


def test_acl_refuses_two_services_on_one_username() -> None:
    with pytest.raises(EnforceError, match="'hub' and 'sensor' both log in as 'hub'"):
        mosquitto_acl([HUB, SENSOR], usernames={"sensor": "hub"})


LEVELS = st.sampled_from(["a", "$s", "", "+"])
WITNESS_LEVELS = ("a", "$s", "", "z")


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(LEVELS, min_size=1, max_size=3))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


@settings(max_examples=150, deadline=None)
@given(filters(), filters())
def test_overlap_is_true_exactly_when_some_topic_matches_both_filters(a: str, b: str) -> None:
    # Any common topic can be spelled with the filters' literals plus one fresh level, and
    # needs at most one level more than the longer filter.
    longest = max(a.count("/"), b.count("/")) + 2
    witness = any(
        mqtt.topic_matches_sub(a, topic) and mqtt.topic_matches_sub(b, topic)
        for size in range(1, longest + 1)
        for topic in ("/".join(levels) for levels in itertools.product(WITNESS_LEVELS, repeat=size))
    )
    assert _overlap(a, b) == witness
    assert _overlap(b, a) == witness


# --- mosquitto_dynsec -------------------------------------------------------------------------


def test_dynsec_defaults_deny_publish_subscribe_and_receive() -> None:
    config = mosquitto_dynsec(SITE)
    assert config["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert config["defaultACLAccess"] == dict(DEFAULT_ACL_ACCESS)
    assert config["groups"] == []


def test_dynsec_has_one_passwordless_client_per_service_holding_its_role() -> None:
    config = mosquitto_dynsec(SITE, usernames=USERNAMES)
    assert [client["username"] for client in config["clients"]] == [
        "controller",
        "hub",
        "kitchen sensor",
        "logger",
    ]
    sensor = config["clients"][2]
    assert sensor["roles"] == [{"rolename": "sensor"}]
    assert sensor["textdescription"].startswith(DYNSEC_MARK)
    for client in config["clients"]:
        assert not {"password", "salt", "iterations"} & client.keys()
    assert [role["rolename"] for role in config["roles"]] == [
        "controller",
        "hub",
        "logger",
        "sensor",
    ]


def _acls(config: dict[str, Any], role: str) -> list[tuple[str, str, bool, int]]:
    (found,) = [entry for entry in config["roles"] if entry["rolename"] == role]
    return [(a["acltype"], a["topic"], a["allow"], a["priority"]) for a in found["acls"]]


def test_dynsec_role_acls_of_the_controller() -> None:
    assert _acls(mosquitto_dynsec(SITE), "controller") == [
        # Refusals first, and of higher priority than any allowance.
        ("publishClientReceive", "home/secret", False, 1),
        ("subscribeLiteral", "valves/#", False, 1),
        ("publishClientReceive", "home/#", True, 0),
        ("publishClientReceive", "home/kitchen/temp", True, 0),
        ("publishClientSend", "valves/kitchen/set", True, 0),
        ("subscribePattern", "home/#", True, 0),
    ]


def test_dynsec_role_acls_of_the_sensor_refuse_pending_and_denied() -> None:
    assert _acls(mosquitto_dynsec(SITE), "sensor") == [
        ("publishClientSend", "alarm/siren", False, 1),
        ("publishClientSend", "home/kitchen/door", False, 1),
        ("publishClientSend", "home/+/temp", True, 0),
        ("publishClientSend", "home/kitchen/humidity", True, 0),
    ]


def test_dynsec_a_refusal_replaces_an_allowance_of_the_same_type_and_topic() -> None:
    config = mosquitto_dynsec(
        [model("svc", edge("subscribe", "a/b"), edge("deliver", "a/b", "denied"))]
    )
    assert _acls(config, "svc") == [
        ("publishClientReceive", "a/b", False, 1),
        ("subscribePattern", "a/b", True, 0),
    ]


def test_dynsec_is_the_same_json_whatever_the_order() -> None:
    dumps = {
        json.dumps(mosquitto_dynsec(order, usernames=USERNAMES))
        for order in itertools.permutations(SITE)
    }
    assert len(dumps) == 1


def test_dynsec_refuses_names_mosquitto_would_refuse() -> None:
    with pytest.raises(EnforceError, match=r"'sensor': MQTT username 'a\\x00b'"):
        mosquitto_dynsec([SENSOR], usernames={"sensor": "a\x00b"})
    with pytest.raises(EnforceError, match=r"'s': topic 'x/#/y' of subscribe"):
        mosquitto_dynsec([model("s", edge("subscribe", "x/#/y"))])
    # JSON carries outer spaces exactly, so unlike the acl_file they are fine here.
    assert (
        mosquitto_dynsec([SENSOR], usernames={"sensor": " padded "})["clients"][0]["username"]
        == " padded "
    )


def _init_base() -> dict[str, Any]:
    """The shape ``mosquitto_ctrl dynsec init`` writes (note its camelCase "textName")."""
    return {
        "clients": [
            {
                "username": "admin",
                "textName": "Dynsec admin user",
                "password": "hash",
                "salt": "salt",
                "iterations": 101,
                "roles": [{"rolename": "admin"}],
            }
        ],
        "roles": [{"rolename": "admin", "acls": []}],
        "defaultACLAccess": {"publishClientSend": True},
    }


def test_dynsec_update_keeps_the_admin_and_the_services_passwords() -> None:
    base = _init_base()
    first = mosquitto_dynsec([SENSOR, HUB], base=base)
    assert base == _init_base()  # not modified
    # The owner sets a password and gives the sensor an extra role of their own.
    (sensor,) = [c for c in first["clients"] if c["username"] == "sensor"]
    sensor.update(password="pw-hash", salt="pw-salt", iterations=101)
    sensor["roles"].append({"rolename": "admin"})
    again = mosquitto_dynsec([SENSOR, HUB], base=first)
    assert [c["username"] for c in again["clients"]] == ["admin", "hub", "sensor"]
    (sensor,) = [c for c in again["clients"] if c["username"] == "sensor"]
    assert (sensor["password"], sensor["salt"], sensor["iterations"]) == ("pw-hash", "pw-salt", 101)
    assert sensor["roles"] == [{"rolename": "admin"}, {"rolename": "sensor"}]
    assert [r["rolename"] for r in again["roles"]] == ["admin", "hub", "sensor"]
    assert again["clients"][0]["password"] == "hash"
    assert again["defaultACLAccess"] == dict(DEFAULT_ACL_ACCESS)


def test_dynsec_update_drops_the_roles_of_services_that_are_gone() -> None:
    first = mosquitto_dynsec([SENSOR, HUB], base=_init_base())
    first["groups"] = [{"groupname": "all", "roles": [{"rolename": "hub"}, {"rolename": "admin"}]}]
    again = mosquitto_dynsec([SENSOR], base=first)
    assert [r["rolename"] for r in again["roles"]] == ["admin", "sensor"]
    (hub,) = [c for c in again["clients"] if c["username"] == "hub"]
    assert hub["roles"] == []  # the login stays (with its password), its access goes
    assert again["groups"] == [{"groupname": "all", "roles": [{"rolename": "admin"}]}]


def test_dynsec_update_moves_a_role_when_a_username_changes() -> None:
    first = mosquitto_dynsec([SENSOR], base=_init_base())
    again = mosquitto_dynsec([SENSOR], usernames={"sensor": "sensor-2"}, base=first)
    roles = {c["username"]: c["roles"] for c in again["clients"]}
    assert roles["sensor"] == [] and roles["sensor-2"] == [{"rolename": "sensor"}]


def test_dynsec_update_refuses_to_replace_a_role_commgraph_did_not_write() -> None:
    with pytest.raises(EnforceError, match="role 'admin' was not written by commgraph"):
        mosquitto_dynsec([model("admin", edge("publish", "a"))], base=_init_base())
    with pytest.raises(EnforceError, match="'clients' must be a list of objects"):
        mosquitto_dynsec([SENSOR], base={"clients": {"admin": {}}})


# --- mud --------------------------------------------------------------------------------------

URL = "https://example.com/mud/thermostat.json"


def _aces(doc: dict[str, Any], family: int, direction: str) -> list[dict[str, Any]]:
    suffix = "fr" if direction == "from-device" else "to"
    (acl,) = [
        acl
        for acl in doc["ietf-access-control-list:acls"]["acl"]
        if acl["name"].endswith(f"-v{family}{suffix}")
    ]
    assert acl["type"] == f"ipv{family}-acl-type"
    return [ace["matches"] for ace in acl["aces"]["ace"]]


def test_mud_top_level_is_rfc_8520_shaped() -> None:
    doc = mud(model("thermostat", edge("tcp/443", "cloud.example.com")), mud_url=URL)
    assert set(doc) == {"ietf-mud:mud", "ietf-access-control-list:acls"}
    top = doc["ietf-mud:mud"]
    assert top["mud-version"] == 1
    assert top["mud-url"] == URL
    assert top["last-update"] == "2023-11-14T22:13:20+00:00"  # the model's issued_at
    assert top["is-supported"] is True
    assert top["systeminfo"] == "thermostat"
    named = {acl["name"] for acl in doc["ietf-access-control-list:acls"]["acl"]}
    used = [
        entry["name"]
        for policy in ("from-device-policy", "to-device-policy")
        for entry in top[policy]["access-lists"]["access-list"]
    ]
    assert sorted(used) == sorted(named) and len(named) == 4
    assert all(len(name) <= 64 for name in named)
    for acl in doc["ietf-access-control-list:acls"]["acl"]:
        for ace in acl["aces"]["ace"]:
            assert ace["actions"] == {"forwarding": "accept"}


def test_mud_tcp_to_a_dns_name_is_an_ace_pair_in_both_families() -> None:
    doc = mud(model("thermostat", edge("tcp/443", "cloud.example.com")), mud_url=URL)
    for family in (4, 6):
        assert _aces(doc, family, "from-device") == [
            {
                f"ipv{family}": {"protocol": 6, "ietf-acldns:dst-dnsname": "cloud.example.com"},
                "tcp": {
                    "destination-port": {"operator": "eq", "port": 443},
                    "ietf-mud:direction-initiated": "from-device",
                },
            }
        ]
        assert _aces(doc, family, "to-device") == [
            {
                f"ipv{family}": {"protocol": 6, "ietf-acldns:src-dnsname": "cloud.example.com"},
                "tcp": {
                    "source-port": {"operator": "eq", "port": 443},
                    "ietf-mud:direction-initiated": "from-device",
                },
            }
        ]


def test_mud_addresses_become_host_networks_of_their_family_only() -> None:
    doc = mud(
        model(
            "thermostat",
            edge("udp/123", "192.0.2.10"),
            edge("icmp", "2001:db8::1"),
            edge("tcp/22", "198.51.100.0/24"),
        ),
        mud_url=URL,
    )
    assert _aces(doc, 4, "from-device") == [
        {
            "ipv4": {"protocol": 17, "destination-ipv4-network": "192.0.2.10/32"},
            "udp": {"destination-port": {"operator": "eq", "port": 123}},
        },
        {
            "ipv4": {"protocol": 6, "destination-ipv4-network": "198.51.100.0/24"},
            "tcp": {
                "destination-port": {"operator": "eq", "port": 22},
                "ietf-mud:direction-initiated": "from-device",
            },
        },
    ]
    assert _aces(doc, 6, "from-device") == [
        {"ipv6": {"protocol": 58, "destination-ipv6-network": "2001:db8::1/128"}}
    ]
    assert _aces(doc, 6, "to-device") == [
        {"ipv6": {"protocol": 58, "source-ipv6-network": "2001:db8::1/128"}}
    ]


def test_mud_an_incoming_flow_is_opened_by_the_peer() -> None:
    doc = mud(model("camera", edge("tcp/554", "192.0.2.7", direction="in")), mud_url=URL)
    assert _aces(doc, 4, "to-device") == [
        {
            "ipv4": {"protocol": 6, "source-ipv4-network": "192.0.2.7/32"},
            "tcp": {
                "destination-port": {"operator": "eq", "port": 554},
                "ietf-mud:direction-initiated": "to-device",
            },
        }
    ]
    assert _aces(doc, 4, "from-device")[0]["tcp"]["source-port"] == {"operator": "eq", "port": 554}


@pytest.mark.parametrize(
    ("broker", "peer", "port"),
    [
        ("mqtt.local", {"ietf-acldns:dst-dnsname": "mqtt.local"}, 1883),
        ("mqtt.local:8883", {"ietf-acldns:dst-dnsname": "mqtt.local"}, 8883),
        ("192.0.2.1", {"destination-ipv4-network": "192.0.2.1/32"}, 1883),
        ("[2001:db8::5]:1884", {"destination-ipv6-network": "2001:db8::5/128"}, 1884),
        ("2001:db8::5", {"destination-ipv6-network": "2001:db8::5/128"}, 1883),
    ],
)
def test_mud_mqtt_edges_become_one_flow_to_the_broker(
    broker: str, peer: dict[str, str], port: int
) -> None:
    doc = mud(SENSOR, mud_url=URL, broker=broker)
    family = 4 if "ipv6" not in str(peer) else 6
    assert _aces(doc, family, "from-device") == [
        {
            f"ipv{family}": {"protocol": 6, **peer},
            "tcp": {
                "destination-port": {"operator": "eq", "port": port},
                "ietf-mud:direction-initiated": "from-device",
            },
        }
    ]


def test_mud_mqtt_without_a_broker_is_an_error_that_says_so() -> None:
    with pytest.raises(ValueError, match=r"service 'sensor'.*broker="):
        mud(SENSOR, mud_url=URL)
    # Refused MQTT edges need no broker: they are not in the file.
    only_refused = model("s", edge("publish", "a", "denied"), edge("udp/53", "192.0.2.53"))
    assert mud(only_refused, mud_url=URL)["ietf-mud:mud"]["mud-url"] == URL


def test_mud_leaves_out_pending_and_denied_flows() -> None:
    doc = mud(
        model(
            "thermostat",
            edge("tcp/443", "cloud.example.com", "approved"),
            edge("tcp/443", "evil.example.net", "pending"),
            edge("udp/53", "192.0.2.53", "denied"),
        ),
        mud_url=URL,
    )
    text = json.dumps(doc)
    assert "cloud.example.com" in text
    assert "evil.example.net" not in text and "192.0.2.53" not in text


def test_mud_merges_duplicates_and_is_stable() -> None:
    edges = [
        edge("tcp/443", "b.example.com"),
        edge("tcp/443", "a.example.com"),
        edge("icmp", "192.0.2.1"),
        edge("icmp", "192.0.2.1", direction="in"),  # one ICMP pair covers both
        edge("publish", "x"),
        edge("deliver", "y"),  # one broker flow for every MQTT edge
    ]
    docs = {
        json.dumps(mud(model("t", *order), mud_url=URL, broker="192.0.2.1:1883"))
        for order in itertools.permutations(edges)
    }
    assert len(docs) == 1
    doc = json.loads(docs.pop())
    assert len(_aces(doc, 4, "from-device")) == 4  # a, b, icmp, broker
    names = [ace["name"] for ace in doc["ietf-access-control-list:acls"]["acl"][0]["aces"]["ace"]]
    assert len(set(names)) == len(names)


def test_mud_takes_the_time_and_systeminfo_it_is_given() -> None:
    m = model("thermostat", edge("tcp/443", "cloud.example.com"))
    east = timezone(timedelta(hours=1))
    top = mud(m, mud_url=URL, last_update=datetime(2024, 5, 1, 12, 0, tzinfo=east))
    assert top["ietf-mud:mud"]["last-update"] == "2024-05-01T12:00:00+01:00"
    top = mud(m, mud_url=URL, last_update="2024-05-01T12:00:00Z", systeminfo="Hall thermostat")
    assert top["ietf-mud:mud"]["last-update"] == "2024-05-01T12:00:00+00:00"
    assert top["ietf-mud:mud"]["systeminfo"] == "Hall thermostat"
    assert mud(m, mud_url=URL, last_update=0.0)["ietf-mud:mud"]["last-update"] == (
        datetime(1970, 1, 1, tzinfo=UTC).isoformat()
    )
    long_name = model("x" * 80, edge("tcp/443", "cloud.example.com"))
    assert len(mud(long_name, mud_url=URL)["ietf-mud:mud"]["systeminfo"]) == 60


@pytest.mark.parametrize(
    ("kwargs", "edges", "match"),
    [
        ({"mud_url": "http://example.com/x"}, (), "https://"),
        ({"mud_url": "https:///nohost"}, (), "https://"),
        ({"mud_url": URL, "last_update": datetime(2024, 1, 1)}, (), "UTC offset"),
        ({"mud_url": URL, "last_update": "yesterday"}, (), "ISO 8601"),
        ({"mud_url": URL, "systeminfo": "x" * 61}, (), "longer than 60"),
        ({"mud_url": URL, "systeminfo": "a\nb"}, (), r"U\+000A, which a MUD systeminfo"),
        ({"mud_url": URL}, (edge("http:GET /rooms/{id}", "hub.local"),), "cannot express"),
        ({"mud_url": URL}, (edge("tcp/70000", "hub.local"),), "cannot express"),
        ({"mud_url": URL}, (edge("tcp/443", "not a host"),), "neither an IP address"),
        ({"mud_url": URL}, (edge("tcp/443", "10.0.0.1/8"),), "not an IP network"),
        ({"mud_url": URL}, (edge("tcp/443", "fe80::1%eth0"),), "zone"),
        ({"mud_url": URL, "broker": "mqtt.local:port"}, (edge("publish", "a"),), "number"),
        ({"mud_url": URL, "broker": "mqtt.local:0"}, (edge("publish", "a"),), "between 1"),
    ],
)
def test_mud_refuses_what_it_cannot_write(
    kwargs: dict[str, Any], edges: tuple[ModelEdge, ...], match: str
) -> None:
    with pytest.raises(EnforceError, match=match):
        mud(model("t", edge("udp/123", "192.0.2.9"), *edges), **kwargs)


# --- a real Mosquitto -------------------------------------------------------------------------


def _need(path: Path, *, skip: bool = False) -> None:
    if not path.exists():
        message = f"{path} is missing (Debian package mosquitto)"
        if skip:
            pytest.skip(message)
        pytest.fail(message)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture(scope="module")
def run_mosquitto() -> Iterator[Any]:
    """Factory: ``run_mosquitto(directory, conf_lines) -> (port, process)``; all are stopped
    at the end of the module."""
    _need(MOSQUITTO)
    started: list[subprocess.Popen[bytes]] = []

    def run(directory: Path, lines: list[str]) -> tuple[int, subprocess.Popen[bytes]]:
        port = free_port()
        conf = directory / "mosquitto.conf"
        # Started as root, Mosquitto would become the user "mosquitto", who cannot read the
        # password, ACL and plugin files in pytest's private directory: it stays who we are.
        me = f"user {pwd.getpwuid(os.geteuid()).pw_name}"
        conf.write_text("\n".join([f"listener {port} {HOST}", "persistence false", me, *lines, ""]))
        log = directory / "mosquitto.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        started.append(process)
        deadline = time.monotonic() + 10
        while not port_accepts(port):
            if process.poll() is not None:
                pytest.fail(f"mosquitto exited with {process.returncode}: {_tail(log)}")
            if time.monotonic() >= deadline:
                pytest.fail(f"mosquitto did not accept on port {port} within 10 s: {_tail(log)}")
            time.sleep(0.02)
        return port, process

    try:
        yield run
    finally:
        for process in started:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Session:
    """A paho client logged in as one service; its calls wait (with a deadline) for answers."""

    _ids = itertools.count()

    def __init__(self, port: int, username: str, password: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subacks: dict[int, list[int]] = {}
        self._answered = threading.Condition()
        self._connected: list[Any] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"enforce-test-{next(self._ids)}",
            protocol=MQTTv311,
        )
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.messages.put(
            (message.topic, bytes(message.payload))
        )
        self.client.connect(HOST, port, keepalive=30)
        self.client.loop_start()
        self._wait(lambda: self._connected, f"CONNACK for {username!r}")
        self.connack = self._connected[0]

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._answered:
            self._connected.append(reason)
            self._answered.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: Any, _props: Any) -> None:
        with self._answered:
            self._subacks[mid] = [int(getattr(code, "value", code)) for code in reasons]
            self._answered.notify_all()

    def _wait(self, ready: Any, what: str) -> None:
        with self._answered:
            if not self._answered.wait_for(ready, timeout=TIMEOUT):
                pytest.fail(f"no {what} within {TIMEOUT:g} s")

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1; the SUBACK's code (1 granted, 0x80 refused)."""
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self._wait(lambda: mid in self._subacks, f"SUBACK for {topic}")
        return self._subacks[mid][0]

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and wait for the PUBACK (sent after the broker has routed it)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), f"no PUBACK for {topic} within {TIMEOUT:g} s"

    def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Every message received up to and including ``(topic, payload)``."""
        deadline = time.monotonic() + TIMEOUT
        seen: list[tuple[str, bytes]] = []
        while (topic, payload) not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"{(topic, payload)} not received within {TIMEOUT:g} s; got {seen}")
            try:
                seen.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                continue
        return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def login() -> Iterator[Any]:
    """Factory: ``login(port, username, password=None, refused=False) -> Session``; checks
    the CONNACK, closes every session afterwards."""
    sessions: list[Session] = []

    def open_session(
        port: int, username: str, password: str | None = None, *, refused: bool = False
    ) -> Session:
        session = Session(port, username, PASSWORDS[username] if password is None else password)
        sessions.append(session)
        assert session.connack.is_failure == refused, f"{username!r}: {session.connack}"
        return session

    yield open_session
    for session in sessions:
        session.close()


_fences = itertools.count()


def _fence(sensor: Session, *readers: Session) -> list[list[tuple[str, bytes]]]:
    """Send an allowed message every reader gets; what each received until then."""
    payload = f"fence-{next(_fences)}".encode()
    sensor.publish("home/kitchen/temp", payload)
    return [reader.until("home/kitchen/temp", payload) for reader in readers]


@pytest.fixture(scope="module")
def acl_broker(run_mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A Mosquitto enforcing ``mosquitto_acl(SITE)`` with a password per service."""
    _need(MOSQUITTO_PASSWD)
    directory = tmp_path_factory.mktemp("acl")
    passwords = directory / "passwords"
    for index, (username, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            [str(MOSQUITTO_PASSWD), "-b", *create, str(passwords), username, password],
            check=True,
            capture_output=True,
            timeout=10,
        )
    acl = directory / "acl"
    acl.write_text(mosquitto_acl(SITE, usernames=USERNAMES))
    port, _ = run_mosquitto(
        directory,
        ["allow_anonymous false", f"password_file {passwords}", f"acl_file {acl}"],
    )
    return port


# What each reader subscribes to: what its model lets it read.
READS = {"controller": "home/#", "hub": "home/+/temp", "logger": "#"}


def _readers(login: Any, port: int, *usernames: str) -> list[Session]:
    readers = [login(port, username) for username in usernames]
    for reader, username in zip(readers, usernames, strict=True):
        assert reader.subscribe(READS[username]) == 1
    return readers


def test_acl_broker_delivers_allowed_publishes_to_allowed_readers(
    acl_broker: int, login: Any
) -> None:
    controller, hub, logger = _readers(login, acl_broker, "controller", "hub", "logger")
    sensor = login(acl_broker, "kitchen sensor")  # a username with a space
    sensor.publish("home/kitchen/temp", b"21.5")  # allowed by the template home/+/temp
    sensor.publish("home/kitchen/humidity", b"40")  # approved
    for reader in (controller, logger):
        assert reader.until("home/kitchen/humidity", b"40") == [
            ("home/kitchen/temp", b"21.5"),
            ("home/kitchen/humidity", b"40"),
        ]
    assert hub.until("home/kitchen/temp", b"21.5") == [("home/kitchen/temp", b"21.5")]


def test_acl_broker_drops_publishes_outside_the_model(acl_broker: int, login: Any) -> None:
    (logger,) = _readers(login, acl_broker, "logger")
    sensor = login(acl_broker, "kitchen sensor")
    sensor.publish("home/kitchen/door", b"open")  # pending
    sensor.publish("alarm/siren", b"on")  # denied
    sensor.publish("valves/kitchen/set", b"100")  # not in its model at all
    (received,) = _fence(sensor, logger)
    assert [topic for topic, _ in received] == ["home/kitchen/temp"]


def test_acl_broker_carves_a_denied_delivery_out_of_a_wider_read(
    acl_broker: int, login: Any
) -> None:
    controller, logger = _readers(login, acl_broker, "controller", "logger")
    login(acl_broker, "hub").publish("home/secret", b"pin")
    sensor = login(acl_broker, "kitchen sensor")
    at_controller, at_logger = _fence(sensor, controller, logger)
    assert ("home/secret", b"pin") in at_logger  # the hub may publish it...
    assert ("home/secret", b"pin") not in at_controller  # ...the controller may not read it


def test_acl_broker_delivers_nothing_on_a_subscription_outside_the_model(
    acl_broker: int, login: Any
) -> None:
    controller, logger = _readers(login, acl_broker, "controller", "logger")
    # Mosquitto 2.0 grants any subscription when an acl_file is used; reading is what it checks.
    assert controller.subscribe("valves/#") in (1, SUBACK_FAILURE)
    controller.publish("valves/kitchen/set", b"80")  # the controller may write this...
    sensor = login(acl_broker, "kitchen sensor")
    at_controller, at_logger = _fence(sensor, controller, logger)
    assert ("valves/kitchen/set", b"80") in at_logger
    assert ("valves/kitchen/set", b"80") not in at_controller  # ...but not read it


def test_acl_broker_refuses_a_wrong_password(acl_broker: int, login: Any) -> None:
    session = login(acl_broker, "kitchen sensor", "wrong", refused=True)
    assert session.connack.is_failure


# --- dynamic security ---------------------------------------------------------------------------


def _ctrl(port: int, *args: str) -> None:
    done = subprocess.run(
        [str(MOSQUITTO_CTRL), "-h", HOST, "-p", str(port), "-u", "admin", "-P", "admin-pw", *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, f"mosquitto_ctrl {' '.join(args)}: {done.stdout}{done.stderr}"


def _dynsec_conf(config: Path) -> list[str]:
    return ["allow_anonymous false", f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {config}"]


def _dynsec_site(run_mosquitto: Any, directory: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """A Mosquitto with our dynsec config on top of ``mosquitto_ctrl dynsec init``'s admin,
    passwords set the way a site owner sets them: with mosquitto_ctrl."""
    _need(DYNSEC_PLUGIN, skip=True)
    _need(MOSQUITTO_CTRL, skip=True)
    init = directory / "init.json"
    subprocess.run(
        [str(MOSQUITTO_CTRL), "dynsec", "init", str(init), "admin", "admin-pw"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    config = directory / "dynsec.json"
    base = json.loads(init.read_text())
    config.write_text(json.dumps(mosquitto_dynsec(SITE, usernames=USERNAMES, base=base)))
    port, process = run_mosquitto(directory, _dynsec_conf(config))
    for username, password in PASSWORDS.items():
        _ctrl(port, "dynsec", "setClientPassword", username, password)
    return port, process


@pytest.fixture(scope="module")
def dynsec_broker(run_mosquitto: Any, tmp_path_factory: pytest.TempPathFactory) -> int:
    port, _ = _dynsec_site(run_mosquitto, tmp_path_factory.mktemp("dynsec"))
    return port


def test_dynsec_broker_enforces_the_models(dynsec_broker: int, login: Any) -> None:
    controller, logger, hub = _readers(login, dynsec_broker, "controller", "logger", "hub")
    sensor = login(dynsec_broker, "kitchen sensor")
    # Subscriptions are checked: outside the model, or wider than it, they are refused.
    assert controller.subscribe("valves/#") == SUBACK_FAILURE  # pending in its model
    assert hub.subscribe("home/#") == SUBACK_FAILURE  # wider than its home/+/temp
    assert controller.subscribe("home/kitchen/+") == 1  # narrower than its home/#
    sensor.publish("home/kitchen/temp", b"22")  # allowed through the template
    sensor.publish("alarm/siren", b"on")  # denied
    sensor.publish("home/kitchen/door", b"open")  # pending
    hub.publish("home/secret", b"pin")  # allowed for the hub, denied to the controller
    at_controller, at_logger, at_hub = _fence(sensor, controller, logger, hub)
    assert at_hub[0] == ("home/kitchen/temp", b"22")
    assert [topic for topic, _ in at_logger] == [
        "home/kitchen/temp",
        "home/secret",
        "home/kitchen/temp",
    ]
    # home/# and home/kitchen/+ both match: a message may come once per subscription.
    assert ("home/kitchen/temp", b"22") in at_controller
    assert {topic for topic, _ in at_controller} == {"home/kitchen/temp"}


def test_dynsec_reexport_keeps_passwords_set_with_mosquitto_ctrl(
    run_mosquitto: Any, tmp_path: Path, login: Any
) -> None:
    _port, process = _dynsec_site(run_mosquitto, tmp_path)
    _stop(process)
    # The plugin saved the passwords into its file: export again on top of it, then restart.
    config = tmp_path / "dynsec.json"
    saved = json.loads(config.read_text())
    (hub_saved,) = [client for client in saved["clients"] if client["username"] == "hub"]
    assert {"password", "salt", "iterations"} <= hub_saved.keys()
    config.write_text(json.dumps(mosquitto_dynsec([SENSOR, HUB], usernames=USERNAMES, base=saved)))
    port, _ = run_mosquitto(tmp_path, _dynsec_conf(config))
    (hub,) = _readers(login, port, "hub")
    sensor = login(port, "kitchen sensor")
    sensor.publish("home/kitchen/temp", b"23")
    assert hub.until("home/kitchen/temp", b"23") == [("home/kitchen/temp", b"23")]
    # The controller is no longer exported: it still logs in, but its role is gone.
    controller = login(port, "controller")
    assert controller.subscribe("home/#") == SUBACK_FAILURE


# -- HTTP routes ----------------------------------------------------------------------------


def test_http_routes_lists_allowed_routes_per_caller_and_per_service() -> None:
    heating = model(
        "heating",
        edge("http", "GET rooms/rooms/{id}/temperature"),
        edge("http", "PUT rooms/valves/{id}", "approved"),
        edge("http", "POST rooms/unlock", "pending"),
        edge("publish", "home/+/temp"),
    )
    hub = model(
        "hub",
        edge("http", "GET rooms/rooms/{id}/temperature"),
        edge("http", "GET rooms/ws (websocket)"),
        edge("http", "DELETE rooms/rooms/{id}", "denied"),
    )
    rooms = model("rooms", edge("serve", "GET rooms/rooms/{id}/temperature", direction="in"))
    routes = http_routes([heating, hub, rooms])
    assert routes["callers"] == {
        "heating": [
            {"service": "rooms", "method": "GET", "path": "/rooms/{id}/temperature"},
            {"service": "rooms", "method": "PUT", "path": "/valves/{id}"},
        ],
        "hub": [
            {"service": "rooms", "method": "GET", "path": "/rooms/{id}/temperature"},
            {"service": "rooms", "method": "GET", "path": "/ws", "websocket": True},
        ],
    }
    assert routes["services"]["rooms"][0] == {
        "method": "GET",
        "path": "/rooms/{id}/temperature",
        "callers": ["heating", "hub"],
    }
    assert len(routes["services"]["rooms"]) == 3  # pending and denied routes are left out
    assert http_routes([model("sensor", edge("publish", "home/x"))]) == {
        "callers": {},
        "services": {},
    }
