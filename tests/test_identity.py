from __future__ import annotations

import ipaddress
import re

import pytest

from commgraph.identity import AddressKind, Identity, IdentityRule, Resolved

THERMO = re.compile(r"^(?P<service>thermo)-(?P<instance>.+)$")


def exact(value: str, service: str, match: AddressKind = AddressKind.ANY) -> IdentityRule:
    return IdentityRule(match=match, equals=value, service=service)


def regex(pattern: str | re.Pattern[str], match: AddressKind = AddressKind.ANY) -> IdentityRule:
    return IdentityRule(match=match, pattern=re.compile(pattern))


def cidr(network: str, service: str, match: AddressKind = AddressKind.IP) -> IdentityRule:
    return IdentityRule(match=match, cidr=ipaddress.ip_network(network), service=service)


# -- the three forms ------------------------------------------------------------------------


def test_exact_rule() -> None:
    identity = Identity([exact("192.168.1.128", "lock-hub")])
    assert identity.resolve("192.168.1.128") == Resolved("lock-hub")
    assert identity.resolve("192.168.1.129") == Resolved("192.168.1.129")


def test_exact_rule_with_instance() -> None:
    rule = IdentityRule(equals="hub-1", service="lock-hub", instance="front")
    assert Identity([rule]).resolve("hub-1") == Resolved("lock-hub", "front")


def test_regex_rule_with_service_and_instance() -> None:
    identity = Identity([regex(THERMO, AddressKind.CLIENT_ID)])
    assert identity.resolve("thermo-kitchen-7") == Resolved("thermo", "kitchen-7")
    assert identity.resolve("thermo-living-2", AddressKind.CLIENT_ID) == Resolved(
        "thermo", "living-2"
    )
    assert identity.resolve("valve-kitchen") == Resolved("valve-kitchen")


def test_regex_rule_without_instance_group_uses_rule_instance() -> None:
    rule = IdentityRule(pattern=re.compile(r"^(?P<service>cam)\d+$"), instance="fixed")
    assert Identity([rule]).resolve("cam12") == Resolved("cam", "fixed")
    plain = IdentityRule(pattern=re.compile(r"^(?P<service>cam)\d+$"))
    assert Identity([plain]).resolve("cam12") == Resolved("cam", None)


def test_regex_rule_with_empty_service_group_does_not_match() -> None:
    identity = Identity([regex(r"^(?P<service>x*)-(?P<instance>.+)$")])
    assert identity.resolve("-abc") == Resolved("-abc")


def test_cidr_rule_ipv4() -> None:
    identity = Identity([cidr("10.0.3.0/24", "cameras")])
    assert identity.resolve("10.0.3.17") == Resolved("cameras", "10.0.3.17")
    assert identity.resolve("10.0.4.17") == Resolved("10.0.4.17")


def test_cidr_rule_ipv6() -> None:
    identity = Identity([cidr("fd00:1::/64", "cameras")])
    assert identity.resolve("fd00:1::42") == Resolved("cameras", "fd00:1::42")
    assert identity.resolve("fd00:2::42") == Resolved("fd00:2::42")


def test_cidr_rule_does_not_mix_ip_versions() -> None:
    identity = Identity([cidr("0.0.0.0/0", "v4"), cidr("::/0", "v6")])
    assert identity.resolve("1.2.3.4").service == "v4"
    assert identity.resolve("::1").service == "v6"
    assert identity.resolve("not-an-ip") == Resolved("not-an-ip")


def test_cidr_rule_with_explicit_instance() -> None:
    rule = IdentityRule(
        match=AddressKind.IP,
        cidr=ipaddress.ip_network("10.0.0.0/8"),
        service="lan",
        instance="any-host",
    )
    assert Identity([rule]).resolve("10.1.2.3") == Resolved("lan", "any-host")


# -- order and kinds ------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    identity = Identity(
        [
            exact("thermo-kitchen-7", "special"),
            regex(THERMO),
            regex(r"^(?P<service>therm)o"),
        ]
    )
    assert identity.resolve("thermo-kitchen-7") == Resolved("special")
    assert identity.resolve("thermo-living-2") == Resolved("thermo", "living-2")


