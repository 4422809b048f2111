"""What the kit needs from a provider's fake service."""

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
