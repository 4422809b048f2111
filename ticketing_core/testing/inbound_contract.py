"""The conformance kit's checks of inbound sync, for providers whose capabilities say so."""

from __future__ import annotations

import json
from typing import ClassVar

import httpx
import pytest

from ticketing_core import errors
from ticketing_core.hookspecs import InboundProvider, Provider
from ticketing_core.models import Ticket, TicketChanges
from ticketing_core.notifications import SCHEMES
from ticketing_core.plugins import PluginRegistry
from ticketing_core.testing.contract import DRAFT, ProviderContract
from ticketing_core.testing.fake_service import InboundFakeService


class InboundContract(ProviderContract):
    """The checks of :class:`ProviderContract` plus those of inbound sync, for a provider whose
    ``capabilities.inbound_sync`` is True; its ``service`` fixture returns an
    :class:`InboundFakeService`. A provider without inbound sync subclasses
    :class:`ProviderContract` alone, so no check of these is skipped or hidden.
    """

    poll_overlap: ClassVar[float] = 1.0
    """The overlap the kit polls ``changed_since`` with: the service's time resolution, so that
    a change in the cursor's own second is listed."""

    @pytest.fixture
    def inbound(self, provider: Provider) -> InboundProvider:
        assert isinstance(provider, InboundProvider)
        return provider

    def test_it_declares_inbound_sync(self, provider: Provider) -> None:
        assert provider.capabilities.inbound_sync
        assert isinstance(provider, InboundProvider)
        assert provider.capabilities.notification_signature in SCHEMES

    def test_an_agents_change_is_listed_after_the_cursor(
        self, inbound: InboundProvider, service: InboundFakeService
    ) -> None:
        created = inbound.create(DRAFT)
        cursor = inbound.changed_since(None).cursor
        target = next(s for s in inbound.states() if s.label != created.status)

        service.act_as_agent(created.id, status=target.code)
        listed, _ = poll(inbound, cursor, overlap=self.poll_overlap)

        changed = listed[created.id]
        assert created.revision is not None
        assert changed.revision is not None
        assert changed.revision > created.revision
        assert changed.updated_by == service.agent
        assert changed.status == target.label

    def test_own_changes_name_the_own_user(self, inbound: InboundProvider) -> None:
        own = inbound.own_user()
        created = inbound.create(DRAFT)
        updated = inbound.update(created.id, TicketChanges(title="Conformance: own change"))

        assert own
        assert (created.updated_by, updated.updated_by) == (own, own)
        assert inbound.get(created.id).updated_by == own

    def test_a_revision_a_write_returns_is_the_tickets_after_it(
        self, inbound: InboundProvider
    ) -> None:
        """Two-way sync knows a revision a write returned as its own: it must be exactly the
        ticket's revision after that write."""
        created = inbound.create(DRAFT)
        noted = inbound.add_work_note(created.id, "Conformance: a note's revision")
        read = inbound.get(created.id)

        assert noted is None or noted == read.revision
        assert read.revision is not None
        assert created.revision is not None
        assert read.revision > created.revision
        updated = inbound.update(created.id, TicketChanges(title="Conformance: revision"))
        assert updated.revision == inbound.get(created.id).revision
        assert updated.revision is not None
        assert updated.revision > read.revision

    def test_pages_of_changes_at_one_time_miss_nothing_and_never_loop(
        self, inbound: InboundProvider, service: InboundFakeService
    ) -> None:
        cursor = inbound.changed_since(None).cursor
        service.seed_at_one_time(250, "conformance one time")

        listed, pages = poll(inbound, cursor, overlap=self.poll_overlap, limit=100)

        ours = [t for t in listed.values() if "conformance one time" in t.title]
        assert len(ours) == 250
        assert pages <= 250 // 100 + 2

    def test_get_many_reads_tickets_in_one_request(
        self, registry: PluginRegistry, service: InboundFakeService
    ) -> None:
        counting = CountingTransport(httpx.HTTPTransport())
        with self.connect(registry, service, service.token, transport=counting) as provider:
            assert isinstance(provider, InboundProvider)
            created = [provider.create(DRAFT) for _ in range(3)]
            missing = created[0].id[:-1] + ("0" if created[0].id[-1] != "0" else "1")
            before = counting.requests

            found = provider.get_many([t.id for t in created] + [missing])

            assert counting.requests - before == 1
            assert sorted(t.id for t in found) == sorted(t.id for t in created)

    def test_journal_entries_have_kinds_and_authors(
        self, inbound: InboundProvider, service: InboundFakeService
    ) -> None:
        created = inbound.create(DRAFT)
        inbound.add_work_note(created.id, "Conformance own note")
        public = inbound.capabilities.public_comments
        service.act_as_agent(
            created.id,
            note="Conformance agent note",
            comment="Conformance agent comment" if public else None,
        )

        entries = inbound.journal_since(created.id, None)

        expected = {
            ("work_note", "Conformance own note", inbound.own_user()),
            ("work_note", "Conformance agent note", service.agent),
        } | ({("comment", "Conformance agent comment", service.agent)} if public else set())
        assert {(e.kind, e.text.strip(), e.author) for e in entries} == expected
        assert {e.ticket_id for e in entries} == {created.id}
        assert [e.created_at for e in entries] == sorted(e.created_at for e in entries)
        newest = entries[-1].created_at
        later = inbound.journal_since(created.id, newest)
        assert {e.id for e in later} == {e.id for e in entries if e.created_at >= newest}

    def test_states_hold_every_tickets_status(self, inbound: InboundProvider) -> None:
        created = inbound.create(DRAFT)

        states = inbound.states()

        assert states
        assert len({s.code for s in states}) == len(states)
        assert created.status in {s.label for s in states}
        assert inbound.get_status(created.id) in states

    def test_a_notification_names_its_ticket(
        self, inbound: InboundProvider, service: InboundFakeService
    ) -> None:
        created = inbound.create(DRAFT)
        service.act_as_agent(created.id, note="Conformance notified note")

        notice = inbound.read_notification(json.loads(service.notification_for(created.id)))

        assert notice.ticket_id == created.id
        assert notice.updated_by in (None, service.agent)
        assert notice.revision in (None, inbound.get(created.id).revision)
        with pytest.raises(errors.InvalidInput):
            inbound.read_notification(json.loads(service.notification_elsewhere(created.id)))

    def test_notification_setup_names_the_endpoint(self, inbound: InboundProvider) -> None:
        endpoint = "https://conformance.example/api/inbound/1"

        text = inbound.notification_setup(endpoint, "conformance-secret")

        assert endpoint in text


def poll(
    provider: InboundProvider, cursor: str, *, overlap: float, limit: int = 100
) -> tuple[dict[str, Ticket], int]:
    """The tickets one poll lists from ``cursor`` (the last listing of each), and its pages;
    ``overlap`` on the first page only, as a host polls. Fails if the pages never end."""
    listed: dict[str, Ticket] = {}
    pages, more = 0, True
    while more:
        page = provider.changed_since(cursor, overlap=overlap if not pages else 0.0, limit=limit)
        listed.update((ticket.id, ticket) for ticket in page.tickets)
        cursor, more, pages = page.cursor, page.more, pages + 1
        assert pages <= 1000, "changed_since keeps saying there is more: the cursor loops"
    return listed, pages


class CountingTransport(httpx.BaseTransport):
    """An httpx transport that counts the requests it passes on."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
