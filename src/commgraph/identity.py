"""Identity rules: the concrete address an adapter sees -> the service (and instance) behind it.

Rules are tried in order; the first that matches decides. A rule matches one kind of address
(``client_id``, ``username``, ``cert_cn``, ``host``, ``ip`` or ``any``) and is one of:

- exact:  ``equals = "192.168.1.128"``, ``service = "lock-hub"``
- regex:  ``pattern = '^(?P<service>thermo)-(?P<instance>.+)$'`` (group ``service`` required,
  ``instance`` optional)
- CIDR:   ``cidr = "10.0.3.0/24"``, ``service = "cameras"`` (``ip`` rules; instance = the address)
- scope:  ``scope = "internet"`` or ``"local"`` (private, loopback, link-local, multicast and
  broadcast addresses are local), ``service = "ntp@internet"`` (instance = the address)
- DNS:    ``dns = true``: an address a DNS answer named is that name (``a1b2.iot.eu-west-1.
  amazonaws.com`` rather than whichever of its addresses answered); names come in through
  :meth:`Identity.learn_name`, from the DNS answers an adapter sees. ``fold = ["*.iot-as-
  mqtt.us-west-1.aliyuncs.com"]`` folds rotating names: a name matching one of the patterns
  is named by the pattern (instance = the name).

Any rule may also name the ``relation`` it is for (``"udp/123"``, or a pattern such as
``"tcp/*"``): then it maps only counterparts of that relation, so "any internet host on
udp/123 is ntp@internet" is one rule. An address no rule maps is its own identity. When an
adapter does not say what kind of address it has (JSON lines, flow logs), IP literals are
tried against ``ip``/``any`` rules and every other string against the name kinds.

The default profile (:data:`DEFAULT_PROFILE`, ``[identity] profile = "default"``) names the
counterparts that churn on every site by a class, after the site's own rules:

- ``ntp@internet``: any internet host on udp/123 (NTP pools hand out new servers);
- ``dns@internet``: any internet host on udp/53 or tcp/53 (public resolvers);
- ``dhcp@lan``: any LAN address on udp/67 or udp/68, ``dhcpv6@lan`` on udp/547;
- ``mdns@lan``: udp/5353 on the LAN, ``ssdp@lan``: udp/1900 on the LAN (UPnP);
- ``nd@lan``: ICMP to a link-local IPv6 multicast group (ff02::/16: neighbour discovery);
- ``broadcast@lan``: 255.255.255.255; ``multicast@lan``: 224.0.0.0/4 and ff00::/8.

Each keeps the concrete address as its instance. Broker ports (tcp/1883, tcp/8883) and every
other internet host keep their own identity: a new broker is a question, never a class.
``profile = "none"`` leaves only the site's rules.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_PROFILE",
    "MAX_NAMES",
    "PROFILES",
    "SCOPES",
    "AddressKind",
    "Identity",
    "IdentityRule",
    "Resolved",
    "describe",
    "profile_rules",
]

SCOPES = frozenset({"local", "internet"})
MAX_NAMES = 100_000
"""Addresses whose DNS name is remembered; the least recently named are forgotten first."""


class AddressKind(StrEnum):
    """What kind of address a rule applies to."""

    CLIENT_ID = "client_id"
    USERNAME = "username"
    CERT_CN = "cert_cn"
    HOST = "host"
    IP = "ip"
    ANY = "any"


_NAME_KINDS = frozenset(
    {AddressKind.CLIENT_ID, AddressKind.USERNAME, AddressKind.CERT_CN, AddressKind.HOST}
)


@dataclass(frozen=True, slots=True)
class Resolved:
    """The identity behind an address: the service, and which instance of it."""

    service: str
    instance: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityRule:
    """One rule; exactly one of ``equals``, ``pattern``, ``cidr``, ``scope``, ``dns`` is set,
    and optionally the ``relation`` (an fnmatch pattern) it is limited to."""

    match: AddressKind = AddressKind.ANY
    equals: str | None = None
    pattern: re.Pattern[str] | None = None
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    scope: str | None = None
    dns: bool = False
    fold: tuple[str, ...] = ()  # dns rules: fnmatch patterns of names named by the pattern
    relation: str | None = None
    service: str | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        given = (self.equals, self.pattern, self.cidr, self.scope, self.dns or None)
        if sum(x is not None for x in given) != 1:
            raise ValueError(
                "a rule needs exactly one of 'equals', 'pattern', 'cidr', 'scope', 'dns'"
            )
        if self.pattern is not None:
            if "service" not in self.pattern.groupindex:
                raise ValueError("'pattern' needs a named group (?P<service>...)")
        elif self.dns:
            if self.service is not None:
                raise ValueError("'dns' rules name the address by DNS: leave out 'service'")
        elif not self.service:
            raise ValueError("'equals', 'cidr' and 'scope' rules need 'service'")
        if self.scope is not None and self.scope not in SCOPES:
            raise ValueError(f'\'scope\' must be "local" or "internet", not {self.scope!r}')
        needs_ip = self.cidr is not None or self.scope is not None or self.dns
        if needs_ip and self.match not in (AddressKind.IP, AddressKind.ANY):
            raise ValueError(
                "'cidr', 'scope' and 'dns' rules match IP addresses: use match = \"ip\""
            )
        if self.relation is not None and not self.relation:
            raise ValueError("'relation' must not be empty")
        if self.fold and not self.dns:
            raise ValueError("'fold' folds DNS names: it needs 'dns = true'")
        if any(not pattern for pattern in self.fold):
            raise ValueError("'fold' patterns must not be empty")

    def applies_to(self, relation: str | None) -> bool:
        """Whether the rule may map a counterpart of ``relation`` (None: not known)."""
        if self.relation is None:
            return True
        return relation is not None and fnmatch.fnmatchcase(relation, self.relation)

    def apply(
        self,
        address: str,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        names: dict[str, str] | None = None,
    ) -> Resolved | None:
        """The identity if this rule maps ``address`` (``ip`` is its parsed form, if any;
        ``names`` the names DNS gave addresses)."""
        if self.dns:
            name = None if names is None or ip is None else names.get(address)
            if name is None:
                return None
            for pattern in self.fold:
                if fnmatch.fnmatchcase(name, pattern):
                    return Resolved(pattern, self.instance or name)
            return Resolved(name, self.instance)
        if self.scope is not None:
            if ip is None or _scope(ip) != self.scope:
                return None
            assert self.service is not None
            return Resolved(self.service, self.instance or address)
        if self.equals is not None:
            if address == self.equals:
                assert self.service is not None
                return Resolved(self.service, self.instance)
            return None
        if self.pattern is not None:
            found = self.pattern.search(address)
            if found is None or not found.group("service"):
                return None
            groups = found.groupdict()
            return Resolved(found.group("service"), groups.get("instance") or self.instance)
        assert self.cidr is not None and self.service is not None
        if ip is not None and ip.version == self.cidr.version and ip in self.cidr:
            return Resolved(self.service, self.instance or address)
        return None


class Identity:
    """Ordered identity rules; :meth:`resolve` is pure and cheap enough to cache per address."""

    def __init__(self, rules: Sequence[IdentityRule] = (), *, max_names: int = MAX_NAMES) -> None:
        self.rules = tuple(rules)
        self.names: OrderedDict[str, str] = OrderedDict()  # address -> name from DNS
        self.max_names = max_names
        self.uses_dns = any(rule.dns for rule in self.rules)

    def resolve(
        self, address: str, kind: AddressKind | None = None, relation: str | None = None
    ) -> Resolved:
        """Map a concrete address to its identity; unmapped addresses are their own identity.

        ``kind`` is what the adapter knows the address to be; ``None`` means unknown.
        ``relation`` is the relation the address is the counterpart of, if any.
        """
        ip = _parse_ip(address)
        for rule in self.rules:
            if not _applies(rule.match, kind, ip is not None) or not rule.applies_to(relation):
                continue
            resolved = rule.apply(address, ip, self.names)
            if resolved is not None:
                return resolved
        return Resolved(address)

    def explain(
        self, address: str, kind: AddressKind | None = None, relation: str | None = None
    ) -> tuple[int, IdentityRule, Resolved] | None:
        """Which rule (its position in :attr:`rules`) names ``address`` as :meth:`resolve`
        would, and what it names it; None when no rule does (the address is its own)."""
        ip = _parse_ip(address)
        for index, rule in enumerate(self.rules):
            if not _applies(rule.match, kind, ip is not None) or not rule.applies_to(relation):
                continue
            resolved = rule.apply(address, ip, self.names)
            if resolved is not None:
                return index, rule, resolved
        return None

    def relation_specific(self, relation: str) -> bool:
        """Whether some rule maps counterparts of ``relation`` differently from others."""
        return any(rule.relation is not None and rule.applies_to(relation) for rule in self.rules)

    def name_of(self, address: str) -> str | None:
        """The name DNS gave ``address``, folded by the first ``dns`` rule's ``fold``."""
        name = self.names.get(address)
        if name is None:
            return None
        for rule in self.rules:
            if rule.dns:
                for pattern in rule.fold:
                    if fnmatch.fnmatchcase(name, pattern):
                        return pattern
                break
        return name

    def learn_name(self, address: str, name: str) -> bool:
        """A DNS answer named ``address``; returns whether that changes what it resolves to
        (only when a ``dns`` rule is configured)."""
        if not self.uses_dns or not name or _parse_ip(address) is None:
            return False
        name = name.rstrip(".").lower()
        if self.names.get(address) == name:
            self.names.move_to_end(address)
            return False
        self.names[address] = name
        self.names.move_to_end(address)
        while len(self.names) > self.max_names:
            self.names.popitem(last=False)
        return True

    def resolve_client(
        self, client_id: str, username: str | None = None, cert_cn: str | None = None
    ) -> Resolved:
        """The identity of an MQTT client from everything the proxy knows about it.

        Rules are tried in order, each against the address of its kind (``any`` rules against
        the certificate name, then the username, then the client id). Unmapped, the TLS
        certificate's name is the identity if there is one, else the client id.
        """
        candidates = [
            (AddressKind.CERT_CN, cert_cn),
            (AddressKind.USERNAME, username),
            (AddressKind.CLIENT_ID, client_id),
        ]
        for rule in self.rules:
            for kind, address in candidates:
                if address and rule.match in (kind, AddressKind.ANY):
                    resolved = rule.apply(address, None)
                    if resolved is not None:
                        return resolved
        return Resolved(cert_cn or client_id)

    def resolve_caller(
        self, ip: str, username: str | None = None, cert_cn: str | None = None
    ) -> Resolved:
        """The identity of an HTTP caller from what the sidecar knows: its IP address (after
        trusted ``X-Forwarded-For``), its HTTP Basic user, its TLS certificate's name.

        Rules are tried in order, each against the address of its kind (``any`` rules against
        the certificate name, then the user, then the IP); rules limited to a relation map
        counterparts, not callers, and are skipped. Unmapped, the certificate's name is the
        identity if there is one, else the user, else the IP address.
        """
        parsed = _parse_ip(ip)
        candidates = [
            (AddressKind.CERT_CN, cert_cn, None),
            (AddressKind.USERNAME, username, None),
            (AddressKind.IP, ip, parsed),
        ]
        for rule in self.rules:
            if rule.relation is not None:
                continue
            for kind, address, address_ip in candidates:
                if address and _applies(rule.match, kind, address_ip is not None):
                    resolved = rule.apply(address, address_ip, self.names)
                    if resolved is not None:
                        return resolved
        return Resolved(cert_cn or username or ip)


