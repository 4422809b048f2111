"""What the kit needs from a provider's fake service; :class:`InboundFakeService` for the
inbound checks."""

from __future__ import annotations

from typing import Protocol


class FakeService(Protocol):
    """What the kit needs from a provider's fake service (an emulator), reset before each test."""

    url: str
    """Base URL to pass as ``api_url`` (plain HTTP is allowed for fakes)."""
    token: str
    """A valid ``api_access_token``."""
    wrong_token: str
    """A well-formed ``api_access_token`` the service rejects."""

    def seed(self, count: int, title: str) -> None:
        """Create ``count`` tickets whose title contains ``title``, directly in the service."""

    def fail_next(
        self,
        kind: str,
        *,
        count: int = 1,
        retry_after: float | None = None,
        method: str | None = None,
    ) -> None:
        """Make the next ``count`` requests (of HTTP ``method`` only, when given) fail.

        Kinds the kit uses: ``"429"``, ``"503"``, ``"500"`` and ``"html"`` answer without acting;
        ``"503_after_commit"`` carries the request out, then answers 503; ``"close_after_commit"``
        carries it out, then closes the connection without an answer.
        """

    def notes(self, ticket_id: str) -> list[str]:
        """Texts of the ticket's internal notes as the service stores them, oldest first."""


class InboundFakeService(FakeService, Protocol):
    """What the inbound checks (:class:`~ticketing_core.testing.InboundContract`) need besides:
    a person working on tickets in the service, and the notifications the service sends."""

    agent: str
    """The user name the service records for :meth:`act_as_agent`'s changes: a person, never
    the user the kit connects as."""

    def act_as_agent(
        self,
        ticket_id: str,
        *,
        status: str | None = None,
        note: str | None = None,
        comment: str | None = None,
    ) -> None:
        """As :attr:`agent`, directly in the service: move the ticket to ``status`` (a
        ``TicketStatus.code`` from the provider's ``states()``), add an internal ``note``
        (kind ``"work_note"``) and a public ``comment`` (kind ``"comment"``), each when given."""

    def seed_at_one_time(self, count: int, title: str) -> None:
        """Create ``count`` tickets whose title contains ``title``, all with one change time as
        the service records it (ServiceNow: the same second)."""

    def notification_for(self, ticket_id: str) -> bytes:
        """The raw body of the notification the service sends for the ticket's last change."""

    def notification_elsewhere(self, ticket_id: str) -> bytes:
        """That notification, but naming another table or project than the connection's."""
