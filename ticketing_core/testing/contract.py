"""The checks every provider must pass, as the test methods of :class:`ProviderContract`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

try:
    import pytest
except ModuleNotFoundError:  # pragma: no cover - the kit without its extra
    raise ModuleNotFoundError(
        "the conformance kit needs pytest: pip install 'ticketing-framework[testing]'",
        name="pytest",
    ) from None

from ticketing_core import errors
from ticketing_core.hookspecs import Provider
from ticketing_core.http.budget import call_budget
from ticketing_core.models import SearchQuery, TicketChanges, TicketDraft
from ticketing_core.plugins import PluginRegistry
from ticketing_core.testing.fake_service import FakeService
from ticketing_core.testing.gateway import BAD_GATEWAY_PAGE, Gateway

DRAFT = TicketDraft(
    title="Conformance: nulls in customer_email",
    description="150 null values detected in customer_email",
)


# (injected fault, error the provider must raise) -- the error tree every provider maps into.
FAULTS = [
    ("429", errors.RateLimited),
    ("503", errors.ProviderUnavailable),
    ("500", errors.ProviderUnavailable),
    ("html", errors.UnexpectedResponse),
]
# Faults that come after the service carried the write out: the write stands, its answer is lost.
AFTER_COMMIT_FAULTS = ["503_after_commit", "close_after_commit"]

# (status, content type, body, error the provider must raise): answers that come from something
# in front of the service, in no format of the service's own.
GATEWAY_ERRORS = [
    pytest.param(502, "text/html", BAD_GATEWAY_PAGE, errors.ProviderUnavailable, id="502-html"),
    pytest.param(404, "text/plain", "404 page not found\n", errors.NotFound, id="404-text"),
]


class ProviderContract:
    """Subclass with ``provider_name``, ``distribution`` and a ``service`` fixture."""

    provider_name: ClassVar[str]
    distribution: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    """Extra provider options the fake needs (e.g. a project key)."""
    create_method: ClassVar[str] = "POST"
    """The HTTP method of the request that makes a ticket, failed after commit by the kit."""
    note_method: ClassVar[str] = "POST"
    """The HTTP method of the request that adds a work note (a PATCH of a journal field, say)."""
    secret_options_example: ClassVar[dict[str, str]] = {}
    """Options to connect with when checking the secret ones stay hidden, if a secret option
    needs companions (ServiceNow's ``client_secret`` needs a ``client_id``); the kit sets every
    secret option to a value of its own."""

    @pytest.fixture
    def service(self) -> FakeService:
        raise NotImplementedError("the provider's test module provides the service fixture")

    @pytest.fixture
    def registry(self) -> PluginRegistry:
        registry = PluginRegistry()
        registry.load_entry_points()
        return registry

    @pytest.fixture
    def provider(self, registry: PluginRegistry, service: FakeService) -> Iterator[Provider]:
        provider = self.connect(registry, service, service.token)
        yield provider
        provider.close()

    @pytest.fixture
    def gateway(self, service: FakeService) -> Iterator[Gateway]:
        with Gateway(service.url) as gateway:
            yield gateway

    def connect(
        self,
        registry: PluginRegistry,
        service: FakeService,
        token: str,
        *,
        api_url: str | None = None,
        **options: Any,
    ) -> Provider:
        return registry.connect(
            self.provider_name,
            api_url=api_url or service.url,
            api_access_token=token,
            allow_http=True,
            **self.options,
            **options,
        )

    # -- discovery ----------------------------------------------------------------------------------

    def test_registered_through_its_entry_point(self, registry: PluginRegistry) -> None:
        infos = {info.name: info for info in registry.providers()}
        assert self.provider_name in infos, f"installed: {sorted(infos)}"
        assert infos[self.provider_name].distribution == self.distribution
        assert [f for f in registry.failures if f.name == self.provider_name] == []

    def test_provider_satisfies_the_protocol(self, provider: Provider) -> None:
        assert isinstance(provider, Provider)

    def test_factory_lists_its_options_and_unknown_ones_are_refused(
        self, registry: PluginRegistry, service: FakeService
    ) -> None:
        factory = registry.factory(self.provider_name)
        accepted = getattr(factory, "options", None)
        assert accepted is not None, "the factory must list its keyword options in `options`"
        assert set(self.options) <= set(accepted)
        capabilities = factory.capabilities  # type: ignore[attr-defined]
        assert set(capabilities.user_options) <= set(accepted)
        assert set(capabilities.secret_options) <= set(capabilities.user_options)
        assert "transport" in accepted, "hosts hold connections to their rules through `transport`"
        with pytest.raises(errors.InvalidInput, match="no option 'conformance_unknown'"):
            registry.connect(
                self.provider_name,
                api_url=service.url,
                api_access_token=service.token,
                allow_http=True,
                conformance_unknown=1,
            )

    def test_a_provider_is_a_context_manager_that_closes_it(
        self, registry: PluginRegistry, service: FakeService
    ) -> None:
        with self.connect(registry, service, service.token) as provider:
            provider.validate()
        with pytest.raises(Exception):  # noqa: B017, PT011 - any failure: it was closed
            provider.validate()

    # -- the operations ---------------------------------------------------------------------------

    def test_validate_accepts_good_credentials(self, provider: Provider) -> None:
        provider.validate()

    def test_create_then_get_and_find(self, provider: Provider) -> None:
        created = provider.create(DRAFT)

        assert created.title == DRAFT.title
        assert DRAFT.description in created.description
        assert created.id
        assert created.number
        assert created.status
        assert created.url
        assert provider.get(created.id) == created
        assert provider.find(created.number).id == created.id

    def test_create_with_a_used_key_returns_its_ticket(self, provider: Provider) -> None:
        if not provider.capabilities.idempotency_keys:
            pytest.skip("the provider declares no idempotency-key support")
        draft = TicketDraft(title="Conformance key used twice", description="one ticket")
        first = provider.create(draft, idempotency_key="conformance-key-1")
        again = provider.create(draft, idempotency_key="conformance-key-1")
        other = provider.create(draft, idempotency_key="conformance-key-2")

        assert again.id == first.id
        assert other.id != first.id
        found = provider.search(SearchQuery(text="Conformance key used twice"))
        assert sorted(t.id for t in found.items) == sorted({first.id, other.id})

    def test_a_fresh_key_makes_a_ticket_its_key_finds(self, provider: Provider) -> None:
        if not provider.capabilities.idempotency_keys:
            pytest.skip("the provider declares no idempotency-key support")
        # key_is_fresh only skips the first lookup: the key is stored as any key is.
        first = provider.create(DRAFT, idempotency_key="conformance-fresh-1", key_is_fresh=True)
        again = provider.create(DRAFT, idempotency_key="conformance-fresh-1")

        assert again.id == first.id

    @pytest.mark.parametrize("key_is_fresh", [False, True], ids=["key", "fresh-key"])
    @pytest.mark.parametrize("fault", AFTER_COMMIT_FAULTS)
    def test_keyed_create_failed_after_commit_makes_one_ticket(
        self, provider: Provider, service: FakeService, fault: str, key_is_fresh: bool
    ) -> None:
        if not provider.capabilities.idempotency_keys:
            pytest.skip("the provider declares no idempotency-key support")
        draft = TicketDraft(title="Conformance keyed create", description="answer lost")
        service.fail_next(fault, method=self.create_method)

        key = "conformance-lost-1"
        created = provider.create(draft, idempotency_key=key, key_is_fresh=key_is_fresh)
        again = provider.create(draft, idempotency_key=key)

        assert again.id == created.id
        found = provider.search(SearchQuery(text="Conformance keyed create"))
        assert [t.id for t in found.items] == [created.id]
        assert found.total == 1

    def test_update_changes_the_given_fields_only(self, provider: Provider) -> None:
        created = provider.create(DRAFT)

        updated = provider.update(created.id, TicketChanges(title="Conformance: renamed"))

        assert updated.title == "Conformance: renamed"
        assert updated.description == created.description
        assert provider.get(created.id).title == "Conformance: renamed"

    def test_work_note_reaches_the_ticket(self, provider: Provider, service: FakeService) -> None:
        created = provider.create(DRAFT)

        provider.add_work_note(created.id, "Conformance note", idempotency_key="conformance-note-1")

        assert service.notes(created.id)[-1].strip() == "Conformance note"
        assert provider.has_work_note(
            created.id, "Conformance note", idempotency_key="conformance-note-1", identical_before=0
        )
        assert not provider.has_work_note(
            created.id, "Another note", idempotency_key="conformance-note-2", identical_before=0
        )

    def test_identical_work_notes_are_told_apart(
        self, provider: Provider, service: FakeService
    ) -> None:
        created = provider.create(DRAFT)
        for key in ("conformance-same-1", "conformance-same-2"):
            provider.add_work_note(created.id, "Same note", idempotency_key=key)

        assert note_count(service, created.id, "Same note") == 2
        # The second note, one identical note added before it: landed.
        assert provider.has_work_note(
            created.id, "Same note", idempotency_key="conformance-same-2", identical_before=1
        )
        # A third, two added before it: not on the ticket yet.
        assert not provider.has_work_note(
            created.id, "Same note", idempotency_key="conformance-same-3", identical_before=2
        )

    @pytest.mark.parametrize("fault", AFTER_COMMIT_FAULTS)
    def test_work_note_failed_after_commit_is_sent_once(
        self, provider: Provider, service: FakeService, fault: str
    ) -> None:
        created = provider.create(DRAFT)
        service.fail_next(fault, method=self.note_method)

        with pytest.raises(errors.ProviderError) as caught:
            provider.add_work_note(created.id, "Lost answer", idempotency_key="conformance-lost-2")

        assert caught.value.may_have_landed
        # The provider must not send it again: the caller asks has_work_note first.
        assert note_count(service, created.id, "Lost answer") == 1
        assert provider.has_work_note(
            created.id, "Lost answer", idempotency_key="conformance-lost-2", identical_before=0
        )

    def test_status_matches_the_ticket(self, provider: Provider) -> None:
        created = provider.create(DRAFT)

        status = provider.get_status(created.id)

        assert status.label == created.status
        assert status.code

    def test_search_pages_are_complete_stable_and_disjoint(
        self, provider: Provider, service: FakeService
    ) -> None:
        service.seed(25, "conformance paging")
        service.seed(3, "something else")

        pages = [
            provider.search(SearchQuery(text="conformance paging", page=n, size=10))
            for n in (1, 2, 3)
        ]
        again = provider.search(SearchQuery(text="conformance paging", page=1, size=10))

        assert [p.total for p in pages] == [25, 25, 25]
        assert [len(p.items) for p in pages] == [10, 10, 5]
        assert [(p.page, p.size, p.pages) for p in pages] == [(1, 10, 3), (2, 10, 3), (3, 10, 3)]
        ids = [t.id for p in pages for t in p.items]
        assert len(set(ids)) == 25
        assert [t.id for t in again.items] == [t.id for t in pages[0].items]

    def test_search_beyond_the_last_page_is_empty(
        self, provider: Provider, service: FakeService
    ) -> None:
        service.seed(3, "conformance short")

        page = provider.search(SearchQuery(text="conformance short", page=5, size=10))

        assert (page.items, page.total) == ((), 3)

    # -- the error tree ---------------------------------------------------------------------------

    def test_wrong_credentials_fail_authentication_without_the_secret(
        self, registry: PluginRegistry, service: FakeService
    ) -> None:
        provider = self.connect(registry, service, service.wrong_token)

        with pytest.raises(errors.AuthenticationFailed) as caught:
            provider.validate()

        secret = secret_part(service.wrong_token)
        assert secret not in str(caught.value)
        assert secret not in repr(provider)
        assert secret_part(service.token) not in repr(
            self.connect(registry, service, service.token)
        )

    def test_secret_options_stay_out_of_reprs_and_errors(
        self, registry: PluginRegistry, service: FakeService
    ) -> None:
        secret_names = registry.factory(self.provider_name).capabilities.secret_options  # type: ignore[attr-defined]
        secret = "kit-secret-option-value-7f3a"  # noqa: S105 - a marker to look for
        options = self.secret_options_example | dict.fromkeys(secret_names, secret)
        provider = registry.connect(
            self.provider_name,
            api_url=service.url,
            api_access_token=service.wrong_token,
            allow_http=True,
            **self.options,
            **options,
        )

        with pytest.raises(errors.TicketingError) as caught:
            provider.validate()  # refused: a secret the service does not know

        assert secret not in repr(provider)
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)
        provider.close()

    def test_missing_ticket_is_not_found(self, provider: Provider) -> None:
        created = provider.create(DRAFT)
        missing = created.id[:-1] + ("0" if created.id[-1] != "0" else "1")

        with pytest.raises(errors.NotFound):
            provider.get(missing)
        with pytest.raises(errors.NotFound):
            provider.find("NOPE-404404")

    def test_rate_limit_is_waited_out(self, provider: Provider, service: FakeService) -> None:
        service.fail_next("429", count=1, retry_after=1)

        started = time.monotonic()
        provider.validate()

        assert time.monotonic() - started >= 1.0

    @pytest.mark.parametrize(("fault", "error"), FAULTS)
    def test_persistent_faults_map_to_the_error_tree(
        self, provider: Provider, service: FakeService, fault: str, error: type[Exception]
    ) -> None:
        service.fail_next(fault, count=20, retry_after=0)

        with pytest.raises(error) as caught:
            provider.validate()

        if isinstance(caught.value, errors.RateLimited):
            assert caught.value.retry_after == 0

    @pytest.mark.parametrize(("status", "content_type", "body", "error"), GATEWAY_ERRORS)
    def test_error_pages_that_are_not_json_map_to_the_error_tree(
        self,
        registry: PluginRegistry,
        service: FakeService,
        gateway: Gateway,
        status: int,
        content_type: str,
        body: str,
        error: type[errors.ProviderError],
    ) -> None:
        provider = self.connect(registry, service, service.token, api_url=gateway.url)
        try:
            created = provider.create(DRAFT)  # through the gateway, which passes it on
            calls: dict[str, Callable[[], object]] = {
                "get": lambda: provider.get(created.id),
                "get_status": lambda: provider.get_status(created.id),
                "add_work_note": lambda: provider.add_work_note(
                    created.id, "Behind a gateway", idempotency_key="conformance-gateway-1"
                ),
            }
            if status >= 500:
                calls["validate"] = provider.validate
                calls["search"] = lambda: provider.search(SearchQuery(text="Conformance"))
            for operation, call in calls.items():
                gateway.fail_next(status, body, content_type=content_type, count=100)
                # One attempt per request: that retries end in the same error is checked above.
                with call_budget(attempts=1):
                    raised = raised_by(call)
                assert isinstance(raised, error), (
                    f"{operation}() answered HTTP {status} {content_type} must raise "
                    f"{error.__name__}, not {raised!r}"
                )
                assert "<title>" not in str(raised), f"{operation}() quoted the page: {raised}"
                if operation == "add_work_note" and status >= 500:
                    assert raised.may_have_landed, "a gateway's 5xx page may come after a write"
                gateway.clear()
        finally:
            provider.close()


def raised_by(call: Callable[[], object]) -> BaseException | None:
    """The exception ``call`` raised, or None."""
    try:
        call()
    except Exception as exc:
        return exc
    return None


def secret_part(token: str) -> str:
    """The part of a token that must never be shown (the password of ``user:password``)."""
    return token.partition(":")[2] or token


def note_count(service: FakeService, ticket_id: str, text: str) -> int:
    """How many of the ticket's notes, as the service stores them, have exactly ``text``."""
    return [note.strip() for note in service.notes(ticket_id)].count(text)
