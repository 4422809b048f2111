"""Enterprise access through the host: the address rule (SSRF), encrypted credentials and their
keys, credential rotation over PATCH, OAuth, and bounded request bodies."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from httpx_auth import OAuth2
from servicenow_emulator import Emulator
from servicenow_emulator.app import DEFAULT_OAUTH_CLIENT_ID, DEFAULT_OAUTH_CLIENT_SECRET

from ticketing_core.notifications import TICKETING_V1, sign

from ..conftest import ADMIN_TOKEN, SECRET_KEY, postgres_schema, wait_until
from .conftest import API_TOKEN, Host, StartHost, create_integration, ok, work_notes
from .test_commands import TICKETING

PASSWORD = ADMIN_TOKEN.split(":")[1]


@pytest.fixture(autouse=True)
def no_cached_tokens() -> None:
    """The emulator forgets its tokens between tests, as an instance would on a restart; the
    process-wide token cache must not carry one from an earlier test into the counts."""
    OAuth2.token_cache.clear()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1 (and the port on ::1 where there is IPv6), never accepting:
    a connection attempt would sit in its backlog, where the test can see it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def connections_seen(server: socket.socket) -> int:
    seen = 0
    while True:
        try:
            server.accept()[0].close()
            seen += 1
        except BlockingIOError:
            return seen


def integration_body(api_url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "servicenow", "api_url": api_url, "api_access_token": ADMIN_TOKEN, **extra}


# -- the address rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host_part", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("2130706433", "loopback"),  # 127.0.0.1 as one decimal number
        ("0x7f000001", "loopback"),  # and in hexadecimal
        ("127.1", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[2002:7f00:1::]", "loopback"),  # 6to4, carrying 127.0.0.1
        ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64, carrying 169.254.169.254
        ("[fec0::1]", "reserved"),  # IPv6 site-local
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),  # the cloud metadata service
        ("0.0.0.0", "unspecified"),  # noqa: S104 - a URL refused, not a socket bound
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not globally routable"),
    ],
)
def test_non_public_addresses_are_refused_without_a_connection(
    start_host: StartHost, listener: socket.socket, host_part: str, rule: str
) -> None:
    host = start_host(allow_private_hosts=False)
    port = listener.getsockname()[1]

    response = host.api.post(
        "/api/integrations", json=integration_body(f"http://{host_part}:{port}")
    )

    assert response.status_code == 422, response.text
    assert f"a {rule} address" in response.json()["detail"]
    assert "--allow-private-hosts" in response.json()["detail"]
    assert connections_seen(listener) == 0
    assert host.api.get("/api/integrations").json() == []


def test_allow_http_alone_does_not_lift_the_rule(
    start_host: StartHost, emulator_url: str, emulator: Emulator
) -> None:
    host = start_host(allow_http=True, allow_private_hosts=False)

    response = host.api.post("/api/integrations", json=integration_body(emulator_url))

    assert response.status_code == 422
    assert emulator.requests == []


def test_the_allow_list_refuses_other_hosts(start_host: StartHost, emulator_url: str) -> None:
    host = start_host(allowed_hosts=("*.service-now.com",))

    response = host.api.post("/api/integrations", json=integration_body(emulator_url))

    assert response.status_code == 422
    assert "'127.0.0.1' is not an allowed host" in response.json()["detail"]


def test_a_stored_integration_is_checked_again_at_connect_time(
    start_host: StartHost, emulator: Emulator, emulator_url: str
) -> None:
    """An integration stored while the rule was lifted (or whose name now resolves to a private
    address) sends nothing once the rule holds: the check is made on every connection."""
    lab = start_host()
    integration = create_integration(lab, emulator_url)
    emulator.reset()
    guarded = start_host(allow_private_hosts=False)  # the same database

    response = guarded.api.get(
        "/api/integrations/ticketing/tickets/search",
        params={"integration_id": integration["id"]},
    )

    assert response.status_code == 422
    assert "a loopback address" in response.json()["detail"]
    assert emulator.requests == []


def test_a_refused_address_keeps_events_waiting_without_spending_attempts(
    start_host: StartHost, emulator: Emulator, ticket: dict[str, Any], host: Host
) -> None:
    """A worker or host run with a stricter rule than the one that stored the integration (or a
    name now resolving to a private address) sends nothing, and dead-parks nothing either."""
    host.runtime.stop()
    sent_before = len(emulator.requests)
    guarded = start_host(allow_private_hosts=False, backoff_max=0.5)  # the same database

    ok(guarded.api.post("/api/anomalies/12345/comments", json={"message": "held back"}), 201)
    outbox = guarded.runtime.service.outbox
    [waiting] = wait_until(lambda: [e for e in outbox.entries() if e.last_error] or None)

    assert waiting.status == "pending"
    assert waiting.attempts == 0
    assert "BlockedAddress" in (waiting.last_error or "")
    assert len(emulator.requests) == sent_before


# -- encrypted credentials ------------------------------------------------------------------------


def stored_bytes(host: Host) -> bytes:
    """Everything the database holds, as bytes: the SQLite files (WAL included), or every
    column of the integrations table on PostgreSQL."""
    database = host.runtime.database
    if database.is_postgresql:
        with database.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM integrations")).all()
        return repr(rows).encode()
    path = Path(str(database.engine.url.database))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file())


def test_credentials_are_stored_encrypted(
    database_url: str, start_host: StartHost, emulator_url: str
) -> None:
    host = start_host(database=database_url)
    body = integration_body(
        emulator_url,
        options={
            "client_id": DEFAULT_OAUTH_CLIENT_ID,
            "client_secret": DEFAULT_OAUTH_CLIENT_SECRET,
        },
    )

    created = ok(host.api.post("/api/integrations", json=body), 201)
    shown = ok(host.api.get(f"/api/integrations/{created['id']}"))

    held = stored_bytes(host)
    assert PASSWORD.encode() not in held
    assert DEFAULT_OAUTH_CLIENT_SECRET.encode() not in held
    assert DEFAULT_OAUTH_CLIENT_ID.encode() in held  # not a secret: kept readable
    assert PASSWORD not in str(shown)
    assert DEFAULT_OAUTH_CLIENT_SECRET not in str(created)


def test_a_wrong_key_keeps_events_queued_until_the_right_key_is_back(
    start_host: StartHost, emulator: Emulator, emulator_url: str, tmp_path: Path
) -> None:
    database = str(tmp_path / "keys.db")
    first = start_host(database=database)
    integration = create_integration(first, emulator_url)
    ok(first.api.post("/api/anomalies", json={"id": 7, "type": "Record", "status": "Active"}), 201)
    ticket = ok(first.api.post("/api/integrations/ticketing/anomalies/7/tickets", json={
        "title": "t", "description": "d", "priority": "3", "urgency": "3", "impact": "3",
    }))["ticket"]  # fmt: skip
    first.runtime.stop()
    sent_before = len(emulator.requests)
    other_key = Fernet.generate_key().decode()

    wrong = start_host(database=database, secret_key=other_key, backoff_max=0.5)
    shown = ok(wrong.api.get(f"/api/integrations/{integration['id']}"))
    searched = wrong.api.get("/api/integrations/ticketing/tickets/search")
    ok(wrong.api.post("/api/anomalies/7/comments", json={"message": "while the key is wrong"}), 201)
    outbox = wrong.runtime.service.outbox
    waiting = wait_until(lambda: [e for e in outbox.entries() if e.last_error] or None)
    wrong.runtime.stop()

    assert shown["connected"] is False
    assert searched.status_code == 503
    assert "cannot be decrypted" in searched.json()["detail"]
    assert "cannot be decrypted" in shown["error"]
    assert "TICKETING_SECRET_KEY" in shown["error"]
    assert waiting[0].status == "pending"
    assert waiting[0].attempts == 0
    assert len(emulator.requests) == sent_before

    right = start_host(database=database)  # SECRET_KEY again
    wait_until(
        lambda: "while the key is wrong" in " ".join(work_notes(emulator, ticket["ticket_id"]))
    )
    assert right.runtime.service.outbox.counts()["dead"] == 0


def test_keys_rotate_re_encrypts_under_the_first_key(
    start_host: StartHost, emulator: Emulator, emulator_url: str, tmp_path: Path
) -> None:
    database = str(tmp_path / "rotate.db")
    create_integration(start_host(database=database), emulator_url)
    new_key = Fernet.generate_key().decode()

    def rotate(keys: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TICKETING, "keys", "rotate", "--database", database],
            env={"TICKETING_SECRET_KEY": keys, "PATH": ""}, capture_output=True, text=True,
        )  # fmt: skip

    rotated = rotate(f"{new_key},{SECRET_KEY}")
    again = rotate(f"{new_key},{SECRET_KEY}")
    without_old = rotate(new_key)
    with_old_only = start_host(database=database, secret_key=SECRET_KEY)

    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("re-encrypted 1 integration(s)")
    assert again.stdout.startswith("re-encrypted 0 integration(s)")
    assert without_old.returncode == 0
    assert "cannot be decrypted" in with_old_only.api.get("/api/integrations").json()[0]["error"]
    under_new = start_host(database=database, secret_key=new_key)
    assert "error" not in under_new.api.get("/api/integrations").json()[0]
    wrong = rotate(Fernet.generate_key().decode())
    assert wrong.returncode == 1
    assert "cannot be decrypted" in wrong.stderr


def test_postgresql_needs_a_configured_key(start_host: StartHost) -> None:
    with (
        postgres_schema() as url,
        pytest.raises(Exception, match="TICKETING_SECRET_KEY is required with PostgreSQL"),
    ):
        start_host(database=url, secret_key=None)


# -- rotation over PATCH ----------------------------------------------------------------------------


def test_patch_rotates_the_token_after_checking_it_and_keeps_queued_events(
    host: Host, emulator: Emulator, emulator_url: str, ticket: dict[str, Any]
) -> None:
    integration_id = ticket["integration_id"]
    path = f"/api/integrations/{integration_id}"

    oauth = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": DEFAULT_OAUTH_CLIENT_SECRET}
    host.runtime.stop()  # deliveries paused: the comment below waits in the outbox
    ok(host.api.post("/api/anomalies/12345/comments", json={"message": "queued before"}), 201)

    refused = host.api.patch(path, json={"api_access_token": "admin:wrong"})
    kept = ok(host.api.get(path))
    changed = host.api.patch(path, json={"api_access_token": "", "options": oauth})
    host.runtime.start()

    assert refused.status_code == 400, refused.text
    assert kept["connected"] is True
    assert changed.status_code == 200, changed.text
    sys_id = ticket["ticket"]["ticket_id"]
    wait_until(lambda: "queued before" in " ".join(work_notes(emulator, sys_id)))
    assert emulator.oauth_stats()["oauth_token_requests"]["client_credentials"] == 1
    assert ok(host.api.get("/api/anomalies/12345/ticket-links"))[0]["ticket_id"] == sys_id


def test_moving_to_another_host_needs_the_credentials_again(
    host: Host, emulator: Emulator, emulator_url: str
) -> None:
    oauth = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": DEFAULT_OAUTH_CLIENT_SECRET}
    created = ok(
        host.api.post("/api/integrations", json=integration_body(emulator_url, options=oauth)),
        201,
    )
    path, elsewhere = (
        f"/api/integrations/{created['id']}",
        emulator_url.replace("127.0.0.1", "localhost"),
    )
    sent_before = len(emulator.requests)

    bare = host.api.patch(path, json={"api_url": elsewhere})
    token_only = host.api.patch(path, json={"api_url": elsewhere, "api_access_token": ADMIN_TOKEN})
    sent_when_refused = len(emulator.requests)
    whole = host.api.patch(
        path, json={"api_url": elsewhere, "api_access_token": ADMIN_TOKEN, "options": oauth}
    )

    assert bare.status_code == 422
    assert "needs its credentials again (api_access_token, options)" in bare.json()["detail"]
    assert token_only.status_code == 422
    assert "(options)" in token_only.json()["detail"]
    assert sent_when_refused == sent_before  # nothing went anywhere
    assert whole.status_code == 200, whole.text
    assert whole.json()["api_url"] == elsewhere


def test_a_database_whose_key_file_is_missing_gets_no_new_key(
    start_host: StartHost, emulator_url: str, tmp_path: Path
) -> None:
    database = tmp_path / "restored.db"
    first = start_host(database=str(database), secret_key=None)
    create_integration(first, emulator_url)
    first.runtime.stop()
    key_file = Path(f"{database}.key")
    key_file.unlink()  # a restore without it

    with pytest.raises(Exception, match="holds credentials, but not its key file"):
        start_host(database=str(database), secret_key=None)

    assert not key_file.exists()


def test_patch_checks_the_address_rule(start_host: StartHost, emulator_url: str) -> None:
    lab = start_host()
    integration = create_integration(lab, emulator_url)
    guarded = start_host(allow_private_hosts=False)  # the same database

    response = guarded.api.patch(
        f"/api/integrations/{integration['id']}",
        json={"api_url": "http://169.254.169.254", "api_access_token": ADMIN_TOKEN},
    )

    assert response.status_code == 422
    assert "link-local" in response.json()["detail"]
    assert ok(lab.api.get(f"/api/integrations/{integration['id']}"))["api_url"] == emulator_url


# -- OAuth ----------------------------------------------------------------------------------------


def test_an_oauth_integration_uses_bearer_tokens_and_renews_them(
    host: Host, emulator: Emulator, emulator_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    oauth = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": DEFAULT_OAUTH_CLIENT_SECRET}
    created = ok(
        host.api.post("/api/integrations", json=integration_body(emulator_url, options=oauth)), 201
    )
    ok(host.api.post("/api/anomalies", json={"id": 9, "type": "Record", "status": "Active"}), 201)
    ticket = ok(host.api.post("/api/integrations/ticketing/anomalies/9/tickets", json={
        "title": "t", "description": "d", "priority": "3", "urgency": "3", "impact": "3",
        "integration_id": created["id"],
    }))["ticket"]  # fmt: skip
    emulator.expire_tokens()
    ok(host.api.post("/api/anomalies/9/comments", json={"message": "after expiry"}), 201)

    wait_until(lambda: "after expiry" in " ".join(work_notes(emulator, ticket["ticket_id"])))
    grants = emulator.oauth_stats()["oauth_token_requests"]
    assert grants["password"] == 1
    assert grants["refresh_token"] == 1
    assert [r["status"] for r in emulator.requests if r["status"] == 401] == [401]  # renewed once
    assert DEFAULT_OAUTH_CLIENT_SECRET not in caplog.text
    assert PASSWORD not in caplog.text
    assert DEFAULT_OAUTH_CLIENT_SECRET not in str(host.api.get("/api/integrations").json())


def test_a_rejected_oauth_client_is_400_naming_oauth(host: Host, emulator_url: str) -> None:
    oauth = {"client_id": DEFAULT_OAUTH_CLIENT_ID, "client_secret": "not-the-secret"}

    response = host.api.post(
        "/api/integrations", json=integration_body(emulator_url, options=oauth)
    )

    assert response.status_code == 400
    assert "OAuth token endpoint refused client 'emulator-client'" in response.json()["detail"]
    assert "not-the-secret" not in response.text
    assert host.api.get("/api/integrations").json() == []


# -- bounded request bodies -------------------------------------------------------------------------


def test_a_large_body_is_413_before_the_token_is_checked(host: Host) -> None:
    unauthenticated = {"Authorization": "Bearer wrong"}

    declared = host.api.post("/api/anomalies", content=b"x" * 2_000_000, headers=unauthenticated)
    chunked = host.api.post(
        "/api/anomalies", content=iter([b"y" * 100_000] * 20), headers=unauthenticated
    )

    assert declared.status_code == chunked.status_code == 413
    assert declared.json() == {"detail": "the request body is larger than 1048576 bytes"}


def test_a_long_comment_is_422_and_nothing_is_queued(host: Host, ticket: dict[str, Any]) -> None:
    response = host.api.post("/api/anomalies/12345/comments", json={"message": "m" * 100_001})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "message"]
    assert host.runtime.service.outbox.counts()["pending"] == 0


def test_the_api_token_stays_required(host: Host) -> None:
    assert host.api.get("/api/integrations", headers={"Authorization": ""}).status_code == 401
    assert API_TOKEN  # the fixture's token is what the other calls send


def test_keys_rotate_re_encrypts_the_notification_secrets_too(
    start_host: StartHost, emulator: Emulator, emulator_url: str, tmp_path: Path
) -> None:
    database = str(tmp_path / "rotate.db")
    first = start_host(database=database)
    integration_id = create_integration(first, emulator_url)["id"]
    path = f"/api/integrations/{integration_id}/inbound"
    secret = first.api.put(path, json={"enabled": True}).json()["secret"]
    new_key = Fernet.generate_key().decode()
    environment = {"PATH": ""}

    rotated = subprocess.run(
        [TICKETING, "keys", "rotate", "--database", database],
        env=environment | {"TICKETING_SECRET_KEY": f"{new_key},{SECRET_KEY}"},
        capture_output=True, text=True,
    )  # fmt: skip
    under_new = start_host(database=database, secret_key=new_key)  # the old key dropped
    body = b'{"table": "incident"}'
    signed = sign(TICKETING_V1, secret, body, time.time())
    heard = httpx.post(
        f"{under_new.url}/api/inbound/{integration_id}", content=body, headers=signed
    )

    assert rotated.returncode == 0, rotated.stderr
    assert heard.status_code == 422  # past the signature: the secret was read under the new key
    assert under_new.api.post(f"{path}/secret").status_code == 200
