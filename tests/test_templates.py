from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commgraph.templates import TemplateRule, Templates, matches

# -- matches: the MQTT spec's examples (MQTT 5.0, 4.7) -----------------------------------------


@pytest.mark.parametrize(
    ("template", "topic"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1"),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking"),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"),
        ("sport/#", "sport"),
        ("#", "sport/tennis"),
        ("sport/tennis/+", "sport/tennis/player1"),
        ("sport/tennis/+", "sport/tennis/player2"),
        ("sport/+", "sport/"),
        ("+/tennis/#", "sport/tennis/player1"),
        ("+/+", "/finance"),
        ("/+", "/finance"),
        ("+", "sport"),
        ("$SYS/#", "$SYS/monitor/Clients"),
        ("$SYS/monitor/+", "$SYS/monitor/Clients"),
        ("home/+/temp", "home/kitchen/temp"),
    ],
)
def test_matches(template: str, topic: str) -> None:
    assert matches(template, topic)


@pytest.mark.parametrize(
    ("template", "topic"),
    [
        ("sport/tennis/+", "sport/tennis/player1/ranking"),
        ("sport/+", "sport"),
        ("+", "/finance"),
        ("sport/tennis/player1/#", "sport/tennis/player2"),
        ("#", "$SYS/monitor/Clients"),
        ("+/monitor/Clients", "$SYS/monitor/Clients"),
        ("+", "$SYS"),
        ("home/+/temp", "home/kitchen/humidity"),
        ("home/temp", "home/temp/x"),
    ],
)
def test_does_not_match(template: str, topic: str) -> None:
    assert not matches(template, topic)


def test_matches_a_filter_when_it_covers_all_of_it() -> None:
    assert matches("home/+/temp", "home/+/temp")
    assert matches("home/#", "home/+/temp")
    assert matches("#", "home/#")
    assert not matches("home/+", "home/#")
    assert not matches("home/kitchen/temp", "home/+/temp")


# -- config rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["home/+/temperature", "home/{room}/temperature"])
def test_rule_syntaxes(pattern: str) -> None:
    rule = TemplateRule(pattern=pattern)
    assert rule.template == "home/+/temperature"
    assert rule.matches("home/kitchen/temperature")
    assert not rule.matches("home/kitchen/humidity")
    templates = Templates([rule])
    got = templates.topic("home/kitchen/temperature", service="thermo", instance="a")
    assert got == "home/+/temperature"


def test_first_rule_wins() -> None:
    templates = Templates(
        [TemplateRule(pattern="home/{room}/#"), TemplateRule(pattern="home/+/temp")]
    )
    assert templates.topic("home/kitchen/temp", service="s", instance=None) == "home/+/#"


