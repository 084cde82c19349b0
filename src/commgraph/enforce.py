"""Enforcement exports: service models as the access rules of a broker or a network.

Three pure functions turn :class:`~commgraph.model.ServiceModel` values into what other tools
enforce:

- :func:`mosquitto_acl`: the text of a Mosquitto ``acl_file`` (mosquitto.conf(5));
- :func:`mosquitto_dynsec`: the JSON configuration of Mosquitto's dynamic-security plugin;
- :func:`mud`: an RFC 8520 Manufacturer Usage Description of one service.

The contract shared by all three: only ``learned`` and ``approved`` edges are allowed;
``pending`` and ``denied`` edges never are. Where a broader allowed filter would let a refused
edge through (``subscribe home/#`` learned, ``deliver home/secret`` denied), the Mosquitto
exports carve it out with a deny rule; MUD has no deny, so a refused flow is simply absent.
Output is sorted, so the same models always give the same bytes.

Nothing here reads a file, the network or the clock: times come in as arguments. A model
that cannot be written faithfully (a topic with a newline, a username the acl_file would
trim, a relation MUD cannot express) raises :class:`EnforceError`, a ``ValueError`` whose
message names the service and the value at fault.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from commgraph.errors import EnforceError
from commgraph.model import ServiceModel, merge

__all__ = [
    "ALLOWED_LABELS",
    "DEFAULT_ACL_ACCESS",
    "DYNSEC_MARK",
    "EnforceError",
    "http_routes",
    "mosquitto_acl",
    "mosquitto_dynsec",
    "mud",
]

ALLOWED_LABELS = frozenset({"learned", "approved"})
# Roles (and clients) written by mosquitto_dynsec carry this at the start of their
# textdescription, so a later export knows which entries of a live config it owns.
DYNSEC_MARK = "commgraph:"

# MQTT relation -> the direction it has in a model, and the acl_file access it needs.
_MQTT_DIRECTION: Mapping[str, str] = {"publish": "out", "subscribe": "out", "deliver": "in"}
_ACL_ACCESS: Mapping[str, str] = {"publish": "write", "subscribe": "read", "deliver": "read"}

# Mosquitto 2.0 (lib/util_topic.c): a filter may have at most this many '/' separators.
_TOPIC_HIERARCHY_LIMIT = 200
_MQTT_STRING_MAX = 65535  # bytes of UTF-8: the length prefix of an MQTT string


# --- strings Mosquitto accepts ----------------------------------------------------------------

# What mosquitto_validate_utf8 refuses in a topic or username on the wire (besides bad UTF-8):
# NUL and other C0/C1 controls, DEL, surrogates and the Unicode non-characters.
_NONCHARACTERS = "".join(
    f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)
)
_REFUSED_CHARACTER = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef{_NONCHARACTERS}]")


def _string_problem(value: object, rule: str = "MQTT") -> str:
    """Why Mosquitto would refuse ``value`` as an MQTT string, or ""."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "must not be empty"
    bad = _REFUSED_CHARACTER.search(value)
    if bad:
        kind = "control character" if ord(bad.group()) <= 0x9F else "character"
        return f"contains the {kind} U+{ord(bad.group()):04X}, which {rule} does not allow"
    if len(value.encode("utf-8")) > _MQTT_STRING_MAX:
        return f"is longer than {_MQTT_STRING_MAX} bytes"
    return ""


def _filter_problem(topic: str) -> str:
    """Why ``topic`` is not a topic filter Mosquitto accepts, or ""."""
    problem = _string_problem(topic)
    if problem:
        return problem
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            return "has a wildcard that does not fill a whole level"
        if level == "#" and index != len(levels) - 1:
            return "has '#' before its last level"
    if len(levels) - 1 > _TOPIC_HIERARCHY_LIMIT:
        return f"has more than {_TOPIC_HIERARCHY_LIMIT} levels"
    return ""


