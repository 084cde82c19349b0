from __future__ import annotations

import pytest

from commgraph.alerts import (
    ALERT_TRANSITIONS,
    Action,
    Alert,
    AlertBook,
    AlertKind,
    AlertState,
)
from commgraph.errors import DecisionError, UnknownItemError

T0 = 1_700_000_000.0
EDGE_A, EDGE_B = 3, 8


def book_with(*edges: int) -> tuple[AlertBook, list[Alert]]:
    book = AlertBook()
    alerts = [book.raise_or_repeat(e, AlertKind.NEW_EDGE, T0, "node-a")[0] for e in edges]
    return book, alerts


def test_first_alert_is_new_and_pending() -> None:
    book = AlertBook()
    alert, is_new = book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0, "node-a")
    assert is_new
    assert alert.id == 1
    assert (alert.edge, alert.kind, alert.state) == (EDGE_A, AlertKind.NEW_EDGE, AlertState.PENDING)
    assert (alert.count, alert.first_seen, alert.last_seen, alert.node) == (1, T0, T0, "node-a")
    assert book.get(1) is alert
    assert book.pending() == [alert]


def test_repeats_bump_count_and_last_seen() -> None:
    book, (alert,) = book_with(EDGE_A)
    again, is_new = book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0 + 30, "node-b")
    assert again is alert and not is_new
    book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0 + 10, None)  # late arrival
    assert alert.count == 3
    assert alert.first_seen == T0
    assert alert.last_seen == T0 + 30
    assert alert.node == "node-a"
    assert len(book.by_id) == 1


def test_one_alert_per_edge_and_kind() -> None:
    book = AlertBook()
    a, _ = book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0, None)
    b, _ = book.raise_or_repeat(EDGE_A, AlertKind.RATE, T0, None)
    c, _ = book.raise_or_repeat(EDGE_B, AlertKind.NEW_EDGE, T0, None)
    assert [a.id, b.id, c.id] == [1, 2, 3]
    assert len(book.pending()) == 3


def test_ids_increase() -> None:
    book, alerts = book_with(1, 2, 3, 4)
    ids = [a.id for a in alerts]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert book.next_id == 5


@pytest.mark.parametrize(
    ("actions", "final"),
    [
        ([Action.APPROVE], AlertState.APPROVED),
        ([Action.DENY], AlertState.DENIED),
        ([Action.APPROVE, Action.DENY], AlertState.DENIED),
        ([Action.DENY, Action.APPROVE], AlertState.APPROVED),
        ([Action.DENY, Action.APPROVE, Action.DENY], AlertState.DENIED),
    ],
)
def test_allowed_decisions(actions: list[Action], final: AlertState) -> None:
    book, (alert,) = book_with(EDGE_A)
    for action in actions:
        assert book.decide(alert.id, action) is alert
    assert alert.state is final
    assert book.pending() == []


@pytest.mark.parametrize(
    ("first", "second"),
    [(Action.APPROVE, Action.APPROVE), (Action.DENY, Action.DENY)],
)
def test_deciding_the_same_way_twice_is_refused(first: Action, second: Action) -> None:
    book, (alert,) = book_with(EDGE_A)
    book.decide(alert.id, first)
    state = alert.state
    with pytest.raises(DecisionError, match=f"already {state}"):
        book.decide(alert.id, second)
    assert alert.state is state


@pytest.mark.parametrize("action", [Action.MODE, Action.RESET])
def test_non_decisions_are_refused(action: Action) -> None:
    book, (alert,) = book_with(EDGE_A)
    with pytest.raises(DecisionError):
        book.decide(alert.id, action)
    assert alert.state is AlertState.PENDING


def test_transition_table() -> None:
    assert ALERT_TRANSITIONS == {
        (AlertState.PENDING, Action.APPROVE): AlertState.APPROVED,
        (AlertState.PENDING, Action.DENY): AlertState.DENIED,
        (AlertState.APPROVED, Action.DENY): AlertState.DENIED,
        (AlertState.DENIED, Action.APPROVE): AlertState.APPROVED,
    }


def test_unknown_id_raises() -> None:
    book, _ = book_with(EDGE_A)
    with pytest.raises(UnknownItemError, match="42"):
        book.decide(42, Action.APPROVE)
    with pytest.raises(UnknownItemError):
        book.get(0)
    assert issubclass(UnknownItemError, DecisionError)


def test_new_alert_after_a_decision_gets_a_new_id() -> None:
    book, (alert,) = book_with(EDGE_A)
    book.decide(alert.id, Action.APPROVE)
    fresh, is_new = book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0 + 60, None)
    assert is_new
    assert fresh.id != alert.id and fresh.id > alert.id
    assert (fresh.count, fresh.first_seen) == (1, T0 + 60)
    assert alert.count == 1 and alert.state is AlertState.APPROVED
    assert book.pending() == [fresh]
    again, is_new = book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0 + 61, None)
    assert again is fresh and not is_new


def test_deciding_one_alert_leaves_others_open() -> None:
    book, (a, b) = book_with(EDGE_A, EDGE_B)
    book.decide(a.id, Action.DENY)
    assert book.pending() == [b]
    assert book.raise_or_repeat(EDGE_B, AlertKind.NEW_EDGE, T0 + 1, None) == (b, False)


def test_add_restored_alerts() -> None:
    book = AlertBook()
    closed = Alert(
        id=7,
        edge=EDGE_A,
        kind=AlertKind.NEW_EDGE,
        state=AlertState.DENIED,
        count=4,
        first_seen=T0,
        last_seen=T0 + 5,
    )
    open_ = Alert(
        id=3,
        edge=EDGE_B,
        kind=AlertKind.NEW_EDGE,
        state=AlertState.PENDING,
        count=2,
        first_seen=T0,
        last_seen=T0 + 5,
    )
    book.add(closed)
    book.add(open_)
    assert book.next_id == 8
    assert book.raise_or_repeat(EDGE_B, AlertKind.NEW_EDGE, T0 + 9, None) == (open_, False)
    assert open_.count == 3
    fresh, is_new = book.raise_or_repeat(EDGE_A, AlertKind.NEW_EDGE, T0 + 9, None)
    assert is_new and fresh.id == 8


def test_every_kind_has_its_words_and_its_tag_in_one_place() -> None:
    from commgraph.alerts import KIND_LABELS, KIND_WORDS, AlertKind

    kinds = {k.value for k in AlertKind}
    assert set(KIND_WORDS) == kinds
    assert set(KIND_LABELS) == kinds
