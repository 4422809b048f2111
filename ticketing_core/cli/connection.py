"""The options every provider command shares, and the connection they make."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import click
import httpx

import ticketing_core
from ticketing_core import errors
from ticketing_core.cli.exit_codes import reported_errors
from ticketing_core.hookspecs import Provider
from ticketing_core.http.budget import current_budget
from ticketing_core.http.network import tls_context
from ticketing_core.plugins import default_registry

WAIT_NOTICE_AFTER = 3.0  # seconds without an answer before saying what we wait for
# The options giving the credentials a provider refuses by name (InvalidInput.field).
CREDENTIAL_OPTIONS = {
    "api_access_token": "--token",
    "client_id": "--oauth-client-id",
    "client_secret": "--oauth-client-secret",
}


def _remember(context: click.Context, parameter: click.Parameter, value: object) -> None:
    """Keep an option every command shares but none takes as an argument, for ``connected``."""
    if value is not None:
        context.meta[f"ticketing.{parameter.name}"] = value


def connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--provider/--url/--token/--allow-http/--json, read from TICKETING_* too."""
    options = [
        click.option("--provider", envvar="TICKETING_PROVIDER",
                     help="Provider name (default: the only installed one)."),
        click.option("--url", envvar="TICKETING_URL", required=True,
                     help="Instance base URL, e.g. https://acme.service-now.com."),
        click.option("--token", envvar="TICKETING_TOKEN",
                     help="Access token; for ServiceNow 'username:password' or a bearer token "
                          "(with --oauth-client-id: the user for the password grant, or none "
                          "for the client-credentials grant)."),
        click.option("--allow-http", is_flag=True, envvar="TICKETING_ALLOW_HTTP",
                     help="Allow a plain http:// URL (emulators, labs)."),
        click.option("--json", "as_json", is_flag=True, help="Print the canonical JSON shape."),
        click.option("--timeout", "deadline", type=click.FloatRange(min=0.1),
                     envvar="TICKETING_TIMEOUT", expose_value=False, callback=_remember,
                     help="Seconds one call may take, retries included [default: 20]."),
        click.option("--oauth-client-id", "client_id", envvar="TICKETING_OAUTH_CLIENT_ID",
                     expose_value=False, callback=_remember,
                     help="OAuth client (an application registered on the instance)."),
        click.option("--oauth-client-secret", "client_secret",
                     envvar="TICKETING_OAUTH_CLIENT_SECRET", expose_value=False,
                     callback=_remember, help="The OAuth client's secret."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


class WaitNotice(httpx.BaseTransport):
    """Says on stderr what a request waits for once it has waited ``after`` seconds, so a port
    that never answers is not a silent pause."""

    def __init__(self, inner: httpx.BaseTransport, after: float = WAIT_NOTICE_AFTER) -> None:
        self.inner, self.after = inner, after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        budget = current_budget()
        where = f"{request.url.host}:{request.url.port or request.url.scheme}"

        def tell() -> None:  # on the timer's thread, when it fires: the time left then
            limit = f" (giving up {budget.remaining():.0f} s from now)" if budget else ""
            click.echo(
                f"note: still waiting for {where} to answer {request.method}{limit}", err=True
            )

        notice = threading.Timer(self.after, tell)
        notice.daemon = True
        notice.start()
        try:
            return self.inner.handle_request(request)
        finally:
            notice.cancel()

    def close(self) -> None:
        self.inner.close()


@contextmanager
def connected(
    provider: str | None, url: str, token: str | None, allow_http: bool, **options: Any
) -> Iterator[Provider]:
    with reported_errors():
        if url.strip().lower().startswith("http://") and not allow_http:
            raise errors.InvalidInput(
                f"refusing plain-HTTP URL {url!r}: credentials would travel unencrypted; pass "
                "--allow-http (or set TICKETING_ALLOW_HTTP=1) for local emulators and labs"
            )
        name = provider or _only_provider()
        accepted = getattr(default_registry().factory(name), "options", ())
        if "transport" in accepted:
            options["transport"] = WaitNotice(httpx.HTTPTransport(verify=tls_context()))
        shared = click.get_current_context().meta
        if (deadline := shared.get("ticketing.deadline")) is not None and "deadline" in accepted:
            options["deadline"] = deadline
        options |= _oauth_options(name, accepted, shared)
        if token is None and "client_id" not in options:
            raise errors.InvalidInput("--token is required (or TICKETING_TOKEN)")
        try:
            client = ticketing_core.connect(
                name, api_url=url, api_access_token=token or "", allow_http=allow_http, **options
            )
        except errors.InvalidInput as refused:
            if (option := CREDENTIAL_OPTIONS.get(refused.field or "")) is None:
                raise
            raise errors.InvalidInput(f"{option}: {refused}", field=refused.field) from None
        try:
            yield client
        finally:
            client.close()


def _oauth_options(name: str, accepted: Sequence[str], shared: Mapping[str, Any]) -> dict[str, str]:
    given = {key: shared[f"ticketing.{key}"] for key in ("client_id", "client_secret")
             if f"ticketing.{key}" in shared}  # fmt: skip
    if not given:
        return {}
    if len(given) == 1:
        raise errors.InvalidInput("OAuth needs both --oauth-client-id and --oauth-client-secret")
    if "client_id" not in accepted:
        raise errors.InvalidInput(f"provider {name} takes no OAuth client: drop --oauth-client-id")
    return given


def _only_provider() -> str:
    names = [info.name for info in default_registry().providers()]
    if len(names) == 1:
        return names[0]
    if not names:
        raise errors.PluginError("no ticketing provider is installed")
    raise errors.PluginError(
        f"several providers are installed ({', '.join(names)}): pass --provider"
    )