def _edge_topic(service: str, relation: str, topic: str, *, trimmed: bool) -> str:
    """``topic`` checked as a filter; ``trimmed``: the format would strip outer spaces."""
    problem = _filter_problem(topic)
    if not problem and trimmed and topic != topic.strip(" "):
        problem = "starts or ends with a space, which the acl_file format would drop"
    if problem:
        raise EnforceError(f"service {service!r}: topic {topic!r} of {relation} {problem}")
    return topic


def _login_name(service: str, username: object, *, trimmed: bool) -> str:
    problem = _string_problem(username)
    if isinstance(username, str) and not problem:
        if not trimmed or username == username.strip():
            return username
        problem = "starts or ends with a space, which the acl_file format would drop"
    raise EnforceError(f"service {service!r}: MQTT username {username!r} {problem}")


def _overlap(a: str, b: str) -> bool:
    """Whether some topic matches both filters ``a`` and ``b`` (MQTT matching rules)."""
    left, right = a.split("/"), b.split("/")
    for index in range(max(len(left), len(right)) + 1):
        mine = left[index] if index < len(left) else None
        theirs = right[index] if index < len(right) else None
        if mine is None and theirs is None:
            return True
        if mine == "#" or theirs == "#":
            # '#' also matches the parent level; no wildcard matches a leading '$' level.
            other = theirs if mine == "#" else mine
            return not (index == 0 and other is not None and other.startswith("$"))
        if mine is None or theirs is None:
            return False
        if mine == "+" or theirs == "+":
            other = theirs if mine == "+" else mine
            if index == 0 and other.startswith("$"):
                return False
            continue
        if mine != theirs:
            return False
    return True  # pragma: no cover - the loop always decides


# --- the models, per service ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Login:
    service: str
    username: str
    model: ServiceModel


def _logins(
    models: Sequence[ServiceModel], usernames: Mapping[str, str] | None, *, trimmed: bool
) -> list[_Login]:
    """One login per service (several models of one service are merged), sorted by username."""
    by_service: dict[str, ServiceModel] = {}
    for model in models:
        if not isinstance(model, ServiceModel):
            raise EnforceError(f"expected ServiceModel values, got {type(model).__name__}")
        seen = by_service.get(model.service)
        by_service[model.service] = model if seen is None else merge(seen, model)
    names = {} if usernames is None else usernames
    logins: list[_Login] = []
    owner: dict[str, str] = {}
    for service in sorted(by_service):
        problem = _string_problem(service)
        if problem:
            raise EnforceError(f"service name {service!r} {problem}")
        username = _login_name(service, names.get(service, service), trimmed=trimmed)
        if username in owner:
            raise EnforceError(
                f"services {owner[username]!r} and {service!r} both log in as {username!r}; "
                "one MQTT username cannot carry two models"
            )
        owner[username] = service
        logins.append(_Login(service, username, by_service[service]))
    return sorted(logins, key=lambda login: login.username)


