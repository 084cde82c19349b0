"""TOML site configuration -> frozen settings, validated with messages that name the key.

Sections (see DESIGN.md): ``[node]``, ``[learning]`` (+ ``[learning.services]``), ``[modes]``
(+ ``[modes.services]``), ``[admission]``, ``[guardrails]``, ``[detectors]``, ``[protect]``,
``[[identity.rules]]``, and the network parts
``[templates]`` (topic and route templates for models), ``[mqtt]``, ``[http]`` (the HTTP
sidecars, one ``[[http.routes]]`` per protected service), ``[api]``, ``[notify]``,
``[sync]`` (the site broker carrying models), ``[keys]`` (signing and trusted keys). Unknown
keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from commgraph.detectors import KINDS, DetectorSettings
from commgraph.detectors.guardrails import GuardrailSettings
from commgraph.errors import ConfigError
from commgraph.identity import AddressKind, Identity, IdentityRule, profile_rules
from commgraph.phases import Admission, LearningSettings, Mode, format_duration
from commgraph.templates import RouteRule, TemplateRule, Templates

if TYPE_CHECKING:
    from commgraph.engine import Engine

__all__ = [
    "APISettings",
    "CaptureSettings",
    "Config",
    "HTTPRoute",
    "HTTPSettings",
    "HomeAssistantSettings",
    "MQTTSettings",
    "NotifySettings",
    "TLSSettings",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str | int | float) -> float:
    """``"90s"``, ``"10m"``, ``"1h30m"``, ``"2d"`` or a number of seconds -> seconds.

    Raises ValueError with a message fit for the user.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        compact = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", compact):
            seconds = float(compact)
        else:
            parts = _DURATION.findall(compact)
            if not parts or "".join(n + u for n, u in parts) != compact:
                raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 10m, 1h30m, 2d)")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration")
    return seconds


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSSettings:
    """A TLS listener of the proxy: it terminates TLS and may require client certificates."""

    listen: Address
    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MQTTSettings:
    """The MQTT proxy: where clients connect, the real broker, and its limits."""

    listen: Address | None = None
    upstream: Address | None = None
    fail_open: bool = True
    connect_timeout: float = 10.0
    max_packet_size: int = 16 * 1024 * 1024
    tls: TLSSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRoute:
    """One HTTP sidecar: callers connect to ``listen``, requests go on to ``upstream``, the
    service behind it is ``service`` (the callee). With ``tls`` the sidecar terminates TLS
    on ``listen`` and may ask callers for certificates (``tls.listen`` is ``listen``)."""

    listen: Address
    upstream: Address
    service: str
    tls: TLSSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSettings:
    """``[http]``: the HTTP sidecars and their limits."""

    routes: tuple[HTTPRoute, ...] = ()
    # X-Forwarded-For is believed only from these peers (a reverse proxy in front).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    fail_open: bool = True
    connect_timeout: float = 10.0
    max_head_size: int = 16 * 1024  # request line + headers; more: 431
    max_body_size: int = 0  # a declared Content-Length above it: 413; 0 = no limit


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSettings:
    """Passive observation on a network interface, beside or instead of the proxy."""

    interface: str
    ports: tuple[int, ...] = ()  # keep packets with one of these ports (either end); () = all
    hosts: tuple[str, ...] = ()  # ... and with one of these IP addresses; () = all
    mqtt_ports: tuple[int, ...] = (1883,)  # TCP ports whose streams are decoded as MQTT
    http_ports: tuple[int, ...] = ()  # TCP ports whose streams are decoded as HTTP


