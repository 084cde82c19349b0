from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from commgraph.config import (
    format_duration,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
)
from commgraph.errors import ConfigError
from commgraph.identity import AddressKind, Identity
from commgraph.phases import Mode

SITE = """
[node]
name = "node-a"
db = "node-a.db"
[learning]
duration = "1h"
min_events = 10
[learning.services]
thermo = "2h"
[modes]
default = "monitor"
[modes.services]
valve = "protect"
[protect]
pending = "allow"
[[identity.rules]]
match = "client_id"
pattern = '^(?P<service>thermo)-(?P<instance>.+)$'
[[identity.rules]]
match = "ip"
cidr = "192.168.1.0/24"
service = "lan"
[[identity.rules]]
equals = "47.89.226.20"
service = "lock-cloud"
[mqtt]
listen = "127.0.0.1:1883"
upstream = "127.0.0.1:1884"
[api]
listen = "127.0.0.1:8080"
[notify]
urls = ["ntfy://127.0.0.1:8090/commgraph"]
[sync]
broker = "127.0.0.1:1884"
[keys]
private = "site.key"
trusted = ["site.pub"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_full_site_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SITE))
    assert config.node == "node-a"
    assert config.db == tmp_path / "node-a.db"
    assert config.learning.duration == 3600
    assert config.learning.duration_for("thermo") == 7200
    assert config.learning.min_events == 10
    assert config.learning.mode_for("valve") is Mode.PROTECT
    assert config.learning.mode_for("other") is Mode.MONITOR
    assert config.learning.block_pending is False
    identity = Identity(config.identity)
    assert identity.resolve("thermo-kitchen-7", AddressKind.CLIENT_ID).service == "thermo"
    assert identity.resolve("thermo-kitchen-7").instance == "kitchen-7"
    assert identity.resolve("192.168.1.128").service == "lan"
    assert identity.resolve("47.89.226.20").service == "lock-cloud"
    assert str(config.mqtt.listen) == "127.0.0.1:1883"
    assert config.mqtt.fail_open and config.mqtt.max_packet_size == 16 * 1024 * 1024
    assert config.trusted_keys == (tmp_path / "site.pub",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[learning]\nduraton = "1h"\n', "learning.duraton: unknown key"),
        ('[learning]\nduration = "soon"\n', "learning.duration: 'soon' is not a duration"),
        ("[learning]\nduration = true\n", "learning.duration: expected"),
        ('[modes]\ndefault = "panic"\n', "modes.default: 'panic' is not a mode"),
        ('[modes.services]\nvalve = "x"\n', "modes.services.valve"),
        ('[protect]\npending = "maybe"\n', "protect.pending"),
        ('[mqtt]\nlisten = "localhost"\n', "mqtt.listen: 'localhost' is not host:port"),
        ("[[identity.rules]]\npattern = '^(x'\n", "identity.rules[0].pattern: not a valid"),
        ("[[identity.rules]]\npattern = '^x$'\n", "identity.rules[0]: 'pattern' needs"),
        ('[[identity.rules]]\nmatch = "mac"\nequals = "x"\nservice = "y"\n', "rules[0].match"),
        ('[[identity.rules]]\ncidr = "10.0.0.0/33"\nservice = "y"\n', "identity.rules[0].cidr"),
        ('[[identity.rules]]\nequals = "a"\nservice = "b"\ncolour = "red"\n', "rules[0].colour"),
        ('[[identity.rules]]\nscope = "moon"\nservice = "b"\n', "rules[0]: 'scope' must be"),
        ("[[identity.rules]]\ndns = 1\n", "identity.rules[0].dns: expected"),
        ('[templates]\ntopics = ["a/#/b"]\n', "templates.topics: topic template"),
        ("[templates]\ntopics = [3]\n", "templates.topics: entry 1 must be a string"),
        ("[capture]\nports = [80]\n", "capture.interface: is required"),
        ('[detectors]\nkinds = ["speed"]\n', "detectors.kinds: 'speed' is not one of"),
        ("[detectors]\nrate_factor = 0.5\n", "detectors.rate_factor: 0.5 must be"),
        ('[detectors]\nshort_window = "soon"\n', "detectors.short_window"),
        ("[detectors]\nmin_period_hits = 1\n", "detectors.min_period_hits: is too small"),
        ('[capture]\ninterface = "lo"\nports = [0]\n', "capture.ports: 0 is not a port"),
        ('[capture]\ninterface = "lo"\nhosts = ["hub"]\n', "capture.hosts: 'hub' is not"),
        ('[capture]\ninterface = "lo"\nfilter = "tcp"\n', "capture.filter: unknown key"),
        ("[node]\nname = 3\n", "node.name: expected a string, got int"),
        ('[mqtt]\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nfail = "x"\n', "mqtt.fail"),
        ('[mqtt]\nlisten = "127.0.0.1:1"\n', "mqtt.upstream: listen and upstream go together"),
        ('[mqtt]\nupstream = "127.0.0.1:1"\nmax_packet_size = 3\n', "mqtt.max_packet_size"),
        ('[mqtt]\nupstream = "127.0.0.1:1"\n[mqtt.tls]\nlisten = "127.0.0.1:2"\n', "mqtt.tls.cert"),
        (
            '[mqtt]\nupstream = "127.0.0.1:1"\n[mqtt.tls]\nlisten = "127.0.0.1:2"\n'
            'cert = "c"\nkey = "k"\nrequire_client_cert = true\n',
            "mqtt.tls.ca: is required",
        ),
        ('[mqtt]\nupstream = "127.0.0.1:1"\nconnect_timeout = "soon"\n', "mqtt.connect_timeout"),
        ("wat = 1\n", "wat: unknown key"),
        ("[learning\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "site.toml"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("45", 45),
        (30, 30),
        ("1.5h", 5400),
        ("1w", 604800),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "h", "1h-", "-5m", "m10"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 60, 3600, 5400, 90061)] == [
        "5s",
        "1m",
        "1h",
        "1h30m",
        "1d1h",
    ]


def test_addresses() -> None:
    assert str(parse_address("[::1]:1883")) == "[::1]:1883"
    with pytest.raises(ValueError):
        parse_address("127.0.0.1:70000")


def test_api_and_notify_sections(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[api]\nlisten = "127.0.0.1:8080"\ncredentials = "node.cred"\n'
            '[notify]\nurls = ["ntfy://127.0.0.1:8090/x"]\nper_minute = 3\n'
            'link_base = "https://home.example/"\nlink_valid_for = "2h"\n',
        )
    )
    assert str(config.api.listen) == "127.0.0.1:8080"
    assert config.api.credentials == tmp_path / "node.cred"
    assert config.notify.urls == ("ntfy://127.0.0.1:8090/x",)
    assert (config.notify.per_minute, config.notify.link_valid_for) == (3, 7200)
    assert config.notify.link_base == "https://home.example"
    for bad, key in (
        ("per_minute = 0", "notify.per_minute"),
        ('link_base = "ftp://x"', "link_base"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(write(tmp_path, f"[notify]\n{bad}\n"))


def test_scope_dns_and_relation_rules_and_templates() -> None:
    config = parse_config(
        tomllib.loads(
            '[[identity.rules]]\nscope = "internet"\nrelation = "udp/123"\n'
            'service = "ntp@internet"\n'
            "[[identity.rules]]\ndns = true\n"
            '[templates]\ntopics = ["home/{room}/temperature"]\n'
        )
    )
    ntp, dns = config.identity
    assert (ntp.scope, ntp.relation, ntp.service) == ("internet", "udp/123", "ntp@internet")
    assert dns.dns and dns.service is None
    assert [rule.template for rule in config.templates] == ["home/+/temperature"]


def test_capture_section() -> None:
    config = parse_config(
        tomllib.loads('[capture]\ninterface = "eth0"\nports = [1883, 53]\nhosts = ["10.0.0.2"]\n')
    )
    assert config.capture is not None
    assert (config.capture.interface, config.capture.ports) == ("eth0", (1883, 53))
    assert (config.capture.hosts, config.capture.mqtt_ports) == (("10.0.0.2",), (1883,))
    assert parse_config({}).capture is None


def test_detector_settings() -> None:
    config = parse_config(
        tomllib.loads(
            '[detectors]\nkinds = ["rate", "size"]\nrate_factor = 10\nshort_window = "5m"\n'
            "silence_periods = 4\nsize_slack = 0\n"
        )
    )
    d = config.detectors
    assert d.kinds == frozenset({"rate", "size"}) and d.rate_factor == 10.0
    assert (d.short_window, d.silence_periods, d.size_slack) == (300.0, 4.0, 0)
    assert parse_config({}).detectors.kinds == frozenset({"rate", "periodicity", "size"})


def test_an_empty_config_is_exactly_the_settings_dataclasses_defaults() -> None:
    # one source for each default: the parser reads them from the dataclasses
    from commgraph.config import Config

    assert parse_config({}, source="<defaults>") == Config()


HTTP_SITE = """
[templates]
routes = ["/rooms/{room}/temperature", "POST /locks/{lock}/unlock"]
[http]
trusted_proxies = ["10.0.0.0/8", "::1"]
max_body_size = 1048576
[[http.routes]]
listen = "127.0.0.1:8081"
upstream = "127.0.0.1:9081"
service = "rooms"
[[http.routes]]
listen = "127.0.0.1:8443"
upstream = "127.0.0.1:9443"
service = "locks"
[http.routes.tls]
cert = "locks.crt"
key = "locks.key"
ca = "site-ca.crt"
require_client_cert = true
"""


def test_http_routes_and_route_templates(tmp_path: Path) -> None:
    from commgraph.config import HTTPSettings

    config = load_config(write(tmp_path, HTTP_SITE))
    rooms, locks = config.http.routes
    assert (str(rooms.listen), str(rooms.upstream), rooms.service) == (
        "127.0.0.1:8081",
        "127.0.0.1:9081",
        "rooms",
    )
    assert rooms.tls is None
    assert locks.tls is not None and locks.tls.require_client_cert
    assert locks.tls.cert == tmp_path / "locks.crt" and str(locks.tls.listen) == "127.0.0.1:8443"
    assert [str(n) for n in config.http.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert config.http.max_body_size == 1048576
    assert config.http.max_head_size == HTTPSettings().max_head_size  # the default, once
    assert [r.pattern for r in config.route_templates] == [
        "/rooms/{room}/temperature",
        "POST /locks/{lock}/unlock",
    ]
    assert load_config(write(tmp_path, "")).http == HTTPSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[http.routes]]\nlisten = "127.0.0.1:1"\nservice = "a"\n', "http.routes[0].upstream"),
        (
            '[[http.routes]]\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nservice = "a b"\n',
            "http.routes[0].service",
        ),
        (
            '[[http.routes]]\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nservice = "a"\n'
            'colour = "red"\n',
            "http.routes[0].colour: unknown key",
        ),
        (
            '[[http.routes]]\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nservice = "a"\n'
            '[[http.routes]]\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:3"\nservice = "b"\n',
            "http.routes[1].listen",
        ),
        ('[http]\ntrusted_proxies = ["not-a-net"]\n', "http.trusted_proxies"),
        ("[http]\nmax_head_size = 10\n", "http.max_head_size"),
        ('[http]\nfail = "maybe"\n', "http.fail"),
        ('[templates]\nroutes = ["rooms/{room}"]\n', "templates.routes"),
        ('[templates]\nroutes = ["/rooms/x{room}"]\n', "templates.routes"),
    ],
)
def test_http_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text))


def test_capture_http_ports(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[capture]\ninterface = "lo"\nhttp_ports = [80, 8080]\n'))
    assert config.capture is not None and config.capture.http_ports == (80, 8080)
    with pytest.raises(ConfigError, match=r"capture\.http_ports"):
        load_config(write(tmp_path, '[capture]\ninterface = "lo"\nhttp_ports = ["x"]\n'))


def test_identity_profile_is_default_unless_none(tmp_path: Path) -> None:
    from commgraph.identity import DEFAULT_PROFILE

    path = tmp_path / "site.toml"
    path.write_text('[[identity.rules]]\nequals = "a"\nservice = "b"\n')
    config = load_config(path)
    assert config.identity_profile == "default"
    assert config.identity_rules() == (*config.identity, *DEFAULT_PROFILE)
    path.write_text('[identity]\nprofile = "none"\n')
    assert load_config(path).identity_rules() == ()
    path.write_text('[identity]\nprofile = "strict"\n')
    with pytest.raises(ConfigError, match=r"identity\.profile: 'strict' is not a profile"):
        load_config(path)


def test_dns_rules_fold_rotating_names(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[[identity.rules]]\ndns = true\nfold = ["*.IoT-as-mqtt.example.com."]\n')
    (rule,) = load_config(path).identity
    assert rule.dns and rule.fold == ("*.iot-as-mqtt.example.com",)
    path.write_text("[[identity.rules]]\ndns = true\nfold = [1]\n")
    with pytest.raises(ConfigError, match=r"identity\.rules\[0\]\.fold: expected a list"):
        load_config(path)
    path.write_text('[[identity.rules]]\nequals = "a"\nservice = "b"\nfold = ["*.x"]\n')
    with pytest.raises(ConfigError, match=r"identity\.rules\[0\]: 'fold' folds DNS names"):
        load_config(path)
