"""Identity rules: the concrete address an adapter sees -> the service (and instance) behind it.

Rules are tried in order; the first that matches decides. A rule matches one kind of address
(``client_id``, ``username``, ``cert_cn``, ``host``, ``ip`` or ``any``) and is one of:

- exact:  ``equals = "192.168.1.128"``, ``service = "lock-hub"``
- regex:  ``pattern = '^(?P<service>thermo)-(?P<instance>.+)$'`` (group ``service`` required,
  ``instance`` optional)
- CIDR:   ``cidr = "10.0.3.0/24"``, ``service = "cameras"`` (``ip`` rules; instance = the address)

An address no rule maps is its own identity. When an adapter does not say what kind of
address it has (JSON lines, flow logs), IP literals are tried against ``ip``/``any`` rules and
every other string against the name kinds.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["AddressKind", "Identity", "IdentityRule", "Resolved"]


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
    """One rule; exactly one of ``equals``, ``pattern``, ``cidr`` is set."""

    match: AddressKind = AddressKind.ANY
    equals: str | None = None
    pattern: re.Pattern[str] | None = None
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    service: str | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        forms = sum(x is not None for x in (self.equals, self.pattern, self.cidr))
        if forms != 1:
            raise ValueError("a rule needs exactly one of 'equals', 'pattern', 'cidr'")
        if self.pattern is not None:
            if "service" not in self.pattern.groupindex:
                raise ValueError("'pattern' needs a named group (?P<service>...)")
        elif not self.service:
            raise ValueError("'equals' and 'cidr' rules need 'service'")
        if self.cidr is not None and self.match not in (AddressKind.IP, AddressKind.ANY):
            raise ValueError("'cidr' rules match IP addresses: use match = \"ip\"")

    def apply(
        self, address: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ) -> Resolved | None:
        """The identity if this rule maps ``address`` (``ip`` is its parsed form, if any)."""
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

    def __init__(self, rules: Sequence[IdentityRule] = ()) -> None:
        self.rules = tuple(rules)

    def resolve(self, address: str, kind: AddressKind | None = None) -> Resolved:
        """Map a concrete address to its identity; unmapped addresses are their own identity.

        ``kind`` is what the adapter knows the address to be; ``None`` means unknown.
        """
        ip = _parse_ip(address)
        for rule in self.rules:
            if not _applies(rule.match, kind, ip is not None):
                continue
            resolved = rule.apply(address, ip)
            if resolved is not None:
                return resolved
        return Resolved(address)

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


def _applies(rule_kind: AddressKind, kind: AddressKind | None, is_ip: bool) -> bool:
    if rule_kind is AddressKind.ANY:
        return True
    if kind is not None:
        return rule_kind is kind or (rule_kind is AddressKind.IP and is_ip)
    return rule_kind is AddressKind.IP if is_ip else rule_kind in _NAME_KINDS


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address or not (address[0].isdigit() or ":" in address):
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None
