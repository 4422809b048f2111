"""How one host process runs: its settings, from the command line, the environment or a test."""

from __future__ import annotations

from urllib.parse import urlsplit

import attrs

from ticketing_core.http.budget import DEFAULT_DEADLINE
from ticketing_core.http.network import patterns
from ticketing_core.sync.settings import (
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_CONCURRENCY,
    DEFAULT_DELIVERY_DEADLINE,
    DEFAULT_DOUBT_SECONDS,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_POLL_INTERVAL,
    DeliverySettings,
)


def shown_url(url: str) -> str:
    """``url`` with any password masked, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


def _masked(url: str | None) -> str:
    return repr(url if url is None else shown_url(url))


@attrs.frozen
class Settings:
    """How one host process runs. ``database`` is a SQLite path or a ``postgresql://`` URL.

    With ``api_token`` set, it is the only token the API accepts; else the hashes stored in
    ``api_tokens`` are. Delivery's defaults and its timing rule are the library's
    (:mod:`ticketing_core.sync.settings`): settings that break the rule are refused here.
    """

    database: str = attrs.field(repr=_masked)
    public_url: str
    product: str = "Qualytics"
    allow_http: bool = False
    api_token: str | None = attrs.field(default=None, repr=False)
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    doubt_seconds: float = DEFAULT_DOUBT_SECONDS
    request_deadline: float = DEFAULT_DEADLINE
    request_lock_wait: float = 3.0
    """Seconds a request's transaction waits for a lock another process holds on the database
    (SQLite's busy timeout, PostgreSQL's lock_timeout) before the request is answered 503."""
    delivery_deadline: float = DEFAULT_DELIVERY_DEADLINE
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    poll_interval: float = DEFAULT_POLL_INTERVAL
    broker: str | None = attrs.field(default=None, repr=_masked)
    """A ``redis://`` or ``amqp://`` URL: deliveries go to ``ticketing worker`` processes."""
    queue: str = "ticketing"
    instance_concurrency: int = DEFAULT_CONCURRENCY
    """With a broker: most deliveries in flight to one integration's instance, fleet-wide."""
    relay_interval: float = 5.0
    metrics_port: int | None = None
    secret_key: str | None = attrs.field(default=None, repr=False)
    """TICKETING_SECRET_KEY: Fernet keys, comma-separated, the first encrypting (see keys.py)."""
    allow_private_hosts: bool = False
    """Let integrations reach loopback and private addresses (labs, local emulators)."""
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=patterns)
    """TICKETING_ALLOWED_HOSTS patterns an integration's host must match, when any are given."""

    def __attrs_post_init__(self) -> None:
        self.delivery  # noqa: B018 - checks the timing rule

    @property
    def delivery(self) -> DeliverySettings:
        """These settings' delivery part (retention keeps the library's default)."""
        shared = attrs.fields_dict(DeliverySettings).keys() & attrs.fields_dict(Settings).keys()
        return DeliverySettings(**{name: getattr(self, name) for name in shared})