def test_rule_order_reversed_changes_the_result() -> None:
    rules = [regex(THERMO), exact("thermo-kitchen-7", "special")]
    assert Identity(rules).resolve("thermo-kitchen-7") == Resolved("thermo", "kitchen-7")
    assert Identity(rules[::-1]).resolve("thermo-kitchen-7") == Resolved("special")


def test_cidr_before_exact_in_order() -> None:
    identity = Identity([cidr("10.0.0.0/8", "lan"), exact("10.0.0.1", "router")])
    assert identity.resolve("10.0.0.1").service == "lan"


def test_ip_rule_never_applies_to_a_name() -> None:
    identity = Identity([IdentityRule(match=AddressKind.IP, equals="gateway", service="gw")])
    assert identity.resolve("gateway") == Resolved("gateway")
    assert identity.resolve("gateway", AddressKind.HOST) == Resolved("gateway")
    assert identity.resolve("gateway", AddressKind.CLIENT_ID) == Resolved("gateway")


def test_ip_rule_applies_to_an_ip_literal() -> None:
    identity = Identity([IdentityRule(match=AddressKind.IP, equals="10.0.0.1", service="gw")])
    assert identity.resolve("10.0.0.1") == Resolved("gw")
    assert identity.resolve("10.0.0.1", AddressKind.HOST) == Resolved("gw")


def test_client_id_rule_never_applies_to_an_ip_literal_of_unknown_kind() -> None:
    identity = Identity([regex(r"^(?P<service>10)\.", AddressKind.CLIENT_ID)])
    assert identity.resolve("10.0.0.1") == Resolved("10.0.0.1")
    assert identity.resolve("10.foo") == Resolved("10")
    v6 = Identity([exact("::1", "loop", AddressKind.CLIENT_ID)])
    assert v6.resolve("::1") == Resolved("::1")


def test_client_id_rule_does_not_apply_to_a_host() -> None:
    identity = Identity([regex(THERMO, AddressKind.CLIENT_ID)])
    assert identity.resolve("thermo-kitchen-7", AddressKind.HOST) == Resolved("thermo-kitchen-7")
    assert identity.resolve("thermo-kitchen-7", AddressKind.USERNAME) == Resolved(
        "thermo-kitchen-7"
    )
    assert identity.resolve("thermo-kitchen-7", AddressKind.CLIENT_ID) == Resolved(
        "thermo", "kitchen-7"
    )


@pytest.mark.parametrize(
    "kind", [AddressKind.CLIENT_ID, AddressKind.USERNAME, AddressKind.CERT_CN, AddressKind.HOST]
)
def test_name_rules_apply_to_names_of_unknown_kind(kind: AddressKind) -> None:
    identity = Identity([exact("box-1", "box", kind)])
    assert identity.resolve("box-1") == Resolved("box")
    assert identity.resolve("box-1", kind) == Resolved("box")


def test_any_rule_applies_to_every_kind() -> None:
    identity = Identity([regex(THERMO, AddressKind.ANY)])
    for kind in [None, *AddressKind]:
        assert identity.resolve("thermo-a", kind) == Resolved("thermo", "a")


def test_name_that_only_looks_like_an_ip_is_a_name() -> None:
    identity = Identity([exact("1-wire-bus", "bus", AddressKind.CLIENT_ID)])
    assert identity.resolve("1-wire-bus") == Resolved("bus")


# -- unmapped and invalid -------------------------------------------------------------------


@pytest.mark.parametrize("address", ["thermo-1", "10.0.0.1", "::1", "home/kitchen/temp"])
def test_unmapped_address_is_its_own_identity(address: str) -> None:
    assert Identity().resolve(address) == Resolved(address)
    assert Identity().resolve(address).instance is None


def test_rule_needs_a_service_group() -> None:
    with pytest.raises(ValueError, match="service"):
        IdentityRule(pattern=re.compile(r"^(?P<name>thermo)-(?P<instance>.+)$"))


def test_rule_needs_exactly_one_form() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        IdentityRule(equals="a", pattern=THERMO, service="x")
    with pytest.raises(ValueError, match="exactly one"):
        IdentityRule(equals="a", cidr=ipaddress.ip_network("10.0.0.0/8"), service="x")
    with pytest.raises(ValueError, match="exactly one"):
        IdentityRule(service="x")


@pytest.mark.parametrize("match", [AddressKind.CLIENT_ID, AddressKind.HOST])
def test_cidr_rule_must_match_ip(match: AddressKind) -> None:
    with pytest.raises(ValueError, match="cidr"):
        cidr("10.0.0.0/8", "lan", match=match)