@dataclass(frozen=True, slots=True, kw_only=True)
class APISettings:
    """The REST API and dashboard of the node."""

    listen: Address | None = None
    credentials: Path | None = None  # API token + link key (0600); default: next to the db


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings:
    """Where new alerts are sent (Apprise URLs) and how."""

    urls: tuple[str, ...] = ()
    per_minute: int = 5  # beyond this many in a minute, the rest go out as one digest
    link_base: str | None = None  # how the phone reaches this node; default http://api.listen
    link_valid_for: float = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HomeAssistantSettings:
    """Home Assistant MQTT discovery: retained configs under ``prefix`` on ``broker``
    (None: the sync broker, else the proxy's upstream)."""

    discovery: bool = False
    prefix: str = "homeassistant"
    broker: Address | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole site configuration of one node."""

    source: str = "<defaults>"
    node: str = "node"
    db: Path | None = None
    learning: LearningSettings = field(default_factory=LearningSettings)
    detectors: DetectorSettings = field(default_factory=DetectorSettings)
    guardrails: GuardrailSettings = field(default_factory=GuardrailSettings)
    identity: tuple[IdentityRule, ...] = ()  # the site's own rules
    identity_profile: str = "default"  # [identity] profile: rules after the site's own
    templates: tuple[TemplateRule, ...] = ()
    route_templates: tuple[RouteRule, ...] = ()
    mqtt: MQTTSettings = field(default_factory=MQTTSettings)
    http: HTTPSettings = field(default_factory=HTTPSettings)
    capture: CaptureSettings | None = None
    api: APISettings = field(default_factory=APISettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    sync_broker: Address | None = None
    homeassistant: HomeAssistantSettings = field(default_factory=HomeAssistantSettings)
    private_key: Path | None = None
    trusted_keys: tuple[Path, ...] = ()

    def identity_rules(self) -> tuple[IdentityRule, ...]:
        """The effective identity rules: the site's own first, then its profile's."""
        return self.identity + profile_rules(self.identity_profile)

    def engine(
        self, settings: LearningSettings | None = None, *, node: str | None = None
    ) -> Engine:
        """A new, empty engine for this site: its learning settings (or ``settings``),
        identity rules, templates, detectors and guardrails, named after this node."""
        from commgraph.engine import Engine  # the engine is not needed to read a config

        return Engine(settings or self.learning, node=node or self.node, **self.engine_parts())

    def engine_parts(self) -> dict[str, Any]:
        """What an engine of this site is built with besides its learning settings and node
        name: identity rules, templates, detectors and guardrails (for a new engine, or for
        one the store resumes)."""
        return {
            "identity": Identity(self.identity_rules()),
            "templates": Templates(self.templates, routes=self.route_templates),
            "detectors": self.detectors,
            "guardrails": self.guardrails,
        }


def _field_default(cls: type, name: str) -> Any:
    """The default a settings dataclass declares for a field (for those that need arguments)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