def test_rule_applies_to_filters() -> None:
    templates = Templates([TemplateRule(pattern="home/{room}/temp")])
    assert templates.topic("home/+/temp", service="s", instance=None) == "home/+/temp"
    assert templates.topic("home/#", service="s", instance=None) == "home/#"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty"),
        ("home//temp", "level 2 is empty"),
        ("/home", "level 1 is empty"),
        ("home/", "level 2 is empty"),
        ("home/#/temp", "'#' must be the last level"),
        ("home/temp#", "'#' must be a whole level"),
        ("home/room+/temp", "'+' must be a whole level"),
        ("home/{room/temp", "placeholder"),
        ("home/x{room}/temp", "placeholder"),
        ("home/{}/temp", "placeholder"),
        ("home/\0", "NUL"),
    ],
)
def test_invalid_rules(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TemplateRule(pattern=pattern)


# -- instance names --------------------------------------------------------------------------


def test_instance_level_becomes_plus() -> None:
    templates = Templates()
    got = templates.topic("home/kitchen/temp", service="thermo", instance="kitchen")
    assert got == "home/+/temp"
    got = templates.topic("home/living/temp", service="thermo", instance="living")
    assert got == "home/+/temp"


def test_instance_with_or_without_service_prefix() -> None:
    templates = Templates()
    got = templates.topic("home/kitchen/temp", service="thermo", instance="thermo-kitchen")
    assert got == "home/+/temp"
    got = templates.topic("dev/thermo-kitchen/state", service="thermo", instance="kitchen")
    assert got == "dev/+/state"


def test_instance_never_generalizes_the_service_name_or_wildcards() -> None:
    templates = Templates()
    assert templates.topic("thermo/x", service="thermo", instance="thermo") == "thermo/x"
    assert templates.topic("a/kitchen", service="thermo", instance=None) == "a/kitchen"
    assert templates.topic("$kitchen/x", service="t", instance="$kitchen") == "$kitchen/x"


def test_instance_level_in_a_filter() -> None:
    templates = Templates()
    got = templates.topic("cmd/kitchen/#", service="thermo", instance="kitchen")
    assert got == "cmd/+/#"


# -- levels learned to vary across instances --------------------------------------------------


def test_varying_level_learned_from_two_instances() -> None:
    templates = Templates()
    templates.observe("thermo", "t1", "home/kitchen/temp")
    assert templates.topic("home/kitchen/temp", service="thermo", instance="t1") == (
        "home/kitchen/temp"
    )
    templates.observe("thermo", "t2", "home/living/temp")
    assert templates.learned("thermo") == ["home/+/temp"]
    for room in ("kitchen", "living"):
        got = templates.topic(f"home/{room}/temp", service="thermo", instance="t3")
        assert got == "home/+/temp"
    # a new value in a learned position is generalized too; other services are not affected
    assert templates.topic("home/attic/temp", service="thermo", instance="t9") == "home/+/temp"
    assert templates.topic("home/attic/temp", service="lamp", instance="l1") == "home/attic/temp"


def test_not_learned_from_one_instance() -> None:
    templates = Templates()
    for room in ("kitchen", "living", "attic"):
        templates.observe("thermo", "t1", f"home/{room}/temp")
    assert templates.learned("thermo") == []
    assert templates.topic("home/kitchen/temp", service="thermo", instance="t1") == (
        "home/kitchen/temp"
    )


def test_not_learned_when_two_levels_differ() -> None:
    templates = Templates()
    templates.observe("thermo", "t1", "home/kitchen/1/temp")
    templates.observe("thermo", "t2", "home/living/2/temp")
    templates.observe("thermo", "t3", "home/living/2/temp/x")  # another length
    assert templates.learned("thermo") == []
    got = templates.topic("home/kitchen/1/temp", service="thermo", instance="t1")
    assert got == "home/kitchen/1/temp"


def test_not_learned_from_the_same_value() -> None:
    templates = Templates()
    templates.observe("thermo", "t1", "home/alarm/state")
    templates.observe("thermo", "t2", "home/alarm/state")
    assert templates.learned("thermo") == []


def test_two_topics_of_the_same_instances_are_not_an_instance_level() -> None:
    templates = Templates()
    templates.observe("thermo", "kitchen", "home/kitchen/temp")
    templates.observe("thermo", "hall", "home/hall/temp")  # one value, two instances
    templates.observe("thermo", "hall", "home/hall/light")
    assert templates.learned("thermo") == []
    assert templates.topic("home/hall/light", service="thermo", instance="hall") == ("home/+/light")


def test_one_instance_using_two_values_unlearns_a_level() -> None:
    templates = Templates()
    templates.observe("thermo", "t1", "sensors/attic/temp")
    templates.observe("thermo", "t2", "sensors/cellar/temp")
    assert templates.learned("thermo") == ["sensors/+/temp"]
    templates.observe("thermo", "t1", "sensors/garage/temp")
    assert templates.learned("thermo") == []
    templates.observe("thermo", "t3", "sensors/loft/temp")  # banned for good
    assert templates.learned("thermo") == []


def test_learned_after_instance_levels_are_opened() -> None:
    templates = Templates()
    templates.observe("thermo", "kitchen", "site/kitchen/sensor/1")
    templates.observe("thermo", "living", "site/living/sensor/2")
    assert templates.learned("thermo") == ["site/+/sensor/+"]
    got = templates.topic("site/kitchen/sensor/7", service="thermo", instance="kitchen")
    assert got == "site/+/sensor/+"


def test_filters_and_unknown_instances_teach_nothing_and_pass_through() -> None:
    templates = Templates()
    templates.observe("thermo", "t1", "home/kitchen/+")
    templates.observe("thermo", "t2", "home/living/+")
    templates.observe("thermo", None, "home/kitchen/temp")
    templates.observe("thermo", None, "home/living/temp")
    assert templates.shape_count("thermo") == 0
    templates.observe("thermo", "t1", "home/kitchen/temp")
    templates.observe("thermo", "t2", "home/living/temp")
    assert templates.topic("home/kitchen/+", service="thermo", instance="t1") == "home/kitchen/+"


def test_dollar_first_level_is_never_opened() -> None:
    templates = Templates()
    templates.observe("svc", "a", "$x/state")
    templates.observe("svc", "b", "$y/state")
    assert templates.topic("$x/state", service="svc", instance="a") == "$x/state"


def test_memory_is_bounded_per_service() -> None:
    templates = Templates(max_shapes=50)
    for n in range(10_000):
        templates.observe("noisy", f"i{n % 7}", f"dev/{n}/a/{n * 3}")
    assert templates.shape_count("noisy") == 50
    assert Templates().max_shapes == 1000
    with pytest.raises(ValueError):
        Templates(max_shapes=0)


def test_learned_shapes_survive_later_noise() -> None:
    templates = Templates(max_shapes=10)
    templates.observe("thermo", "t1", "home/kitchen/temp")
    templates.observe("thermo", "t2", "home/living/temp")
    for n in range(1000):
        templates.observe("thermo", "t1", f"noise/{n}")
    assert templates.shape_count("thermo") == 10
    assert templates.topic("home/attic/temp", service="thermo", instance="t3") == "home/+/temp"


# -- routes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "template"),
    [
        (
            "GET /rooms/12/valves/3f2a9c1e-7b4d-4e2a-9c1e-0123456789ab",
            "GET /rooms/{id}/valves/{id}",
        ),
        ("GET /rooms/12?verbose=1&x=2", "GET /rooms/{id}"),
        ("PUT /devices/5f3a9c1e0b/state", "PUT /devices/{id}/state"),
        ("GET /devices/DEADBEEF01/state", "GET /devices/{id}/state"),
        ("GET /words/deadbeefcafe", "GET /words/deadbeefcafe"),  # hex, but no digit
        ("GET /short/ab12", "GET /short/ab12"),  # too short for a hex id
        ("GET /v2/rooms", "GET /v2/rooms"),
        ("/rooms/42/", "/rooms/{id}/"),
        ("POST /rooms#frag", "POST /rooms"),
        ("GET /rooms/{id}", "GET /rooms/{id}"),
        ("GET /x/\u00b2", "GET /x/\u00b2"),  # not an ASCII digit
    ],
)
def test_route(route: str, template: str) -> None:
    templates = Templates()
    assert templates.route(route) == template
    assert templates.route(template) == template