def _mqtt_edges(login: _Login, *, trimmed: bool) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(relation -> allowed topics, relation -> refused topics) of the service's MQTT edges.

    Allowed topics must be writable; a refused topic Mosquitto would refuse on the wire anyway
    (a misplaced wildcard, a control character) needs no rule and is left out.
    """
    allowed: dict[str, set[str]] = {}
    refused: dict[str, set[str]] = {}
    for edge in login.model.edges:
        if _MQTT_DIRECTION.get(edge.relation) != edge.direction:
            continue
        if edge.label in ALLOWED_LABELS:
            topic = _edge_topic(login.service, edge.relation, edge.peer, trimmed=trimmed)
            allowed.setdefault(edge.relation, set()).add(topic)
        elif not _filter_problem(edge.peer):
            refused.setdefault(edge.relation, set()).add(edge.peer)
    return allowed, refused


# --- Mosquitto acl_file -----------------------------------------------------------------------


def mosquitto_acl(
    models: Sequence[ServiceModel], *, usernames: Mapping[str, str] | None = None
) -> str:
    """The text of a Mosquitto ``acl_file`` allowing each service what its model allows.

    One ``user`` section per service, named by ``usernames[service]`` or else the service
    name: ``publish`` gives ``write``, ``subscribe`` and ``deliver`` give ``read`` (both:
    ``readwrite``). Mosquitto denies anything not listed. A pending or denied publish or
    deliver edge that an allowed filter of the same access would cover gets a ``topic deny``
    line; Mosquitto's deny takes away read *and* write on that topic, the only deny the format
    has. Mosquitto 2.0 does not check subscriptions against an acl_file (only what is published
    and delivered), so a refused subscribe edge has no line: a deny on its filter would also
    take away the narrower topics the model allows.

    Raises EnforceError for a username or topic the format cannot carry (control characters,
    outer spaces, a misplaced wildcard) or two services sharing one username.
    """
    lines = [
        "# Mosquitto acl_file written by commgraph from its service models.",
        "# Anything not listed here is denied. Regenerate this file rather than editing it.",
    ]
    for login in _logins(models, usernames, trimmed=True):
        allowed, refused = _mqtt_edges(login, trimmed=True)
        grants: dict[str, set[str]] = {}
        for relation, topics in allowed.items():
            for topic in topics:
                grants.setdefault(topic, set()).add(_ACL_ACCESS[relation])
        denies = {
            _edge_topic(login.service, relation, topic, trimmed=True)
            for relation, topics in refused.items()
            if relation != "subscribe"
            for topic in topics
            if any(
                _ACL_ACCESS[relation] in accesses and _overlap(topic, granted)
                for granted, accesses in grants.items()
            )
        }
        lines.append("")
        lines.append(f"# service {login.service} (model version {login.model.version})")
        lines.append(f"user {login.username}")
        lines.extend(f"topic deny {topic}" for topic in sorted(denies))
        for topic, accesses in sorted(grants.items()):
            access = "readwrite" if len(accesses) == 2 else next(iter(accesses))
            lines.append(f"topic {access} {topic}")
        if not grants:
            lines.append("# no MQTT access")
    return "\n".join(lines) + "\n"


# --- Mosquitto dynamic-security plugin --------------------------------------------------------

_ALLOW_PRIORITY = 0
_DENY_PRIORITY = 1  # checked before every allow of the role
# What an allowed / refused edge becomes: (relation -> acltypes).
_DYNSEC_ALLOW: Mapping[str, tuple[str, ...]] = {
    "publish": ("publishClientSend",),
    # Subscribing is useless without receiving what matches, as "read" in the acl_file.
    "subscribe": ("subscribePattern", "publishClientReceive"),
    "deliver": ("publishClientReceive",),
}
_DYNSEC_DENY: Mapping[str, tuple[str, ...]] = {
    "publish": ("publishClientSend",),
    # Literal: refuse exactly that filter, not the narrower ones the model allows.
    "subscribe": ("subscribeLiteral",),
    "deliver": ("publishClientReceive",),
}
DEFAULT_ACL_ACCESS: Mapping[str, bool] = MappingProxyType(
    {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
)


def mosquitto_dynsec(
    models: Sequence[ServiceModel],
    *,
    usernames: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A dynamic-security plugin configuration (the JSON read by Mosquitto 2.0 at start).

    Per service one role, named after the service, and one client (the username as in
    :func:`mosquitto_acl`) holding that role, without a password. Allowed edges become allow
    ACLs: publish -> ``publishClientSend``, subscribe -> ``subscribePattern`` and
    ``publishClientReceive``, deliver -> ``publishClientReceive``. Pending and denied edges
    become deny ACLs of higher priority (a refused subscribe -> ``subscribeLiteral``). By
    default nothing may be published, subscribed or received; unsubscribing is allowed.

    ``base`` is a configuration to update, as the plugin saves it or ``mosquitto_ctrl dynsec
    init`` writes it: its own clients, groups and roles are kept, as are the passwords of the
    services' clients; roles written by an earlier export (marked with ``DYNSEC_MARK``) are
    replaced, or dropped with every reference to them when their service is gone.

    Raises EnforceError for a name or topic Mosquitto would refuse, two services sharing one
    username, or a ``base`` role of a service's name that commgraph did not write.
    """
    roles: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    for login in _logins(models, usernames, trimmed=False):
        allowed, refused = _mqtt_edges(login, trimmed=False)
        acls: dict[tuple[str, str], bool] = {}
        for relation, topics in allowed.items():
            acls.update({(t, topic): True for t in _DYNSEC_ALLOW[relation] for topic in topics})
        # A refusal overrides an allowance of the same type and topic: one entry, a deny.
        for relation, topics in refused.items():
            acls.update({(t, topic): False for t in _DYNSEC_DENY[relation] for topic in topics})
        roles.append(
            {
                "rolename": login.service,
                "textname": login.service,
                "textdescription": (
                    f"{DYNSEC_MARK} service model version {login.model.version} "
                    "(regenerated by every export)"
                ),
                "acls": [
                    {
                        "acltype": acltype,
                        "topic": topic,
                        "priority": _ALLOW_PRIORITY if allow else _DENY_PRIORITY,
                        "allow": allow,
                    }
                    for (acltype, topic), allow in sorted(
                        acls.items(), key=lambda item: (item[1], item[0])
                    )
                ],
            }
        )
        clients.append(
            {
                "username": login.username,
                "textname": login.service,
                "textdescription": f"{DYNSEC_MARK} login of service {login.service}",
                "roles": [{"rolename": login.service}],
            }
        )
    config: dict[str, Any] = {
        "defaultACLAccess": dict(DEFAULT_ACL_ACCESS),
        "clients": clients,
        "groups": [],
        "roles": sorted(roles, key=lambda role: str(role["rolename"])),
    }
    return config if base is None else _update_dynsec(base, config)