def test_cidr_rule_may_match_any() -> None:
    rule = cidr("10.0.0.0/8", "lan", match=AddressKind.ANY)
    assert Identity([rule]).resolve("10.9.9.9") == Resolved("lan", "10.9.9.9")


@pytest.mark.parametrize("service", [None, ""])
def test_exact_and_cidr_rules_need_a_service(service: str | None) -> None:
    with pytest.raises(ValueError, match="service"):
        IdentityRule(equals="a", service=service)
    with pytest.raises(ValueError, match="service"):
        IdentityRule(match=AddressKind.IP, cidr=ipaddress.ip_network("10.0.0.0/8"), service=service)


def test_resolve_client_tries_each_rule_against_the_address_of_its_kind() -> None:
    identity = Identity(
        [
            IdentityRule(match=AddressKind.CERT_CN, pattern=re.compile(r"^(?P<service>lock)-")),
            IdentityRule(match=AddressKind.USERNAME, equals="hvac-user", service="hvac"),
            IdentityRule(
                match=AddressKind.CLIENT_ID,
                pattern=re.compile(r"^(?P<service>thermo)-(?P<instance>.+)$"),
            ),
        ]
    )
    assert identity.resolve_client("x", None, "lock-hub-3").service == "lock"
    assert identity.resolve_client("thermo-7", "hvac-user", None).service == "hvac"
    assert identity.resolve_client("thermo-7", "someone", None) == Resolved("thermo", "7")
    # a username never matches a client_id rule, and unmapped clients are their own identity
    assert identity.resolve_client("other", "thermo-9", None) == Resolved("other")
    # with a certificate and no rule, the certificate's name is the identity
    assert identity.resolve_client("other", None, "cam-2") == Resolved("cam-2")


# -- scopes, relations and names from DNS ------------------------------------------------------


def test_scope_rules_tell_local_from_internet_addresses() -> None:
    identity = Identity(
        [
            IdentityRule(scope="internet", relation="udp/123", service="ntp@internet"),
            IdentityRule(scope="local", relation="udp/67", service="dhcp@lan"),
        ]
    )
    assert identity.resolve("162.159.200.1", relation="udp/123") == Resolved(
        "ntp@internet", "162.159.200.1"
    )
    # the same host on another relation is itself; a LAN NTP server is not "internet"
    assert identity.resolve("162.159.200.1", relation="tcp/443") == Resolved("162.159.200.1")
    assert identity.resolve("192.168.1.1", relation="udp/123") == Resolved("192.168.1.1")
    for lan in ("192.168.1.1", "255.255.255.255", "224.0.0.251", "fe80::1", "127.0.0.1"):
        assert identity.resolve(lan, relation="udp/67").service == "dhcp@lan", lan
    assert identity.resolve("8.8.8.8", relation="udp/67") == Resolved("8.8.8.8")
    assert identity.resolve("ntp.example", relation="udp/123") == Resolved("ntp.example")
    assert identity.relation_specific("udp/123") and not identity.relation_specific("udp/53")


def test_relation_patterns() -> None:
    rule = IdentityRule(scope="internet", relation="tcp/*", service="web")
    assert rule.applies_to("tcp/443") and rule.applies_to("tcp/8883")
    assert not rule.applies_to("udp/443") and not rule.applies_to(None)


