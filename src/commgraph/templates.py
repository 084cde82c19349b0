"""Topic and route templates: concrete counterparts -> the semantic form a model keeps.

A model must hold for every instance of a service type, so instance-specific parts of its
counterparts become wildcards: ``home/kitchen/temp`` -> ``home/+/temp`` (MQTT topics),
``GET /rooms/12`` -> ``GET /rooms/{id}`` (HTTP routes).

:meth:`Templates.topic` applies, in this order:

1. the first config :class:`TemplateRule` that matches: its pattern, in ``+`` form, and nothing
   else;
2. a level equal to the instance name (with or without the service prefix: ``thermo-kitchen``
   and ``kitchen`` are the same instance of ``thermo``) becomes ``+``;
3. for concrete topics only, not subscription filters: a level learned by
   :meth:`Templates.observe` to vary with the instance (each instance its own value, two
   instances at least, never one value shared or one instance using two) becomes ``+``.

Wildcards are only ever put where the concrete topic had a plain level (never for a ``$``
first level), so a template always matches the topic it came from, and ``topic()`` is
idempotent on its own output. All of it is pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ID", "MAX_SHAPES", "RouteRule", "TemplateRule", "Templates", "matches"]

ID = "{id}"
"""What an identifier level of an HTTP route becomes."""

MAX_SHAPES = 1000
"""Default bound on the topic shapes :meth:`Templates.observe` remembers per service."""

_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_-]*\}")
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_HEX_ID = re.compile(r"(?=.*[0-9])[0-9a-fA-F]{8,}")
_METHOD = re.compile(r"[A-Z]+")
# How an instance name may extend its service's name: thermo-kitchen, thermo_kitchen...
_INSTANCE_SEPARATORS = "-_.:@"


def matches(template: str, topic: str) -> bool:
    """Whether the MQTT ``template`` (a filter: ``+`` one level, ``#`` the rest) matches ``topic``.

    MQTT semantics: ``sport/#`` matches ``sport``; ``+/+`` matches ``/finance``; a first level
    wildcard never matches a topic starting with ``$`` (``$SYS/...``). ``topic`` may itself be
    a filter: then the answer is whether ``template`` matches everything ``topic`` matches
    (``home/+/temp`` matches ``home/+/temp``, but ``home/+`` does not match ``home/#``).
    """
    if template == topic:
        return True
    want = template.split("/")
    have = topic.split("/")
    if have[0].startswith("$") and want[0] in ("+", "#"):
        return False
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have):
            return False
        if level == "+":
            if have[i] == "#":
                return False
        elif level != have[i]:
            return False
    return len(want) == len(have)


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateRule:
    """A topic template from the site config; ``+`` or ``{name}`` marks an instance level.

    ``home/+/temperature`` and ``home/{room}/temperature`` are the same rule; ``template`` is
    the pattern in ``+`` form. Raises ``ValueError`` naming the problem if ``pattern`` is not
    a valid template.
    """

    pattern: str
    template: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "template", _normalize_rule(self.pattern))

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` (or every topic of a filter) is an instance of this template."""
        return matches(self.template, topic)


def _normalize_rule(pattern: str) -> str:
    if not pattern:
        raise ValueError("topic template is empty")
    if "\0" in pattern:
        raise ValueError(f"topic template {pattern!r} contains a NUL character")
    levels = pattern.split("/")
    out: list[str] = []
    for number, level in enumerate(levels, start=1):
        where = f"topic template {pattern!r}, level {number}"
        if not level:
            raise ValueError(f"{where} is empty (no '//', nor '/' at either end)")
        if "#" in level:
            if level != "#":
                raise ValueError(f"{where}: '#' must be a whole level")
            if number != len(levels):
                raise ValueError(f"{where}: '#' must be the last level")
        if "+" in level and level != "+":
            raise ValueError(f"{where}: '+' must be a whole level")
        if "{" in level or "}" in level:
            if not _PLACEHOLDER.fullmatch(level):
                raise ValueError(f"{where}: a placeholder is a whole level such as {{room}}")
            level = "+"
        out.append(level)
    return "/".join(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    """A route template from the site config: ``/rooms/{room}/temperature``, optionally with
    a method (``GET /rooms/{room}``). A ``{name}`` level stands for any one level; raises
    ``ValueError`` naming the problem if ``pattern`` is not a valid route template."""

    pattern: str
    method: str | None = field(init=False, repr=False, compare=False)
    levels: tuple[str | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        method, space, path = self.pattern.partition(" ")
        if not space:
            method, path = "", self.pattern
        elif not _METHOD.fullmatch(method):
            raise ValueError(f"route template {self.pattern!r}: {method!r} is not a method")
        if not path.startswith("/"):
            raise ValueError(f"route template {self.pattern!r} must start with '/'")
        if "?" in path or "#" in path or " " in path:
            raise ValueError(f"route template {self.pattern!r}: a path only (no '?', '#')")
        levels: list[str | None] = []
        for number, level in enumerate(path.split("/")[1:], start=1):
            if "{" in level or "}" in level:
                if not _PLACEHOLDER.fullmatch(level):
                    raise ValueError(
                        f"route template {self.pattern!r}, level {number}: a placeholder is "
                        "a whole level such as {room}"
                    )
                levels.append(None)
            else:
                levels.append(level)
        object.__setattr__(self, "method", method or None)
        object.__setattr__(self, "levels", tuple(levels))

    def apply(self, method: str, path: str) -> str | None:
        """The template of ``method path`` (a path without query) if this rule covers it."""
        if self.method is not None and self.method != method:
            return None
        levels = path.split("/")[1:]
        if len(levels) != len(self.levels):
            return None
        for have, want in zip(levels, self.levels, strict=True):
            if want is None:
                if not have:
                    return None
            elif have != want:
                return None
        _, _, template = self.pattern.rpartition(" ")
        return f"{method} {template}"


class _Shapes:
    """What :meth:`Templates.observe` remembers of one service, at most ``limit`` shapes.

    A shape is a topic with one level left open, keyed ``(position, topic with + there)``;
    ``seen`` maps it to the value each instance put in the hole (a few instances each). A
    level is an instance's own only if the mapping is one to one: once two instances used
    two values there, the shape is ``varying``. An instance using two values there, or two
    instances using one, shows it is not (``home/+/temp`` and ``home/+/light`` published by
    the same instances are two topics, not one per instance): the shape is ``banned``.
    The oldest shape not yet varying is forgotten first.
    """

    __slots__ = ("banned", "limit", "seen", "varying")

    PER_SHAPE = 8  # instances remembered per shape: enough to see a contradiction

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[tuple[int, str], dict[str, str]] = {}
        self.varying: set[tuple[int, str]] = set()
        self.banned: set[tuple[int, str]] = set()

    def __len__(self) -> int:
        return len(self.seen) + len(self.banned)

    def record(self, shape: tuple[int, str], instance: str, value: str) -> None:
        if shape in self.banned:
            return
        values = self.seen.get(shape)
        if values is None:
            if len(self) >= self.limit and not self._forget_one():
                return
            self.seen[shape] = {instance: value}
            return
        known = values.get(instance)
        if known is not None:
            if known != value:
                self._ban(shape)
            return
        if value in values.values():
            self._ban(shape)
            return
        if len(values) < self.PER_SHAPE:
            values[instance] = value
        self.varying.add(shape)

    def _ban(self, shape: tuple[int, str]) -> None:
        del self.seen[shape]
        self.varying.discard(shape)
        if len(self) >= self.limit and not self._forget_one():
            return
        self.banned.add(shape)

    def _forget_one(self) -> bool:
        for shape in self.seen:
            if shape not in self.varying:
                del self.seen[shape]
                return True
        if self.banned:
            self.banned.pop()
            return True
        return False


class Templates:
    """Config rules plus what was learned from observed topics; see the module docstring."""

    def __init__(
        self,
        rules: Sequence[TemplateRule] = (),
        *,
        max_shapes: int = MAX_SHAPES,
        routes: Sequence[RouteRule] = (),
    ) -> None:
        if max_shapes < 1:
            raise ValueError("max_shapes must be at least 1")
        self.rules = tuple(rules)
        self.routes = tuple(routes)
        self.max_shapes = max_shapes
        self._shapes: dict[str, _Shapes] = {}

    def topic(self, topic: str, *, service: str, instance: str | None) -> str:
        """The semantic form of ``topic`` (or subscription filter) used by ``service``."""
        for rule in self.rules:
            if rule.matches(topic):
                return rule.template
        levels = topic.split("/")
        concrete = "+" not in levels and "#" not in levels
        changed = _open_instance_levels(levels, service, instance)
        shapes = self._shapes.get(service)
        if concrete and shapes is not None and shapes.varying:
            open_at = [
                i for i in _open_positions(levels) if (i, _with_hole(levels, i)) in shapes.varying
            ]
            for i in open_at:
                levels[i] = "+"
            changed = changed or bool(open_at)
        return "/".join(levels) if changed else topic

    def observe(self, service: str, instance: str | None, topic: str) -> None:
        """Learn from ``instance`` of ``service`` using concrete ``topic``.

        Topics no config rule covers are remembered by shape (bounded per service); once two
        instances use topics differing in exactly one level, each instance always with its own
        value there, that level is open for the service.
        Filters, and topics of an unknown instance, teach nothing.
        """
        if instance is None:
            return
        levels = topic.split("/")
        if "+" in levels or "#" in levels:
            return
        if any(rule.matches(topic) for rule in self.rules):
            return
        _open_instance_levels(levels, service, instance)
        shapes = self._shapes.get(service)
        if shapes is None:
            shapes = self._shapes[service] = _Shapes(self.max_shapes)
        for i in _open_positions(levels):
            shapes.record((i, _with_hole(levels, i)), instance, levels[i])

    def learned(self, service: str) -> list[str]:
        """The templates learned for ``service`` from varying levels, sorted (for display)."""
        shapes = self._shapes.get(service)
        return sorted({template for _, template in shapes.varying}) if shapes else []

    def shape_count(self, service: str) -> int:
        """How many topic shapes are remembered for ``service`` (never above ``max_shapes``)."""
        shapes = self._shapes.get(service)
        return len(shapes) if shapes else 0

    def route(self, route: str) -> str:
        """The template of an HTTP route, ``[METHOD ]path``: identifier levels -> ``{id}``.

        The first config :class:`RouteRule` that covers it decides; otherwise numbers, UUIDs
        and hex ids (8+ hex digits, at least one a digit) are identifiers. The query string
        and fragment are dropped.
        """
        method, space, path = route.partition(" ")
        if not space or not _METHOD.fullmatch(method):
            method, space, path = "", "", route
        path = path.split("?", 1)[0].split("#", 1)[0]
        if space:
            for rule in self.routes:
                found = rule.apply(method, path)
                if found is not None:
                    return found
        levels = [ID if _is_identifier(level) else level for level in path.split("/")]
        return f"{method}{space}{'/'.join(levels)}"


def _is_identifier(level: str) -> bool:
    if not level or not level.isascii():
        return False
    return level.isdigit() or bool(_UUID.fullmatch(level) or _HEX_ID.fullmatch(level))


def _open_positions(levels: list[str]) -> list[int]:
    """Positions that may become ``+``: plain levels, never a ``$`` first level."""
    return [
        i
        for i, level in enumerate(levels)
        if level != "+" and level != "#" and not (i == 0 and level.startswith("$"))
    ]


def _with_hole(levels: list[str], i: int) -> str:
    return "/".join([*levels[:i], "+", *levels[i + 1 :]])


def _bare(name: str, service: str) -> str:
    """``name`` without a ``service`` prefix and separator: thermo-kitchen -> kitchen."""
    n = len(service)
    if len(name) > n + 1 and name.startswith(service) and name[n] in _INSTANCE_SEPARATORS:
        return name[n + 1 :]
    return name


def _open_instance_levels(levels: list[str], service: str, instance: str | None) -> bool:
    """Turn the levels naming ``instance`` into ``+`` in place; whether any was."""
    if not instance:
        return False
    bare = _bare(instance, service)
    if not bare or bare == service or bare in ("+", "#"):
        return False
    changed = False
    for i in _open_positions(levels):
        if _bare(levels[i], service) == bare:
            levels[i] = "+"
            changed = True
    return changed