def _update_dynsec(base: Mapping[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(base, Mapping):
        raise EnforceError("base dynamic-security config must be a JSON object")
    result: dict[str, Any] = copy.deepcopy(dict(base))
    our_roles = {role["rolename"]: role for role in ours["roles"]}
    our_clients = {client["username"]: client for client in ours["clients"]}
    gone: set[str] = set()
    roles: list[dict[str, Any]] = []
    for role in _objects(result, "roles"):
        name = _get(role, "rolename")
        if not isinstance(name, str):
            raise EnforceError("base config: a role has no string 'rolename'")
        if _is_ours(role):
            gone.add(name)
        elif name in our_roles:
            raise EnforceError(
                f"base config: role {name!r} was not written by commgraph; it would be "
                f"replaced by the role of service {name!r} (rename one of them)"
            )
        else:
            roles.append(role)
    gone -= our_roles.keys()
    owned = gone | our_roles.keys()
    clients: list[dict[str, Any]] = []
    for client in _objects(result, "clients"):
        username = _get(client, "username")
        if not isinstance(username, str):
            raise EnforceError("base config: a client has no string 'username'")
        mine = our_clients.pop(username, None)
        # A login of ours holds exactly the role of its service now (a username can move).
        dropped = owned if mine is not None or _is_ours(client) else gone
        held = [ref for ref in _role_refs(client, username) if _get(ref, "rolename") not in dropped]
        if mine is not None:
            held.extend(mine["roles"])
            for key in ("textname", "textdescription"):
                if _get(client, key) is None:
                    client[key] = mine[key]
        _put(client, "roles", sorted(held, key=lambda ref: str(_get(ref, "rolename"))))
        clients.append(client)
    clients.extend(our_clients.values())
    for group in _objects(result, "groups"):
        name = _get(group, "groupname")
        kept = [entry for entry in _role_refs(group, name) if _get(entry, "rolename") not in gone]
        _put(group, "roles", kept)
    _put(result, "defaultACLAccess", dict(DEFAULT_ACL_ACCESS))
    _put(
        result,
        "roles",
        sorted([*roles, *our_roles.values()], key=lambda r: str(_get(r, "rolename"))),
    )
    _put(result, "clients", sorted(clients, key=lambda c: str(_get(c, "username"))))
    if _get(result, "groups") is None:
        _put(result, "groups", [])
    return result


def _is_ours(entry: Mapping[str, Any]) -> bool:
    description = _get(entry, "textdescription")
    return isinstance(description, str) and description.startswith(DYNSEC_MARK)


# The plugin reads keys with cJSON_GetObjectItem, which ignores case ("textName" = "textname").
def _get(entry: Mapping[str, Any], key: str) -> Any:
    if key in entry:
        return entry[key]
    for name, value in entry.items():
        if isinstance(name, str) and name.lower() == key:
            return value
    return None


def _put(entry: dict[str, Any], key: str, value: Any) -> None:
    for name in [name for name in entry if isinstance(name, str) and name.lower() == key]:
        del entry[name]
    entry[key] = value


def _objects(config: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    items = _get(config, key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise EnforceError(f"base config: {key!r} must be a list of objects")
    return items


def _role_refs(entry: Mapping[str, Any], owner: object) -> list[dict[str, Any]]:
    refs = _get(entry, "roles")
    if refs is None:
        return []
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise EnforceError(f"base config: 'roles' of {owner!r} must be a list of objects")
    return refs


# --- RFC 8520 MUD -----------------------------------------------------------------------------

_MQTT_RELATIONS = frozenset(_MQTT_DIRECTION)
_MQTT_PORT = 1883
_FLOW_RELATION = re.compile(r"(tcp|udp)/([0-9]{1,5})")
_PROTOCOLS = {"tcp": (6, 6), "udp": (17, 17), "icmp": (1, 58)}  # (IPv4, IPv6) numbers
_SYSTEMINFO_MAX = 60  # RFC 8520: systeminfo is 1..60 characters
# RFC 6991 inet:domain-name, less the lone ".": labels of letters, digits, '-' and '_'.
_DOMAIN_NAME = re.compile(
    r"(?:(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?"
)


@dataclass(frozen=True, slots=True, order=True)
class _Peer:
    family: int  # 0: DNS name (both families), 4 or 6
    value: str  # the name, or the network in CIDR form


@dataclass(frozen=True, slots=True, order=True)
class _Flow:
    peer: _Peer
    protocol: str
    port: int  # 0 for icmp
    by_device: bool  # who opens it: the device (True) or the peer


def mud(
    model: ServiceModel,
    *,
    mud_url: str,
    last_update: float | datetime | str | None = None,
    broker: str | None = None,
    systeminfo: str | None = None,
) -> dict[str, Any]:
    """The RFC 8520 MUD file of one service (the JSON a MUD manager fetches from ``mud_url``).

    Allowed ``tcp/PORT`` and ``udp/PORT`` edges become an ACE pair each: from-device toward
    the peer and to-device for the replies (peer opening toward the device for an "in"
    edge); ``icmp`` likewise. A peer is a DNS name (``ietf-acldns``, in the IPv4 and the IPv6
    list), an IP address (a /32 or /128 network) or a CIDR network. MQTT edges (publish,
    subscribe, deliver) mean talking to ``broker`` (``host`` or ``host:port``, port 1883 by
    default): one tcp ACE pair. ``last_update`` (epoch seconds, an aware datetime or an ISO
    8601 string with offset) defaults to the model's ``issued_at``; ``systeminfo`` (at most
    60 characters) to the service name.

    Raises EnforceError for a bad ``mud_url``, time or peer, an allowed relation MUD cannot
    express (``http:...``), or allowed MQTT edges without ``broker``.
    """
    service = model.service
    where = f"service {service!r}"
    flows: set[_Flow] = set()
    broker_peer: tuple[_Peer, int] | None = None
    for edge in model.edges:
        if edge.label not in ALLOWED_LABELS:
            continue
        by_device = edge.direction == "out"
        if edge.relation in _MQTT_RELATIONS:
            if broker is None:
                raise EnforceError(
                    f"{where}: its MQTT edges ({edge.relation} {edge.peer}) need the broker "
                    "they go to: pass broker='host' or 'host:port'"
                )
            if broker_peer is None:
                broker_peer = _broker(broker)
            flows.add(_Flow(broker_peer[0], "tcp", broker_peer[1], True))
            continue
        peer = _peer(edge.peer, f"{where}: peer of {edge.relation}")
        if edge.relation == "icmp":
            flows.add(_Flow(peer, "icmp", 0, True))  # ICMP has no initiator to tell apart
            continue
        match = _FLOW_RELATION.fullmatch(edge.relation)
        port = int(match.group(2)) if match else 0
        if match is None or not 1 <= port <= 65535:
            raise EnforceError(
                f"{where}: MUD cannot express the relation {edge.relation!r} toward "
                f"{edge.peer!r}; it takes tcp/PORT, udp/PORT, icmp and MQTT relations"
            )
        flows.add(_Flow(peer, match.group(1), port, by_device))

    digest = hashlib.sha256(_mud_url(mud_url).encode("utf-8")).hexdigest()[:8]
    acls: list[dict[str, Any]] = []
    policies: dict[str, list[dict[str, str]]] = {"from-device": [], "to-device": []}
    for family in (4, 6):
        mine = sorted(flow for flow in flows if flow.peer.family in (0, family))
        if not mine:
            continue
        for direction, suffix in (("from-device", "fr"), ("to-device", "to")):
            name = f"mud-{digest}-v{family}{suffix}"
            policies[direction].append({"name": name})
            aces = [
                {
                    "name": f"cl{index}-{suffix}dev",
                    "matches": _matches(flow, family, from_device=direction == "from-device"),
                    "actions": {"forwarding": "accept"},
                }
                for index, flow in enumerate(mine)
            ]
            acls.append({"name": name, "type": f"ipv{family}-acl-type", "aces": {"ace": aces}})
    return {
        "ietf-mud:mud": {
            "mud-version": 1,
            "mud-url": mud_url,
            "last-update": _timestamp(model.issued_at if last_update is None else last_update),
            "is-supported": True,
            "systeminfo": _systeminfo(systeminfo, service),
            "from-device-policy": {"access-lists": {"access-list": policies["from-device"]}},
            "to-device-policy": {"access-lists": {"access-list": policies["to-device"]}},
        },
        "ietf-access-control-list:acls": {"acl": acls},
    }


def _matches(flow: _Flow, family: int, *, from_device: bool) -> dict[str, Any]:
    """The ``matches`` of one ACE: layer 3 toward/from the peer, layer 4 ports."""
    l3: dict[str, Any] = {"protocol": _PROTOCOLS[flow.protocol][family == 6]}
    toward = "dst" if from_device else "src"
    if flow.peer.family == 0:
        l3[f"ietf-acldns:{toward}-dnsname"] = flow.peer.value
    else:
        side = "destination" if from_device else "source"
        l3[f"{side}-ipv{family}-network"] = flow.peer.value
    matches: dict[str, Any] = {f"ipv{family}": l3}
    if flow.protocol == "icmp":
        return matches
    # The port is the accepting side's: the destination of packets toward that side.
    peer_port_is_destination = from_device == flow.by_device
    l4: dict[str, Any] = {
        "destination-port" if peer_port_is_destination else "source-port": {
            "operator": "eq",
            "port": flow.port,
        }
    }
    if flow.protocol == "tcp":
        l4["ietf-mud:direction-initiated"] = "from-device" if flow.by_device else "to-device"
    matches[flow.protocol] = l4
    return matches


def _peer(text: str, where: str) -> _Peer:
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise EnforceError(f"{where}: {text!r} is not an IP network ({exc})") from exc
        return _Peer(network.version, network.with_prefixlen)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if len(text) <= 253 and _DOMAIN_NAME.fullmatch(text):
            return _Peer(0, text)
        raise EnforceError(f"{where}: {text!r} is neither an IP address nor a DNS name") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise EnforceError(f"{where}: {text!r} has a zone, which an ACL cannot match")
    return _Peer(address.version, f"{address}/{address.max_prefixlen}")


def _broker(text: str) -> tuple[_Peer, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a bare IPv6 address has no port."""
    host, port_text = text, ""
    bracketed = re.fullmatch(r"\[([^\]]*)\](?::([0-9]{1,5}))?", text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2) or ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isascii() or not port_text.isdigit():
            raise EnforceError(f"broker {text!r}: the port must be a number")
    port = int(port_text) if port_text else _MQTT_PORT
    if not 1 <= port <= 65535:
        raise EnforceError(f"broker {text!r}: port {port} is not between 1 and 65535")
    return _peer(host, f"broker {text!r}"), port


def _mud_url(url: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if (
        parts is None
        or parts.scheme != "https"
        or not parts.hostname
        or re.search(r"[\s\x00-\x1f\x7f]", url)
    ):
        raise EnforceError(f"mud_url {url!r} must be an https:// URL (RFC 8520)")
    return url


def _timestamp(value: float | datetime | str) -> str:
    when: datetime
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError as exc:
            raise EnforceError(f"last_update {value!r} is not an ISO 8601 time") from exc
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            when = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise EnforceError(f"last_update {value!r} is not a usable epoch time") from exc
    else:
        raise EnforceError(f"last_update must be epoch seconds or a time, not {value!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise EnforceError(f"last_update {value!r} needs a UTC offset")
    return when.isoformat()


def _systeminfo(text: str | None, service: str) -> str:
    if text is None:  # the service name, shortened to fit
        return service if len(service) <= _SYSTEMINFO_MAX else service[: _SYSTEMINFO_MAX - 1] + "…"
    problem = _string_problem(text, "a MUD systeminfo")
    if not problem and len(text) > _SYSTEMINFO_MAX:
        problem = f"is longer than {_SYSTEMINFO_MAX} characters (RFC 8520)"
    if problem:
        raise EnforceError(f"service {service!r}: systeminfo {text!r} {problem}")
    return text


# --- HTTP routes ------------------------------------------------------------------------------

_WEBSOCKET = " (websocket)"


def http_routes(models: Sequence[ServiceModel]) -> dict[str, Any]:
    """The HTTP allow-list of the models: per caller, the routes it may call, and per callee,
    its allowed routes with their callers. A route is an allowed ``http`` edge, ``METHOD
    service/path``; pending and denied edges are left out (the sidecar answers them 403).
    """
    callers: dict[str, set[tuple[str, str, str, bool]]] = {}
    served: dict[str, dict[tuple[str, str, bool], set[str]]] = {}
    for model in models:
        for edge in model.edges:
            if edge.relation != "http" or edge.direction != "out":
                continue
            if edge.label not in ALLOWED_LABELS:
                continue
            method, _, target = edge.peer.partition(" ")
            websocket = target.endswith(_WEBSOCKET)
            target = target.removesuffix(_WEBSOCKET)
            service, _, path = target.partition("/")
            route = (service, method, "/" + path, websocket)
            callers.setdefault(model.service, set()).add(route)
            served.setdefault(service, {}).setdefault(route[1:], set()).add(model.service)

    def entry(method: str, path: str, websocket: bool) -> dict[str, Any]:
        found: dict[str, Any] = {"method": method, "path": path}
        if websocket:
            found["websocket"] = True
        return found

    return {
        "callers": {
            caller: [
                {"service": service, **entry(method, path, ws)}
                for service, method, path, ws in sorted(routes)
            ]
            for caller, routes in sorted(callers.items())
        },
        "services": {
            service: [
                {**entry(method, path, ws), "callers": sorted(who)}
                for (method, path, ws), who in sorted(routes.items())
            ]
            for service, routes in sorted(served.items())
        },
    }