def _class(relation: str | None, service: str, *, scope: str = "", cidr: str = "") -> IdentityRule:
    return IdentityRule(
        match=AddressKind.IP,
        scope=scope or None,
        cidr=ipaddress.ip_network(cidr) if cidr else None,
        relation=relation,
        service=service,
    )


DEFAULT_PROFILE: tuple[IdentityRule, ...] = (
    _class("udp/123", "ntp@internet", scope="internet"),
    _class("udp/53", "dns@internet", scope="internet"),
    _class("tcp/53", "dns@internet", scope="internet"),
    _class("udp/67", "dhcp@lan", scope="local"),
    _class("udp/68", "dhcp@lan", scope="local"),
    _class("udp/547", "dhcpv6@lan", scope="local"),
    _class("udp/5353", "mdns@lan", scope="local"),
    _class("udp/1900", "ssdp@lan", scope="local"),
    _class("icmp", "nd@lan", cidr="ff02::/16"),
    _class(None, "broadcast@lan", cidr="255.255.255.255/32"),
    _class(None, "multicast@lan", cidr="224.0.0.0/4"),
    _class(None, "multicast@lan", cidr="ff00::/8"),
)
"""The default profile's rules, in order (the module docstring says why each)."""

PROFILES: dict[str, tuple[IdentityRule, ...]] = {"default": DEFAULT_PROFILE, "none": ()}
"""``[identity] profile`` values and the rules each adds after the site's own."""


