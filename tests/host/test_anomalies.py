"""The host's anomaly endpoints and the error handling shared by every endpoint."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import ANOMALY, SEED_TIME, Host, ok


def test_an_anomaly_is_created_and_read_back(host: Host, anomaly: dict[str, Any]) -> None:
    assert list(anomaly) == [
        "id", "type", "status", "description", "datastore", "container", "field",
        "failed_checks", "created", "updated", "comments",
    ]  # fmt: skip
    assert {key: anomaly[key] for key in ANOMALY} == ANOMALY
    assert anomaly["comments"] == []
    assert re.fullmatch(SEED_TIME, anomaly["created"])
    assert ok(host.api.get("/api/anomalies/12345")) == anomaly


def test_without_an_id_the_next_free_one_is_used(host: Host, anomaly: dict[str, Any]) -> None:
    body = {"type": "Shape", "status": "Active", "failed_checks": [{"rule": "max_length"}]}

    created = ok(host.api.post("/api/anomalies", json=body), 201)

    assert created["id"] == 12346
    assert created["failed_checks"] == [{"rule": "max_length", "field": None, "description": None}]
    assert (created["description"], created["datastore"]) == ("", None)


def test_a_duplicate_id_is_409(host: Host, anomaly: dict[str, Any]) -> None:
    response = host.api.post("/api/anomalies", json=ANOMALY | {"status": "Resolved"})

    assert response.status_code == 409
    assert response.json() == {"detail": "anomaly 12345 already exists"}
    assert ok(host.api.get("/api/anomalies/12345"))["status"] == "Active"


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"status": "Open"}, ["body", "status"]),
        ({"id": 0}, ["body", "id"]),
        ({"id": 2**63}, ["body", "id"]),
        ({"type": "R" * 65}, ["body", "type"]),
        ({"failed_checks": [{"field": "x"}]}, ["body", "failed_checks", 0, "rule"]),
        ({"owner": "me"}, ["body", "owner"]),
    ],
)
def test_a_bad_anomaly_is_422_naming_the_field(
    host: Host, change: dict[str, Any], loc: list[object]
) -> None:
    response = host.api.post("/api/anomalies", json=ANOMALY | change)

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/anomalies/999", None),
        ("PUT", "/api/anomalies/999", {"status": "Resolved"}),
        ("POST", "/api/anomalies/999/comments", {"message": "hello"}),
    ],
)
def test_an_unknown_anomaly_is_404(
    host: Host, method: str, path: str, body: dict[str, str] | None
) -> None:
    response = host.api.request(method, path, json=body)

    assert response.status_code == 404
    assert response.json() == {"detail": "anomaly 999 does not exist"}


@pytest.mark.parametrize("path", ["/api/anomalies", "/api/anomalies/12345/comments"])
def test_malformed_json_is_422_without_a_traceback(
    host: Host, anomaly: dict[str, Any], path: str
) -> None:
    response = host.api.post(
        path, content=b'{"message": "unterminated', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert [error["type"] for error in response.json()["detail"]] == ["json_invalid"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("path", "loc"),
    [
        ("/api/anomalies/twelve", ["path", "anomaly_id"]),
        ("/api/anomalies/0", ["path", "anomaly_id"]),
        (f"/api/anomalies/{2**63}", ["path", "anomaly_id"]),
        (f"/api/integrations/{2**31}", ["path", "integration_id"]),
        (
            f"/api/integrations/ticketing/tickets/search?integration_id={2**31}",
            ["query", "integration_id"],
        ),
    ],
)
def test_an_id_out_of_range_is_422_naming_it(host: Host, path: str, loc: list[str]) -> None:
    response = host.api.get(path)

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


def test_no_id_left_above_the_highest_is_409_and_nothing_is_stored(host: Host) -> None:
    ok(host.api.post("/api/anomalies", json=ANOMALY | {"id": 2**63 - 1}), 201)

    response = host.api.post("/api/anomalies", json={k: v for k, v in ANOMALY.items() if k != "id"})

    assert response.status_code == 409
    assert "give an id" in response.json()["detail"]
