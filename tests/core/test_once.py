"""Requests run once per key (ticketing_core.sync.once), on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from ticketing_core import errors
from ticketing_core.sync.database import Database
from ticketing_core.sync.once import KeyedRequests


def recorded(value: str, _conn: object) -> dict[str, str]:
    return {"value": value}


def test_a_key_runs_its_work_once_and_replays_the_result(database: Database) -> None:
    requests = KeyedRequests(database)
    calls: list[bool] = []

    def work(retrying: bool) -> str:
        calls.append(retrying)
        return "made"

    first = requests.run("k", "fp", work, record=recorded)
    again = requests.run("k", "fp", work, record=recorded)

    assert first == ("made", {"value": "made"})
    assert again == (None, {"value": "made"})
    assert calls == [False]


def test_a_key_reused_for_another_request_is_a_conflict(database: Database) -> None:
    requests = KeyedRequests(database)
    requests.run("k", "fp", lambda _: "made", record=recorded)

    with pytest.raises(errors.Conflict, match="different request"):
        requests.run("k", "another fp", lambda _: "other", record=recorded)


def test_after_a_refusal_the_next_caller_starts_afresh(database: Database) -> None:
    requests = KeyedRequests(database)
    with pytest.raises(errors.PermissionDenied):
        requests.run("k", "fp", _raise(errors.PermissionDenied("ACL")), record=recorded)

    value, _ = requests.run("k", "fp", lambda retrying: f"retrying={retrying}", record=recorded)

    assert value == "retrying=False"


def test_after_a_failure_that_may_have_landed_the_key_waits_out_the_doubt_window(
    database: Database,
) -> None:
    requests = KeyedRequests(database, doubt_seconds=0.6, wait_seconds=0.2)
    with pytest.raises(errors.ProviderTimeout):
        requests.run("k", "fp", _raise(errors.ProviderTimeout("no answer")), record=recorded)

    # The first request may still be running at the provider: a lookup now would prove nothing.
    with pytest.raises(errors.Conflict, match="retry it in a minute"):
        requests.run("k", "fp", lambda _: "too early", record=recorded)
    time.sleep(0.6)
    value, _ = requests.run("k", "fp", lambda retrying: f"retrying={retrying}", record=recorded)

    assert value == "retrying=True"


def test_a_holder_that_died_hands_over_with_retrying(database: Database) -> None:
    requests = KeyedRequests(database, lease_seconds=0.2)
    assert requests._claim("k", "fp").token is not None  # a caller claims it, then dies

    time.sleep(0.3)
    value, _ = requests.run("k", "fp", lambda retrying: f"retrying={retrying}", record=recorded)

    assert value == "retrying=True"


def test_a_holder_whose_lease_ran_out_cannot_record_over_its_successor(
    database: Database,
) -> None:
    requests = KeyedRequests(database, lease_seconds=0.2)

    def slow(_: bool) -> str:
        time.sleep(0.3)
        requests.run("k", "fp", lambda _: "successor", record=recorded)  # took over meanwhile
        return "late"

    with pytest.raises(errors.Conflict, match="longer than its lease"):
        requests.run("k", "fp", slow, record=recorded)
    assert requests.run("k", "fp", slow, record=recorded) == (None, {"value": "successor"})


def _raise(error: Exception):  # type: ignore[no-untyped-def]
    def work(_: bool) -> str:
        raise error

    return work
