import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ticketing_core.models import Anomaly, Capabilities, FailedCheck, TicketChanges
from ticketing_core.policies import (
    AddWorkNote,
    ChangeTicket,
    Messages,
    StateMapping,
    StatusChange,
    WorkNotesOnly,
)

CAN_ALL = Capabilities()
CANNOT_CHANGE_STATE = Capabilities(state_changes=False)
AT = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def test_status_note_is_the_seeds_exact_text_in_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=-5)))

    note = Messages().status_note(StatusChange(1, "Acknowledged", local))

    assert note == "[2024-01-15 10:30:00 UTC] Qualytics Anomaly Status: Acknowledged"


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a time zone five hours behind UTC, so local-time mistakes show."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_a_naive_change_time_is_taken_as_utc() -> None:
    note = Messages().status_note(StatusChange(1, "Acknowledged", AT.replace(tzinfo=None)))

    assert note == "[2024-01-15 10:30:00 UTC] Qualytics Anomaly Status: Acknowledged"


def test_product_name_is_the_hosts() -> None:
    messages = Messages(product="Acme DQ", public_url="https://dq.acme.test/")

    assert messages.comment_note("hi") == "Comment from Acme DQ: hi"
    assert messages.anomaly_url(7) == "https://dq.acme.test/anomalies/7"
    assert "## Acme DQ Anomaly Linked" in messages.anomaly_block(Anomaly(7, "Shape", "Active"))


def test_anomaly_block_lists_every_failed_check() -> None:
    anomaly = Anomaly(
        12345,
        "Record",
        "Active",
        failed_checks=(FailedCheck("not_null", "email"), FailedCheck("between", None, "0..10")),
    )

    block = Messages(public_url="https://q").anomaly_block(anomaly)

    assert block.startswith("\n\n---\n\n## Qualytics Anomaly Linked\n")
    assert "- Failed checks: not_null (email); between: 0..10" in block


def test_work_notes_policy_never_changes_state() -> None:
    policy = WorkNotesOnly()

    for status in ("Acknowledged", "Resolved", "Invalid"):
        actions = policy.on_status_change(StatusChange(1, status, AT), Messages(), CAN_ALL)
        assert all(isinstance(action, AddWorkNote) for action in actions)


def test_state_mapping_resolves_with_a_resolution() -> None:
    actions = StateMapping().on_status_change(StatusChange(9, "Resolved", AT), Messages(), CAN_ALL)

    assert actions[1] == ChangeTicket(
        TicketChanges(status="Resolved", resolution="Anomaly 9 was marked Resolved in Qualytics.")
    )


def test_state_mapping_adapts_to_providers_without_state_changes() -> None:
    change = StatusChange(9, "Resolved", AT)

    actions = StateMapping().on_status_change(change, Messages(), CANNOT_CHANGE_STATE)

    assert actions == [AddWorkNote(Messages().status_note(change))]


def test_a_provider_without_notes_or_comments_gets_no_note_actions() -> None:
    mute = Capabilities(work_notes=False, public_comments=False)

    assert WorkNotesOnly().on_comment("hi", Messages(), mute) == []
    assert WorkNotesOnly().on_status_change(StatusChange(1, "Active", AT), Messages(), mute) == []
