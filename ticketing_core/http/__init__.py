"""The HTTP stack providers talk through: one client per service (auth, retries in one place,
error mapping), OAuth, the network rules and the response limits.

Provider authors import from here; the modules behind it are the library's own layout:
``client`` (:class:`ServiceClient`, :func:`create_once`), ``budget`` (:func:`call_budget`),
``responses`` (reading answers), ``auth`` (credentials), ``oauth``, ``network`` (which addresses
calls may reach), ``limits`` (what an answer may cost) and ``pool`` (the transport under the
network rules).
"""

from ticketing_core.http.auth import auth_from_token, check_credential
from ticketing_core.http.budget import Budget, call_budget, current_budget
from ticketing_core.http.client import RETRYING_DEPRECATED, ServiceClient, create_once
from ticketing_core.http.network import BlockedAddress, NetworkPolicy
from ticketing_core.http.oauth import OAuthClient
from ticketing_core.http.responses import (
    ServiceDialect,
    UndecodableBody,
    content_type,
    is_json,
    json_body,
    raise_for_status,
    retry_after_seconds,
    status_line,
)

__all__ = [
    "RETRYING_DEPRECATED",
    "BlockedAddress",
    "Budget",
    "NetworkPolicy",
    "OAuthClient",
    "ServiceClient",
    "ServiceDialect",
    "UndecodableBody",
    "auth_from_token",
    "call_budget",
    "check_credential",
    "content_type",
    "create_once",
    "current_budget",
    "is_json",
    "json_body",
    "raise_for_status",
    "retry_after_seconds",
    "status_line",
]
