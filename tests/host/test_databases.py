"""The host's flows end to end on SQLite and on PostgreSQL."""

from __future__ import annotations

import re

from servicenow_emulator import Emulator

from .conftest import (
    ANOMALY,
    TICKET_REQUEST,
    StartHost,
    create_integration,
    ok,
    settled,
    tickets_path,
    work_notes,
)


def test_the_flows_run_on_each_database(
    database_url: str, start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:  # the database first, so it outlives the host's dispatcher
    host = start_host(database=database_url)
    create_integration(host, emulator_url)
    ok(host.api.post("/api/anomalies", json=ANOMALY), 201)
    sys_id = ok(host.api.post(tickets_path(), json=TICKET_REQUEST))["ticket"]["ticket_id"]

    ok(host.api.put("/api/anomalies/12345", json={"status": "Acknowledged"}))
    ok(host.api.post("/api/anomalies/12345/comments", json={"message": "On it"}), 201)
    links = ok(host.api.post("/api/anomalies/12345/ticket-links/sync"))

    assert settled(host)["delivered"] == 2
    status_note, comment_note = work_notes(emulator, sys_id)
    assert re.search(r"UTC\] Qualytics Anomaly Status: Acknowledged$", status_note)
    assert comment_note == "Comment from Qualytics: On it"
    assert [link["status"] for link in links] == ["New"]
    with_nul = host.api.post("/api/anomalies/12345/comments", json={"message": "a\x00b"})
    if database_url.startswith("postgresql"):
        # PostgreSQL cannot store NUL characters: a 422 naming why, never a 500.
        assert with_nul.status_code == 422
        assert with_nul.json() == {
            "detail": "PostgreSQL text fields cannot contain NUL (0x00) bytes"
        }
    else:
        assert with_nul.status_code == 201