def profile_rules(name: str) -> tuple[IdentityRule, ...]:
    """The rules of profile ``name``; ValueError naming the known ones for any other."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(f'"{known}"' for known in PROFILES)
        raise ValueError(f"{name!r} is not a profile (one of {known})") from None


def describe(rule: IdentityRule) -> str:
    """One line that says what ``rule`` matches and what it names it."""
    if rule.dns:
        what = "an address a DNS answer named"
    elif rule.scope is not None:
        what = f"any {rule.scope} address"
    elif rule.cidr is not None:
        what = f"an address in {rule.cidr}"
    elif rule.equals is not None:
        what = f"{rule.match.value} = {rule.equals!r}"
    else:
        assert rule.pattern is not None
        what = f"{rule.match.value} matching {rule.pattern.pattern!r}"
    if rule.relation is not None:
        what += f" on {rule.relation}"
    if rule.dns:
        folded = f" ({', '.join(rule.fold)} folded)" if rule.fold else ""
        return f"{what} -> that name{folded}"
    if rule.pattern is not None:
        return f"{what} -> its (?P<service>) group"
    return f"{what} -> {rule.service}"


def _applies(rule_kind: AddressKind, kind: AddressKind | None, is_ip: bool) -> bool:
    if rule_kind is AddressKind.ANY:
        return True
    if kind is not None:
        return rule_kind is kind or (rule_kind is AddressKind.IP and is_ip)
    return rule_kind is AddressKind.IP if is_ip else rule_kind in _NAME_KINDS


def _scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """ "internet" for globally routed addresses, "local" for the rest (private, loopback,
    link-local, multicast, broadcast, documentation...)."""
    if ip.is_multicast:
        return "local"
    return "internet" if ip.is_global else "local"


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address or not (address[0].isdigit() or ":" in address):
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None