class _Reader:
    """Walks one table, remembering which keys were used, naming keys in errors."""

    def __init__(self, source: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.source, self.prefix, self.table = source, prefix, table
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        name = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.source}: {name}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(key, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.error(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def sub(self, key: str) -> _Reader:
        value = self.get(key, dict, {})
        return _Reader(self.source, f"{self.prefix}.{key}" if self.prefix else key, value)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (check the spelling)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        dict: "a table",
        list: "a list",
        bool: "true or false",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _duration(reader: _Reader, key: str, default: float) -> float:
    value = reader.get(key, (str, int, float))
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise reader.error(key, str(exc)) from None


def _mode(reader: _Reader, key: str, default: Mode) -> Mode:
    value = reader.get(key, str)
    if value is None:
        return default
    try:
        return Mode(value)
    except ValueError:
        raise reader.error(key, f"{value!r} is not a mode (learn, monitor or protect)") from None


def _address(reader: _Reader, key: str) -> Address | None:
    value = reader.get(key, str)
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError as exc:
        raise reader.error(key, str(exc)) from None


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port`` -> Address; raises ValueError."""
    found = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not found:
        raise ValueError(f"{text!r} is not host:port")
    host = found.group(1) or found.group(3)
    port = int(found.group(2) or found.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return Address(host, port)


def _folds(r: _Reader) -> tuple[str, ...]:
    folds = r.get("fold", list, [])
    if not all(isinstance(pattern, str) for pattern in folds):
        raise r.error("fold", "expected a list of name patterns")
    return tuple(pattern.rstrip(".").lower() for pattern in folds)


def _rules(source: str, items: Any) -> tuple[IdentityRule, ...]:
    if not isinstance(items, list):
        raise ConfigError(
            f"{source}: identity.rules: expected a list of tables ([[identity.rules]])"
        )
    rules = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: identity.rules[{i}]: expected a table")
        r = _Reader(source, f"identity.rules[{i}]", item)
        match_text = r.get("match", str, "any")
        try:
            match = AddressKind(match_text)
        except ValueError:
            kinds = ", ".join(k.value for k in AddressKind)
            raise r.error("match", f"{match_text!r} is not one of {kinds}") from None
        pattern_text = r.get("pattern", str)
        pattern = None
        if pattern_text is not None:
            try:
                pattern = re.compile(pattern_text)
            except re.error as exc:
                raise r.error("pattern", f"not a valid regular expression ({exc})") from None
        cidr_text = r.get("cidr", str)
        cidr = None
        if cidr_text is not None:
            try:
                cidr = ipaddress.ip_network(cidr_text, strict=False)
            except ValueError as exc:
                raise r.error("cidr", str(exc)) from None
        try:
            rule = IdentityRule(
                match=match,
                equals=r.get("equals", str),
                pattern=pattern,
                cidr=cidr,
                scope=r.get("scope", str),
                dns=r.get("dns", bool, False),
                fold=_folds(r),
                relation=r.get("relation", str),
                service=r.get("service", str),
                instance=r.get("instance", str),
            )
        except ValueError as exc:
            raise ConfigError(f"{source}: identity.rules[{i}]: {exc}") from None
        r.finish()
        rules.append(rule)
    return tuple(rules)


def _detectors(section: _Reader) -> DetectorSettings:
    defaults = DetectorSettings()
    kinds = section.get("kinds", list, sorted(defaults.kinds))
    for kind in kinds:
        if kind not in KINDS:
            raise section.error("kinds", f"{kind!r} is not one of {', '.join(sorted(KINDS))}")
    numbers: dict[str, float] = {}
    for key in ("rate_factor", "rate_min_count", "silence_periods", "size_margin"):
        value = section.get(key, (int, float), getattr(defaults, key))
        if isinstance(value, bool) or value < 1:
            raise section.error(key, f"{value!r} must be a number of at least 1")
        numbers[key] = float(value)
    windows = {
        key: _duration(section, key, getattr(defaults, key))
        for key in ("short_window", "long_window", "burst_gap")
    }
    for key, value in windows.items():
        if value <= 0:
            raise section.error(key, "must be longer than 0s")
    rate_limit = section.get("rate_limit", bool, defaults.rate_limit)
    size_slack = section.get("size_slack", int, defaults.size_slack)
    min_hits = section.get("min_period_hits", int, defaults.min_period_hits)
    if size_slack < 0 or min_hits < 2:
        raise section.error("size_slack" if size_slack < 0 else "min_period_hits", "is too small")
    section.finish()
    return DetectorSettings(
        kinds=frozenset(kinds),
        rate_limit=rate_limit,
        size_slack=size_slack,
        min_period_hits=min_hits,
        **numbers,
        **windows,
    )


def _capture(capture: _Reader) -> CaptureSettings | None:
    interface = capture.get("interface", str)
    defaults = CaptureSettings(interface="")
    ports = {
        key: _ports(capture, key, list(getattr(defaults, key)))
        for key in ("ports", "mqtt_ports", "http_ports")
    }
    hosts = capture.get("hosts", list, list(defaults.hosts))
    for host in hosts:
        try:
            ipaddress.ip_address(host if isinstance(host, str) else "")
        except ValueError:
            raise capture.error("hosts", f"{host!r} is not an IP address") from None
    capture.finish()
    if interface is None:
        if capture.table:
            raise capture.error("interface", "is required to capture (e.g. eth0)")
        return None
    return CaptureSettings(
        interface=interface,
        ports=ports["ports"],
        hosts=tuple(hosts),
        mqtt_ports=ports["mqtt_ports"],
        http_ports=ports["http_ports"],
    )


def _ports(section: _Reader, key: str, default: list[int]) -> tuple[int, ...]:
    values = section.get(key, list, default)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 0xFFFF:
            raise section.error(key, f"{value!r} is not a port (1-65535)")
    return tuple(values)


def _mqtt(mqtt: _Reader, base: Path) -> MQTTSettings:
    listen, upstream = _address(mqtt, "listen"), _address(mqtt, "upstream")
    defaults = MQTTSettings()
    fail = mqtt.get("fail", str, "open" if defaults.fail_open else "closed")
    if fail not in ("open", "closed"):
        raise mqtt.error("fail", f'{fail!r} must be "open" (forward) or "closed" (block)')
    timeout = _duration(mqtt, "connect_timeout", defaults.connect_timeout)
    max_size = mqtt.get("max_packet_size", int, defaults.max_packet_size)
    if not 16 <= max_size <= 268_435_460:
        raise mqtt.error("max_packet_size", "must be between 16 and 268435460 bytes")
    tls = None
    if "tls" in mqtt.table:
        t = mqtt.sub("tls")
        tls_listen = _address(t, "listen")
        if tls_listen is None:
            raise t.error("listen", "is required for a TLS listener")
        tls = _tls(t, tls_listen, base)
    else:
        mqtt.used.add("tls")
    if (listen is None) != (upstream is None):
        raise mqtt.error(
            "upstream" if upstream is None else "listen", "listen and upstream go together"
        )
    if tls is not None and upstream is None:
        raise mqtt.error("upstream", "is required for the TLS listener")
    mqtt.finish()
    return MQTTSettings(
        listen=listen,
        upstream=upstream,
        fail_open=fail == "open",
        connect_timeout=timeout,
        max_packet_size=max_size,
        tls=tls,
    )


def _tls(t: _Reader, listen: Address, base: Path) -> TLSSettings:
    cert, key, ca = t.get("cert", str), t.get("key", str), t.get("ca", str)
    require = t.get("require_client_cert", bool, _field_default(TLSSettings, "require_client_cert"))
    for name, value in (("cert", cert), ("key", key)):
        if value is None:
            raise t.error(name, "is required for a TLS listener")
    if require and ca is None:
        raise t.error("ca", "is required when require_client_cert = true")
    t.finish()
    assert cert is not None and key is not None
    return TLSSettings(
        listen=listen,
        cert=base / cert,
        key=base / key,
        ca=base / ca if ca else None,
        require_client_cert=require,
    )


_SERVICE_NAME = re.compile(r"[^\s/]+")


def _http(http: _Reader, base: Path) -> HTTPSettings:
    defaults = HTTPSettings()
    items = http.get("routes", list, [])
    routes: list[HTTPRoute] = []
    listens: set[Address] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise http.error(f"routes[{i}]", "expected a table ([[http.routes]])")
        r = _Reader(http.source, f"http.routes[{i}]", item)
        listen, upstream = _address(r, "listen"), _address(r, "upstream")
        service = r.get("service", str)
        for name, value in (("listen", listen), ("upstream", upstream), ("service", service)):
            if value is None:
                raise r.error(name, "is required")
        assert listen is not None and upstream is not None and service is not None
        if not _SERVICE_NAME.fullmatch(service):
            raise r.error("service", f"{service!r} must be a name without spaces or '/'")
        if listen in listens:
            raise r.error("listen", f"{listen} is the listen address of another route")
        listens.add(listen)
        tls = _tls(r.sub("tls"), listen, base) if "tls" in r.table else None
        r.finish()
        routes.append(HTTPRoute(listen=listen, upstream=upstream, service=service, tls=tls))
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for number, text in enumerate(http.get("trusted_proxies", list, []), start=1):
        if not isinstance(text, str):
            raise http.error("trusted_proxies", f"entry {number} must be a string")
        try:
            trusted.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise http.error("trusted_proxies", str(exc)) from None
    fail = http.get("fail", str, "open")
    if fail not in ("open", "closed"):
        raise http.error("fail", f'{fail!r} must be "open" (forward) or "closed" (block)')
    head = http.get("max_head_size", int, defaults.max_head_size)
    if not 1024 <= head <= 1024 * 1024:
        raise http.error("max_head_size", "must be between 1024 and 1048576 bytes")
    body = http.get("max_body_size", int, defaults.max_body_size)
    if body < 0:
        raise http.error("max_body_size", "must not be negative (0: no limit)")
    timeout = _duration(http, "connect_timeout", defaults.connect_timeout)
    http.finish()
    return HTTPSettings(
        routes=tuple(routes),
        trusted_proxies=tuple(trusted),
        fail_open=fail == "open",
        connect_timeout=timeout,
        max_head_size=head,
        max_body_size=body,
    )


_GUARDRAIL_KEYS = tuple(GuardrailSettings.__dataclass_fields__)


def _guardrails(section: _Reader) -> GuardrailSettings:
    values: dict[str, int] = {}
    defaults = GuardrailSettings()
    for key in _GUARDRAIL_KEYS:
        value = section.get(key, int, getattr(defaults, key))
        if key == "addresses" and value < 1:
            raise section.error(key, f"{value!r} must be at least 1")
        if value < 0:
            raise section.error(key, f"{value!r} must not be negative (0 turns it off)")
        values[key] = value
    section.finish()
    return GuardrailSettings(**values)


def _admission(section: _Reader) -> Admission | None:
    text = section.get("new", str)
    section.finish()
    if text is None:
        return None
    try:
        return Admission(text)
    except ValueError:
        choices = ", ".join(f'"{a.value}"' for a in Admission)
        raise section.error("new", f"{text!r} is not one of {choices}") from None


def parse_config(
    data: Mapping[str, Any], source: str = "<config>", base: Path | None = None
) -> Config:
    """Validate a parsed TOML document; relative paths are taken from ``base``."""
    top = _Reader(source, "", data)
    base = base or Path.cwd()
    # every default is the one its settings dataclass declares
    defaults, learned, told = Config(), LearningSettings(), NotifySettings()

    node = top.sub("node")
    name = node.get("name", str, defaults.node)
    db_text = node.get("db", str)
    node.finish()

    learning = top.sub("learning")
    duration = _duration(learning, "duration", learned.duration)
    min_events = learning.get("min_events", int, learned.min_events)
    if min_events < 0:
        raise learning.error("min_events", "must not be negative")
    per_service = learning.sub("services")
    site = _duration(learning, "site", duration) if "site" in learning.table else None
    durations = {svc: _duration(per_service, svc, duration) for svc in per_service.table}
    per_service.finish()
    learning.finish()

    modes = top.sub("modes")
    default_mode = _mode(modes, "default", learned.mode)
    promote_after = learned.promote_after
    if "promote_after" in modes.table:
        promote_after = _duration(modes, "promote_after", 0.0) or None  # "0": off
    mode_services = modes.sub("services")
    overrides = {svc: _mode(mode_services, svc, default_mode) for svc in mode_services.table}
    mode_services.finish()
    modes.finish()

    detectors = _detectors(top.sub("detectors"))
    guardrails = _guardrails(top.sub("guardrails"))
    admission = _admission(top.sub("admission"))

    protect = top.sub("protect")
    pending = protect.get("pending", str, "block" if learned.block_pending else "allow")
    if pending not in ("block", "allow"):
        raise protect.error("pending", f'{pending!r} must be "block" or "allow"')
    protect.finish()

    identity = top.sub("identity")
    rules = _rules(source, identity.get("rules", list, []))
    profile = identity.get("profile", str, _field_default(Config, "identity_profile"))
    try:
        profile_rules(profile)
    except ValueError as exc:
        raise identity.error("profile", str(exc)) from None
    identity.finish()

    templates = top.sub("templates")
    topic_templates: list[TemplateRule] = []
    for number, pattern in enumerate(templates.get("topics", list, []), start=1):
        if not isinstance(pattern, str):
            raise templates.error("topics", f"entry {number} must be a string")
        try:
            topic_templates.append(TemplateRule(pattern=pattern))
        except ValueError as exc:
            raise templates.error("topics", str(exc)) from None
    route_templates: list[RouteRule] = []
    for number, pattern in enumerate(templates.get("routes", list, []), start=1):
        if not isinstance(pattern, str):
            raise templates.error("routes", f"entry {number} must be a string")
        try:
            route_templates.append(RouteRule(pattern=pattern))
        except ValueError as exc:
            raise templates.error("routes", str(exc)) from None
    templates.finish()

    mqtt_settings = _mqtt(top.sub("mqtt"), base)
    http_settings = _http(top.sub("http"), base)
    capture = _capture(top.sub("capture"))
    api = top.sub("api")
    api_listen = _address(api, "listen")
    credentials = api.get("credentials", str)
    notify = top.sub("notify")
    urls = notify.get("urls", list, [])
    if not all(isinstance(u, str) for u in urls):
        raise notify.error("urls", "expected a list of strings")
    per_minute = notify.get("per_minute", int, told.per_minute)
    if per_minute < 1:
        raise notify.error("per_minute", "must be at least 1")
    link_base = notify.get("link_base", str)
    if link_base is not None and not link_base.startswith(("http://", "https://")):
        raise notify.error("link_base", f"{link_base!r} must start with http:// or https://")
    link_valid_for = _duration(notify, "link_valid_for", told.link_valid_for)
    sync = top.sub("sync")
    sync_broker = _address(sync, "broker")
    homeassistant = _homeassistant(top.sub("homeassistant"))
    if homeassistant.discovery and not (
        homeassistant.broker or sync_broker or mqtt_settings.upstream
    ):
        raise ConfigError(
            f"{source}: homeassistant.broker: discovery needs a broker (set this, "
            "sync.broker or mqtt.upstream)"
        )
    keys = top.sub("keys")
    private = keys.get("private", str)
    trusted = keys.get("trusted", list, [])
    if not all(isinstance(t, str) for t in trusted):
        raise keys.error("trusted", "expected a list of file names")
    # Later parts add keys to these sections; until then only the listed ones are known.
    for section in (api, notify, sync, keys):
        section.finish()
    top.finish()

    return Config(
        source=source,
        node=name,
        db=(base / db_text) if db_text else None,
        learning=LearningSettings(
            duration=duration,
            durations=durations,
            min_events=min_events,
            mode=default_mode,
            modes=overrides,
            block_pending=pending == "block",
            site=site,
            admission=admission,
            promote_after=promote_after,
        ),
        detectors=detectors,
        guardrails=guardrails,
        identity=rules,
        identity_profile=profile,
        templates=tuple(topic_templates),
        route_templates=tuple(route_templates),
        mqtt=mqtt_settings,
        http=http_settings,
        capture=capture,
        api=APISettings(
            listen=api_listen, credentials=(base / credentials) if credentials else None
        ),
        notify=NotifySettings(
            urls=tuple(urls),
            per_minute=per_minute,
            link_base=link_base.rstrip("/") if link_base else None,
            link_valid_for=link_valid_for,
        ),
        sync_broker=sync_broker,
        homeassistant=homeassistant,
        private_key=(base / private) if private else None,
        trusted_keys=tuple(base / t for t in trusted),
    )


def _homeassistant(reader: _Reader) -> HomeAssistantSettings:
    told = HomeAssistantSettings()
    discovery = reader.get("discovery", bool, told.discovery)
    prefix = reader.get("prefix", str, told.prefix).strip("/")
    if not prefix or any(c in prefix for c in "+#\0"):
        raise reader.error("prefix", f"{prefix!r} is not a topic prefix (no + or #, not empty)")
    broker = _address(reader, "broker")
    reader.finish()
    return HomeAssistantSettings(discovery=discovery, prefix=prefix, broker=broker)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; every problem is a ConfigError naming file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_config(data, str(path), path.parent)
