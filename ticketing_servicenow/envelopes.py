"""How ServiceNow words its answers: the success envelope and the error envelope.

All requests go through :class:`ticketing_core.http.HttpTransport` with :data:`DIALECT`.
"""

from __future__ import annotations

from typing import Any

import httpx

from ticketing_core.errors import UnexpectedResponse
from ticketing_core.http import is_json, json_body, status_line


def result_of(response: httpx.Response) -> Any:
    """The ``result`` of ServiceNow's success envelope."""
    body = json_body(response, "ServiceNow")
    if not isinstance(body, dict) or "result" not in body:
        raise UnexpectedResponse("ServiceNow's response has no 'result' envelope")
    return body["result"]


def error_reason(response: httpx.Response) -> str:
    """``message: detail`` from ServiceNow's error envelope, or the HTTP status line."""
    reason = status_line(response)
    if not is_json(response):
        return reason
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return reason
    message = str(error.get("message") or "").strip()
    detail = str(error.get("detail") or "").strip()
    text = ": ".join(part for part in (message, detail) if part)
    return f"{text} ({reason})" if text else reason
