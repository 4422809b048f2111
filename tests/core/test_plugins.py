"""Plugin discovery and registration, through real entry points and registered objects."""

import re
import subprocess
import sys
import types
from importlib.metadata import EntryPoint

import click
import pytest

from ticketing_core import hookimpl
from ticketing_core.errors import InvalidInput, PluginError
from ticketing_core.plugins import PluginRegistry, check_api_url
from ticketing_servicenow import ServiceNowProvider

URL = "https://acme.service-now.com"


def plugin_registering(*names: str) -> types.SimpleNamespace:
    @hookimpl
    def register_providers(register):  # type: ignore[no-untyped-def]
        for name in names:
            register(name, ServiceNowProvider)

    return types.SimpleNamespace(register_providers=register_providers)


def test_servicenow_is_found_through_its_entry_point() -> None:
    registry = PluginRegistry()
    registry.load_entry_points()

    infos = {info.name: info for info in registry.providers()}

    assert infos["servicenow"].distribution == "ticketing-framework"
    assert infos["servicenow"].version
    assert registry.factory("servicenow") is ServiceNowProvider
    assert registry.failures == []


def test_a_broken_plugin_is_reported_and_the_rest_still_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = EntryPoint("broken", "no_such_module_anywhere", "ticketing")
    real = list(__import__("importlib.metadata").metadata.entry_points(group="ticketing"))
    monkeypatch.setattr("ticketing_core.plugins.entry_points", lambda group: [broken, *real])
    registry = PluginRegistry()

    registry.load_entry_points()

    assert [f.name for f in registry.failures] == ["broken"]
    assert "ModuleNotFoundError" in registry.failures[0].error
    assert "servicenow" in [info.name for info in registry.providers()]


def test_a_taken_name_is_reported_and_the_first_kept() -> None:
    registry = PluginRegistry()
    registry.register(plugin_registering("acme"), "first", ("first-dist", "1.0"))
    registry.register(plugin_registering("acme"), "second", ("second-dist", "2.0"))

    infos = registry.providers()

    assert len(infos) == 1
    assert len(registry.failures) == 1
    assert "already registered" in registry.failures[0].error


def test_unknown_provider_lists_what_is_installed() -> None:
    registry = PluginRegistry()
    registry.register(plugin_registering("acme"), "acme-plugin", ("acme", "1.0"))

    with pytest.raises(PluginError, match=r"no ticketing provider named 'jira'.*installed: acme"):
        registry.factory("jira")


