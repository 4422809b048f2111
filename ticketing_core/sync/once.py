"""Requests carried out once per key, the way Stripe treats idempotency keys.

The host's database serialises a keyed request *before* anything is sent to a provider: the first
caller claims the key (a lease with a fencing token, :mod:`ticketing_core.sync.lease`) and does
the work; concurrent callers with the
same key wait for its result and get that same result; a key reused for a different request (another
fingerprint) is a :class:`~ticketing_core.errors.Conflict`, never someone else's result. A claim whose
holder failed or died passes to the next caller with ``retrying=True``, so its work looks for what
the earlier attempt may have made before making it again; after a failure that may have landed, not
before ``doubt_seconds`` (the provider finishes or cancels a request by then), because a lookup made
while the first request is still running proves nothing.

Finished keys are kept for ``retention`` (default 7 days), then pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import sqlalchemy as sa

from ticketing_core.errors import Conflict, may_have_landed
from ticketing_core.http.budget import DEFAULT_DEADLINE
from ticketing_core.sync import lease
from ticketing_core.sync.schema import UtcDateTime, metadata
from ticketing_core.sync.settings import DEFAULT_DOUBT_SECONDS, DEFAULT_RETENTION

if TYPE_CHECKING:
    from ticketing_core.sync.database import Database

T = TypeVar("T")
RUNNING, OPEN, DONE = "running", "open", "done"

keyed_requests = sa.Table(
    "sync_keyed_requests",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claim_token", sa.String(32)),
    sa.Column("lease_until", UtcDateTime),
    # An earlier attempt may have reached the provider: the next one must look before acting.
    sa.Column("retrying", sa.Boolean, nullable=False, default=False),
    sa.Column("result", sa.JSON),
    sa.Column("created", UtcDateTime, nullable=False),
    sa.Column("finished", UtcDateTime),
)


@attrs.frozen
class _Claim:
    token: str | None = None  # set: this caller holds the key
    retrying: bool = False
    result: Mapping[str, Any] | None = None  # set: the key's work is done


class KeyedRequests:
    """Runs work at most once per key; safe across threads and processes sharing the database.

    ``lease_seconds`` must exceed the longest the work can take (an interactive call's deadline);
    callers that find the key busy wait up to ``wait_seconds`` for its result.
    """

    def __init__(
        self,
        database: Database,
        *,
        lease_seconds: float = 60.0,
        doubt_seconds: float = DEFAULT_DOUBT_SECONDS,
        wait_seconds: float = DEFAULT_DEADLINE,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self.database = database
        self.lease = timedelta(seconds=lease_seconds)
        self.doubt = timedelta(seconds=doubt_seconds)
        self.wait_seconds = wait_seconds
        self.retention = retention

    def run(
        self,
        key: str,
        fingerprint: str,
        work: Callable[[bool], T],
        *,
        record: Callable[[T, sa.Connection], Mapping[str, Any]],
    ) -> tuple[T | None, Mapping[str, Any]]:
        """``work(retrying)`` once for ``key``; ``record`` stores its outcome in the transaction
        that finishes the key and returns the result every caller gets.

        Returns the work's value (None for a caller that did not do the work) and the result.
        """
        deadline = time.monotonic() + self.wait_seconds
        while True:
            claim = self._claim(key, fingerprint)
            if claim.result is not None:
                return None, claim.result
            if claim.token is not None:
                return self._carry_out(key, claim, work, record)
            if time.monotonic() > deadline:
                raise Conflict(
                    "the same request is still being carried out, or an attempt of it may still "
                    "be landing at the provider: retry it in a minute"
                )
            time.sleep(0.05)

    def _carry_out(
        self,
        key: str,
        claim: _Claim,
        work: Callable[[bool], T],
        record: Callable[[T, sa.Connection], Mapping[str, Any]],
    ) -> tuple[T, Mapping[str, Any]]:
        try:
            value = work(claim.retrying)
        except BaseException as exc:
            self._release(key, claim, landed=may_have_landed(exc))
            raise
        with self.database.begin() as conn:
            result = dict(record(value, conn))
            finished = conn.execute(
                self._fenced(key, claim).values(
                    state=DONE,
                    result=result,
                    claim_token=None,
                    lease_until=None,
                    finished=self.database.now(conn),
                )
            ).rowcount
            if not finished:  # our lease ran out and another caller took over: it records
                raise Conflict("the request took longer than its lease: retry it to get its result")
        return value, result

    def _claim(self, key: str, fingerprint: str) -> _Claim:
        with self.database.begin() as conn:
            now = self.database.now(conn)
            row = (
                conn.execute(
                    sa.select(keyed_requests).where(keyed_requests.c.key == key).with_for_update()
                )
                .mappings()
                .first()
            )
            token = lease.new_token()
            if row is None:
                inserted = self._insert(conn, key, fingerprint, token, now)
                return _Claim(token=token) if inserted else _Claim()
            if row["fingerprint"] != fingerprint:
                raise Conflict(
                    "this idempotency key was used for a different request: "
                    "use a new key for a new request"
                )
            if row["state"] == DONE:
                return _Claim(result=row["result"])
            if row["state"] == RUNNING and row["lease_until"] > now:
                return _Claim()  # another caller is at it
            # Open (its holder failed) or its lease ran out (its holder died mid-call).
            conn.execute(
                keyed_requests.update()
                .where(keyed_requests.c.key == key)
                .values(state=RUNNING, claim_token=token, lease_until=now + self.lease)
            )
            return _Claim(token=token, retrying=row["retrying"] or row["state"] == RUNNING)

    def _insert(
        self, conn: sa.Connection, key: str, fingerprint: str, token: str, now: Any
    ) -> bool:
        try:
            with conn.begin_nested():  # losing the race must not end the transaction
                conn.execute(
                    keyed_requests.insert().values(
                        key=key,
                        fingerprint=fingerprint,
                        state=RUNNING,
                        claim_token=token,
                        lease_until=now + self.lease,
                        retrying=False,
                        created=now,
                    )
                )
        except sa.exc.IntegrityError:
            return False  # a concurrent caller claimed it first: wait for its result
        return True

    def _release(self, key: str, claim: _Claim, *, landed: bool) -> None:
        """Let the next caller have the key; if the work may have landed, only after the doubt
        window (held as a lease nobody holds) and with ``retrying``."""
        with self.database.begin() as conn:
            if landed:
                values = {"state": RUNNING, "lease_until": self.database.now(conn) + self.doubt}
            else:
                values = {"state": OPEN, "lease_until": None}
            conn.execute(
                self._fenced(key, claim).values(
                    **values, claim_token=None, retrying=claim.retrying or landed
                )
            )

    @staticmethod
    def _fenced(key: str, claim: _Claim) -> sa.Update:
        return lease.fenced(keyed_requests, claim.token, keyed_requests.c.key == key)

    def prune(self) -> int:
        """Forget keys finished longer than ``retention`` ago; returns how many."""
        with self.database.begin() as conn:
            cutoff = self.database.now(conn) - self.retention
            return int(
                conn.execute(
                    keyed_requests.delete().where(
                        keyed_requests.c.state == DONE, keyed_requests.c.finished < cutoff
                    )
                ).rowcount
            )
