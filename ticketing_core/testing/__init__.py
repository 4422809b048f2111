"""The conformance kit: one test suite every provider must pass.

A provider author subclasses :class:`ProviderContract` in a test module and supplies two fixtures: the
provider's registered name, and a running fake of the service behind a :class:`FakeService` adapter::

    from ticketing_core.testing import ProviderContract

    class TestAcmeContract(ProviderContract):
        provider_name = "acme"
        distribution = "ticketing-acme"

        @pytest.fixture
        def service(self, acme_emulator):      # your fake, reset for each test
            return AcmeFake(acme_emulator)      # implements FakeService

Then ``pytest`` runs every check: discovery through the ``ticketing`` entry point, validate, search paging
(page/size, total, pages, stable order), get and find, create (with a key where the provider says it
supports keys: a create with a key that already made a ticket returns that ticket, ``key_is_fresh``
only skips the first lookup, and a create answered with a failure after the service committed it
still makes one ticket), update, work notes (found by key or by counting identical
texts, never by clock; one answered with a failure after commit is not sent again), status, the error
tree (bad credentials, not found, rate limited with a wait, unavailable, unreadable answers, and
error pages that are not JSON: a gateway's 502 HTML page, a web server's plain-text 404), and that
secrets stay out of reprs and errors. The kit talks to the provider only through
:mod:`ticketing_core.hookspecs`.

The non-JSON error pages come from a :class:`Gateway` the kit puts in front of the fake (a reverse
proxy, as a load balancer or an ingress would be), so a fake need not know how to send them.

A provider with inbound sync (``capabilities.inbound_sync``) subclasses :class:`InboundContract`
instead, whose ``service`` is an :class:`InboundFakeService` (it can also act as a person working
on tickets, and hand out the notifications the service sends): it adds checks of every
:class:`~ticketing_core.hookspecs.InboundProvider` method (changes listed after a cursor with
their revision and author, pages of changes at one time missing nothing and never looping,
batch reads in one request, journal entries with kinds and authors, states, notifications).

The repeat-safety checks fail one write *after* the service committed it, which the fake targets by
HTTP method: set ``create_method`` and ``note_method`` on the subclass if the provider's create or
``add_work_note`` is not a POST.
"""

from ticketing_core.testing.contract import (
    AFTER_COMMIT_FAULTS,
    DRAFT,
    FAULTS,
    GATEWAY_ERRORS,
    ProviderContract,
    note_count,
    raised_by,
    secret_part,
)
from ticketing_core.testing.fake_service import FakeService, InboundFakeService
from ticketing_core.testing.gateway import BAD_GATEWAY_PAGE, Gateway
from ticketing_core.testing.inbound_contract import CountingTransport, InboundContract, poll

__all__ = [
    "AFTER_COMMIT_FAULTS",
    "BAD_GATEWAY_PAGE",
    "DRAFT",
    "FAULTS",
    "GATEWAY_ERRORS",
    "CountingTransport",
    "FakeService",
    "Gateway",
    "InboundContract",
    "InboundFakeService",
    "ProviderContract",
    "note_count",
    "poll",
    "raised_by",
    "secret_part",
]