def test_dns_names_travel_and_are_bounded() -> None:
    identity = Identity([IdentityRule(dns=True)], max_names=2)
    assert identity.resolve("35.1.2.3") == Resolved("35.1.2.3")
    assert identity.learn_name("35.1.2.3", "A1B2.iot.eu-west-1.amazonaws.com.")
    assert not identity.learn_name("35.1.2.3", "a1b2.iot.eu-west-1.amazonaws.com")
    assert identity.resolve("35.1.2.3") == Resolved("a1b2.iot.eu-west-1.amazonaws.com")
    identity.learn_name("35.1.2.4", "a1b2.iot.eu-west-1.amazonaws.com")
    identity.learn_name("35.1.2.5", "other.example")
    assert identity.resolve("35.1.2.3") == Resolved("35.1.2.3")  # forgotten: the oldest
    assert identity.resolve("35.1.2.4").service == "a1b2.iot.eu-west-1.amazonaws.com"
    assert not Identity().learn_name("35.1.2.3", "x.example")  # no dns rule: nothing kept
    assert not identity.learn_name("not-an-ip", "x.example")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"scope": "mars", "service": "x"}, "'scope' must be"),
        ({"scope": "internet"}, "need 'service'"),
        ({"dns": True, "service": "x"}, "leave out 'service'"),
        ({"dns": True, "match": AddressKind.USERNAME}, "match IP addresses"),
        ({"dns": True, "cidr": ipaddress.ip_network("10.0.0.0/8")}, "exactly one of"),
    ],
)
def test_bad_scope_and_dns_rules(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        IdentityRule(**fields)  # type: ignore[arg-type]


def test_http_callers_by_certificate_user_then_address() -> None:
    identity = Identity(
        [
            IdentityRule(match=AddressKind.CERT_CN, equals="hub.site", service="hub"),
            IdentityRule(match=AddressKind.USERNAME, equals="alice", service="phone"),
            IdentityRule(
                match=AddressKind.IP, cidr=ipaddress.ip_network("127.0.0.0/24"), service="lan"
            ),
            IdentityRule(match=AddressKind.IP, scope="local", service="x", relation="tcp/*"),
        ]
    )
    assert identity.resolve_caller("127.0.0.2", "alice", "hub.site").service == "hub"
    assert identity.resolve_caller("127.0.0.2", "alice").service == "phone"
    assert identity.resolve_caller("127.0.0.2", "bob") == Resolved("lan", "127.0.0.2")
    assert identity.resolve_caller("10.1.1.1", "bob") == Resolved("bob")  # unmapped: the user
    assert identity.resolve_caller("10.1.1.1") == Resolved("10.1.1.1")  # relation rules skipped


# -- the default profile ---------------------------------------------------------------------

from commgraph.alerts import AlertKind  # noqa: E402
from commgraph.engine import Engine  # noqa: E402
from commgraph.events import Event, VertexKind  # noqa: E402
from commgraph.identity import DEFAULT_PROFILE, describe, profile_rules  # noqa: E402
from commgraph.phases import LearningSettings, Mode  # noqa: E402

DEVICE = "192.168.1.50"
T0 = 1_700_000_000.0


def flow(ts: float, dst: str, relation: str) -> Event:
    return Event(ts=ts, src=DEVICE, dst=dst, relation=relation)


@pytest.mark.parametrize(
    ("learned", "churned", "relation", "service"),
    [
        ("129.6.15.28", "162.159.200.1", "udp/123", "ntp@internet"),
        ("8.8.8.8", "1.1.1.1", "udp/53", "dns@internet"),
        ("8.8.4.4", "9.9.9.9", "tcp/53", "dns@internet"),
        ("192.168.1.1", "255.255.255.255", "udp/67", "dhcp@lan"),
        ("192.168.1.1", "192.168.1.254", "udp/68", "dhcp@lan"),
        ("ff02::1:2", "fe80::1", "udp/547", "dhcpv6@lan"),
        ("224.0.0.251", "ff02::fb", "udp/5353", "mdns@lan"),
        ("239.255.255.250", "ff02::c", "udp/1900", "ssdp@lan"),
        ("ff02::1:ff00:1", "ff02::2", "icmp", "nd@lan"),
        ("255.255.255.255", "255.255.255.255", "udp/6667", "broadcast@lan"),
        ("224.0.0.22", "239.1.2.3", "udp/5000", "multicast@lan"),
        ("ff02::16", "ff05::1:3", "udp/5001", "multicast@lan"),
    ],
)
def test_each_default_rule_absorbs_churn_after_learning(
    learned: str, churned: str, relation: str, service: str
) -> None:
    engine = Engine(
        LearningSettings(duration=600, mode=Mode.MONITOR), Identity(profile_rules("default"))
    )
    assert engine.observe(flow(T0, learned, relation)).alert is None
    engine.tick(T0 + 700)
    verdict = engine.observe(flow(T0 + 800, churned, relation))
    assert verdict.alert is None and not verdict.anomalous
    assert engine.edge_names(engine.edge_of(DEVICE, churned, relation) or 0) == (
        DEVICE,
        service,
        relation,
    )
    # without the profile the same churn is a question
    plain = Engine(LearningSettings(duration=600, mode=Mode.MONITOR))
    plain.observe(flow(T0, learned, relation))
    plain.tick(T0 + 700)
    if churned != learned:
        assert plain.observe(flow(T0 + 800, churned, relation)).alert is not None


def test_the_default_profile_keeps_broker_ports_and_other_internet_hosts_their_own() -> None:
    engine = Engine(
        LearningSettings(duration=600, mode=Mode.PROTECT), Identity(profile_rules("default"))
    )
    engine.observe(flow(T0, "47.89.226.20", "tcp/1883"))
    engine.tick(T0 + 700)
    for host, relation in (("47.89.226.21", "tcp/1883"), ("3.3.3.3", "tcp/8883")):
        verdict = engine.observe(flow(T0 + 800, host, relation))
        assert verdict.alert is not None and verdict.block
        assert engine.alerts.by_id[verdict.alert].kind is AlertKind.NEW_EDGE
    # a local host on NTP (a LAN time server) and a LAN DNS resolver keep their address
    identity = Identity(DEFAULT_PROFILE)
    assert identity.resolve("192.168.1.1", relation="udp/123") == Resolved("192.168.1.1")
    assert identity.resolve("192.168.1.1", relation="udp/53") == Resolved("192.168.1.1")
    assert identity.resolve("8.8.8.8", relation="udp/123") == Resolved("ntp@internet", "8.8.8.8")


def test_site_rules_come_before_the_profile_and_explain_names_the_rule() -> None:
    own = IdentityRule(
        match=AddressKind.IP,
        equals="129.6.15.28",
        service="nist-time",
    )
    identity = Identity((own, *DEFAULT_PROFILE))
    assert identity.resolve("129.6.15.28", relation="udp/123") == Resolved("nist-time")
    found = identity.explain("162.159.200.1", relation="udp/123")
    assert found is not None
    index, rule, resolved = found
    assert (index, resolved) == (1, Resolved("ntp@internet", "162.159.200.1"))
    assert describe(rule) == "any internet address on udp/123 -> ntp@internet"
    assert identity.explain("47.89.226.20", relation="tcp/1883") is None
    assert profile_rules("none") == ()
    with pytest.raises(ValueError, match='not a profile \\(one of "default", "none"\\)'):
        profile_rules("strict")


def test_a_fold_names_rotating_dns_names_by_their_pattern() -> None:
    pattern = "*.iot-as-mqtt.us-west-1.aliyuncs.com"
    rule = IdentityRule(dns=True, fold=(pattern,))
    identity = Identity([rule])
    identity.learn_name("47.89.226.20", "A1GUXEFYNXG.iot-as-mqtt.us-west-1.aliyuncs.com.")
    identity.learn_name("47.89.226.21", "b2other.iot-as-mqtt.us-west-1.aliyuncs.com")
    identity.learn_name("52.1.2.3", "api.example.com")
    assert identity.resolve("47.89.226.20") == Resolved(
        pattern, "a1guxefynxg.iot-as-mqtt.us-west-1.aliyuncs.com"
    )
    assert identity.resolve("47.89.226.21").service == pattern
    assert identity.resolve("52.1.2.3") == Resolved("api.example.com")
    assert identity.name_of("47.89.226.21") == pattern
    assert describe(rule) == f"an address a DNS answer named -> that name ({pattern} folded)"
    with pytest.raises(ValueError, match="'fold' folds DNS names"):
        IdentityRule(scope="internet", service="x", fold=(pattern,))
    # in the engine: a host seen before its answer takes the folded name
    engine = Engine(LearningSettings(duration=600), identity)
    engine.observe(flow(T0, "47.89.226.30", "tcp/8883"))
    engine.learn_name("47.89.226.30", "c3.iot-as-mqtt.us-west-1.aliyuncs.com")
    engine.observe(flow(T0 + 1, "47.89.226.31", "tcp/8883"))
    engine.learn_name("47.89.226.31", "d4.iot-as-mqtt.us-west-1.aliyuncs.com")
    engine.observe(flow(T0 + 2, "47.89.226.31", "tcp/8883"))
    assert engine.graph.vertex(VertexKind.HOST, pattern) is not None
    assert engine.edge_names(engine.edge_of(DEVICE, "47.89.226.31", "tcp/8883") or 0) == (
        DEVICE,
        pattern,
        "tcp/8883",
    )
