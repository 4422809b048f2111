"""The canonical JSON shapes (the seed's), produced and read with cattrs.

``converter`` turns canonical records into the exact shapes hosts expose::

    ticket: ticket_id, ticket_number, title, description, status, priority, urgency, impact,
            category, subcategory, created_at, updated_at, assigned_to, url
    page:   items, total, page, size, pages

Times are UTC, written ``YYYY-MM-DDTHH:MM:SS``. Reading our own input is strict (unknown keys are
errors); :func:`structure` reports every problem at once as one :class:`InvalidInput`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.v import format_exception

from ticketing_core.errors import InvalidInput
from ticketing_core.models import Page, Ticket

T = TypeVar("T")

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

converter = cattrs.Converter(forbid_extra_keys=True)


def format_time(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(TIME_FORMAT)


def parse_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


converter.register_unstructure_hook(datetime, format_time)
converter.register_structure_hook(datetime, lambda value, _: parse_time(value))

_TICKET_RENAMES = {"id": "ticket_id", "number": "ticket_number"}
_TICKET_OMITTED = ("assignment_group", "extras")
_SEED_TICKET_ORDER = (
    "ticket_id", "ticket_number", "title", "description", "status", "priority", "urgency", "impact",
    "category", "subcategory", "created_at", "updated_at", "assigned_to", "url",
)  # fmt: skip

_TICKET_OVERRIDES: dict[str, Any] = {
    **{name: override(rename=wire) for name, wire in _TICKET_RENAMES.items()},
    **{name: override(omit=True) for name in _TICKET_OMITTED},
}
_unstructure_ticket_fields = make_dict_unstructure_fn(Ticket, converter, **_TICKET_OVERRIDES)


def _unstructure_ticket(ticket: Ticket) -> dict[str, Any]:
    fields = _unstructure_ticket_fields(ticket)
    return {key: fields[key] for key in _SEED_TICKET_ORDER}


def _unstructure_page(page: Page) -> dict[str, Any]:
    return {
        "items": [_unstructure_ticket(t) for t in page.items],
        "total": page.total,
        "page": page.page,
        "size": page.size,
        "pages": page.pages,
    }


converter.register_unstructure_hook(Ticket, _unstructure_ticket)
converter.register_unstructure_hook(Page, _unstructure_page)
converter.register_structure_hook(
    Ticket,
    make_dict_structure_fn(Ticket, converter, _cattrs_forbid_extra_keys=True, **_TICKET_OVERRIDES),
)


def unstructure(record: Any) -> Any:
    """A canonical record (or list of them) as JSON-ready data in the seed's shape."""
    return converter.unstructure(record)


def structure(data: Any, cls: type[T]) -> T:
    """Read ``cls`` from JSON-ready data, strictly; all problems become one ``InvalidInput``."""
    try:
        return converter.structure(data, cls)
    except InvalidInput:
        raise
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise InvalidInput(_describe(exc)) from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, format_exception=_format_exception))
    return str(exc)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, InvalidInput):
        return str(exc)
    return format_exception(exc, type_)