# -- properties ------------------------------------------------------------------------------

LEVELS = st.sampled_from(["home", "kitchen", "living", "temp", "+", "#", "$SYS", "", "t1", "7"])
TOPICS = st.lists(LEVELS, min_size=1, max_size=5).map("/".join)
RULES = st.lists(
    st.sampled_from(
        ["home/+/temp", "home/{room}/#", "+/kitchen", "$SYS/#", "#", "+/+/+", "temp", "7/+"]
    ).map(lambda p: TemplateRule(pattern=p)),
    max_size=3,
)
INSTANCES = st.sampled_from([None, "kitchen", "thermo-living", "t1", "thermo", "$SYS"])


@given(
    rules=RULES,
    seen=st.lists(st.tuples(INSTANCES, TOPICS), max_size=12),
    topic=TOPICS,
    instance=INSTANCES,
)
def test_template_matches_its_topic_and_is_stable(
    rules: list[TemplateRule],
    seen: list[tuple[str | None, str]],
    topic: str,
    instance: str | None,
) -> None:
    templates = Templates(rules)
    for who, observed in seen:
        templates.observe("thermo", who, observed)
    template = templates.topic(topic, service="thermo", instance=instance)
    assert matches(template, topic)
    assert templates.topic(template, service="thermo", instance=instance) == template


@given(st.text(alphabet="ab/+#$", max_size=12))
def test_every_topic_matches_itself(topic: str) -> None:
    assert matches(topic, topic)


@given(st.text(alphabet="a1f/-?=# {}", max_size=20))
def test_route_is_idempotent(route: str) -> None:
    templates = Templates()
    once = templates.route("GET " + route)
    assert templates.route(once) == once


@given(st.lists(TOPICS, min_size=3, max_size=3))
def test_matches_is_transitive(topics: list[str]) -> None:
    a, b, c = topics
    if matches(a, b) and matches(b, c):
        assert matches(a, c)


def test_configured_route_templates_come_first_and_keep_their_names() -> None:
    from commgraph.templates import RouteRule

    templates = Templates(
        routes=[RouteRule(pattern="/rooms/{room}/temperature"), RouteRule(pattern="POST /x/{a}")]
    )
    assert templates.route("GET /rooms/kitchen/temperature?x=1") == "GET /rooms/{room}/temperature"
    assert templates.route("GET /rooms/12/humidity") == "GET /rooms/{id}/humidity"  # no rule
    assert templates.route("POST /x/anything") == "POST /x/{a}"
    assert templates.route("GET /x/anything") == "GET /x/anything"  # the rule names POST
    assert templates.route("GET /rooms//temperature") == "GET /rooms//temperature"  # empty level
    with pytest.raises(ValueError, match="start with '/'"):
        RouteRule(pattern="rooms/{room}")
    with pytest.raises(ValueError, match="whole level"):
        RouteRule(pattern="/rooms/r{room}")
    with pytest.raises(ValueError, match="not a method"):
        RouteRule(pattern="get /rooms")
