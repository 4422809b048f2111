"""How ServiceNow words its answers: the success envelope and the error envelope.

All requests go through :class:`ticketing_core.http.ServiceClient` with :data:`DIALECT`.
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
    """``message: detail`` from ServiceNow's error envelope, or the HTTP status line.

    A JSON body that cannot be decoded raises :class:`~ticketing_core.http.UndecodableBody`,
    which :func:`~ticketing_core.http.raise_for_status` reports beside the status.
    """
    reason = status_line(response)
    if not is_json(response):
        return reason
    body = json_body(response, "ServiceNow")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return reason
    parts = (error.get("message"), error.get("detail"))
    text = ": ".join(part.strip() for part in parts if isinstance(part, str) and part.strip())
    return f"{text} ({reason})" if text else reason