def test_check_pending_catches_misspelled_hooks() -> None:
    @hookimpl
    def register_provider(register):  # type: ignore[no-untyped-def]  # missing "s"
        pass

    registry = PluginRegistry()
    registry.register(
        types.SimpleNamespace(register_provider=register_provider), "typo", ("t", "1")
    )

    with pytest.raises(PluginError, match="register_provider"):
        registry.check_pending()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://x.example", "refusing plain-HTTP"),
        ("x.service-now.com", "absolute https:// URL"),
        ("https://admin:pw@x.example", "must not contain credentials"),
        ("http://[::1", "absolute https:// URL"),
        ("https://x.example:abc", "valid port"),
        ("ftp://bob:hunter2@x.example", "absolute https:// URL"),
    ],
)
def test_api_urls_are_checked(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        check_api_url(url, allow_http=False)

    assert "hunter2" not in str(caught.value)


def test_plain_http_is_allowed_on_request_and_trailing_slash_dropped() -> None:
    assert check_api_url("http://127.0.0.1:8080/", allow_http=True) == "http://127.0.0.1:8080"


def test_load_plugins_variable_restricts_loading() -> None:
    code = "import ticketing_core; print([p.name for p in ticketing_core.providers()])"
    env = {"TICKETING_LOAD_PLUGINS": "nothing-by-this-name", "PATH": ""}

    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_hook_register_providers() -> None:
    registry = PluginRegistry()
    registry.register(plugin_registering("one", "two"), "multi", ("multi-dist", "3.1"))

    assert [(p.name, p.distribution, p.version) for p in registry.providers()] == [
        ("one", "multi-dist", "3.1"),
        ("two", "multi-dist", "3.1"),
    ]
    assert registry.factory("two") is ServiceNowProvider


def test_hook_register_sync_policies() -> None:
    @hookimpl
    def register_sync_policies(register):  # type: ignore[no-untyped-def]
        register(types.SimpleNamespace(name="quiet", on_status_change=None, on_comment=None))

    registry = PluginRegistry()
    registry.register(
        types.SimpleNamespace(register_sync_policies=register_sync_policies), "quiet", ("q", "1")
    )

    assert registry.policy_names() == ["quiet", "state-mapping", "work-notes"]
    assert registry.policy("work-notes").name == "work-notes"
    assert registry.policy("quiet").name == "quiet"


@pytest.mark.parametrize("token", ["", "MySecretBearer ", "user:pass\nword"])
def test_malformed_tokens_are_refused_without_being_echoed(token: str) -> None:
    from ticketing_core.http import auth_from_token

    with pytest.raises(InvalidInput, match="must not be empty or contain spaces") as caught:
        auth_from_token(token)

    assert token.strip() == "" or token.strip() not in str(caught.value)


def test_an_unknown_provider_option_names_the_allowed_ones() -> None:
    registry = PluginRegistry()
    registry.load_entry_points(["servicenow"])

    with pytest.raises(InvalidInput) as refused:
        registry.connect("servicenow", api_url=URL, api_access_token="a:b", projekt="DQ")

    assert str(refused.value) == (
        "servicenow has no option 'projekt'; its options are client_id, client_secret, "
        "close_code, deadline, max_attempts, max_response_bytes, max_retry_wait, timeout, transport"
    )


def test_a_connected_provider_is_a_context_manager_that_closes_it() -> None:
    registry = PluginRegistry()
    registry.load_entry_points(["servicenow"])

    with registry.connect("servicenow", api_url=URL, api_access_token="a:b") as provider:
        assert isinstance(provider, ServiceNowProvider)

    with pytest.raises(RuntimeError, match="client has been closed"):
        provider.validate()


def test_hook_register_commands() -> None:

    @click.command()
    def hello() -> None:
        click.echo("hello")

    @hookimpl
    def adds(cli: click.Group) -> None:
        cli.add_command(hello)

    @hookimpl
    def breaks(cli: click.Group) -> None:
        raise RuntimeError("no commands today")

    registry = PluginRegistry()
    registry.register(types.SimpleNamespace(register_commands=adds), "greeter", ("g", "1"))
    registry.register(types.SimpleNamespace(register_commands=breaks), "broken", ("b", "1"))
    group = click.Group("ticketing")

    registry.add_commands(group)

    assert list(group.commands) == ["hello"]
    assert [(f.name, f.error) for f in registry.failures] == [
        ("broken", "register_commands raised RuntimeError: no commands today")
    ]


def test_the_host_adds_its_commands_through_the_hook() -> None:

    registry = PluginRegistry()
    registry.load_entry_points(["host"])
    group = click.Group("ticketing")

    registry.add_commands(group)

    assert sorted(group.commands) == [
        "demo",
        "inbound",
        "keys",
        "serve",
        "servicenow",
        "sync-log",
        "worker",
    ]
    assert registry.providers() == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"deadline": "abc"}, "option deadline must be a number of at least 0.001, not 'abc'"),
        ({"deadline": -1}, "option deadline must be a number"),
        ({"max_attempts": 0}, "option max_attempts must be a whole number of at least 1"),
        ({"timeout": "x"}, "option timeout must be a number"),
        ({"allow_http": "no"}, "allow_http must be True or False, not 'no'"),
    ],
)
def test_option_values_of_the_wrong_kind_are_refused_naming_the_option(
    options: dict[str, object], message: str
) -> None:
    registry = PluginRegistry()
    registry.load_entry_points(["servicenow"])

    with pytest.raises(InvalidInput, match=re.escape(message)):
        registry.connect("servicenow", api_url=URL, api_access_token="a:b", **options)  # type: ignore[arg-type]


def test_a_factory_without_an_options_list_is_checked_by_its_signature() -> None:
    def acme(*, api_url: str, api_access_token: str, project: str = "X") -> ServiceNowProvider:
        return ServiceNowProvider(api_url=api_url, api_access_token=api_access_token)

    @hookimpl
    def register_providers(register):  # type: ignore[no-untyped-def]
        register("acme", acme)

    registry = PluginRegistry()
    registry.register(
        types.SimpleNamespace(register_providers=register_providers), "acme", ("a", "1")
    )

    with pytest.raises(InvalidInput, match="acme has no option 'projekt'; its options are project"):
        registry.connect("acme", api_url=URL, api_access_token="a:b", projekt="Y")


def test_plugin_commands_are_added_when_asked_for_whatever_was_imported_first() -> None:
    # The host's commands import from ticketing_core.cli: importing it loads no plugin.
    code = (
        "import click, ticketing_host.plugin; from ticketing_core.cli import cli; "
        "print(' '.join(cli.list_commands(click.Context(cli))))"
    )

    listed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()

    assert {"serve", "worker", "demo", "outbox", "create"} <= set(listed)
