"""``ticketing serve`` and ``ticketing demo``, added to the ``ticketing`` command line by .plugin.

The ``ticketing`` command loads these on every start, so the host's heavy imports (FastAPI,
SQLAlchemy, uvicorn) happen only when one of them runs.
"""

from __future__ import annotations

import os

import click

TOKEN_VARIABLE = "TICKETING_API_TOKEN"  # noqa: S105 - a variable's name, not a secret


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--database",
    envvar="TICKETING_DATABASE",
    default="ticketing.db",
    show_default=True,
    help="SQLite file or postgresql:// URL.",
)
@click.option(
    "--public-url", help="Base URL of the anomaly pages tickets link to [http://HOST:PORT]."
)
@click.option(
    "--allow-http", is_flag=True, help="Allow plain http:// instance URLs (emulators, labs)."
)
@click.option(
    "--product", default="Qualytics", show_default=True, help="Name used in ticket texts."
)
def serve(
    host: str, port: int, database: str, public_url: str | None, allow_http: bool, product: str
) -> None:
    """Run the host API and its background sync. The API token comes from TICKETING_API_TOKEN."""
    import uvicorn

    from ticketing_core.store import OPEN_ERRORS, open_error

    from .app import create_app, runtime_of
    from .runtime import Settings

    settings = Settings(
        database=database,
        public_url=public_url or f"http://{host}:{port}",
        product=product,
        allow_http=allow_http,
        api_token=os.environ.get(TOKEN_VARIABLE) or None,
    )
    try:
        app = create_app(settings)
        generated = runtime_of(app).ensure_api_token()
    except OPEN_ERRORS as exc:
        raise click.ClickException(open_error(database, exc)) from None
    click.echo(token_notice(settings.api_token is not None, generated), err=True)
    uvicorn.run(app, host=host, port=port)


def token_notice(from_environment: bool, generated: str | None) -> str:
    """Where the API token comes from; a generated one is shown here and never again."""
    if from_environment:
        return f"API token: taken from {TOKEN_VARIABLE}"
    if generated is not None:
        return f"Generated API token (shown once, only its hash is stored): {generated}"
    return (
        "API token: the one generated earlier is in use (only its hash is stored; "
        f"set {TOKEN_VARIABLE} to use another)"
    )


@click.command()
def demo() -> None:
    """Run the whole integration offline against a local ServiceNow emulator, step by step."""
    from . import demo as flows

    flows.main()
