"""Credentials that cannot travel as given (a NUL, CR, LF or other control character in a token,
a password or an OAuth client's id or secret) are refused as invalid input, naming the argument,
when a provider is built: before any request, whoever builds it (host, command line, Python)."""

from __future__ import annotations

import re

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ticketing_jira import JiraProvider

from ticketing_core.errors import InvalidInput
from ticketing_servicenow import ServiceNowProvider

URL = "https://acme.service-now.com"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
controls = st.characters(categories=["Cc"])
# Text that is not white space and has no control character: what a token may hold.
token_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zs", "Zl", "Zp"]).filter(
        lambda char: not char.isspace()
    ),
    max_size=40,
)


def with_a_control(before: str, control: str, after: str) -> str:
    return before + control + after


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"a request was sent: {request.method} {request.url}")


def refused_message(refused: pytest.ExceptionInfo[InvalidInput]) -> str:
    message = str(refused.value)
    assert not CONTROL.search(message), "the message must be one clean line"
    return message


@given(before=token_text, control=controls, after=token_text)
def test_a_token_with_a_control_character_is_refused_naming_it(
    before: str, control: str, after: str
) -> None:
    token = with_a_control(before, control, after)

    with pytest.raises(InvalidInput) as refused:
        ServiceNowProvider(
            api_url=URL, api_access_token=token, transport=httpx.MockTransport(never_called)
        )

    assert refused.value.field == "api_access_token"
    message = refused_message(refused)
    assert "the access token must not" in message


@pytest.mark.parametrize("control", ["\x00", "\x01", "\x1b", "\x7f", "\x9b"])
@pytest.mark.parametrize("shape", ["bearer-{}-token", "user:pass{}word", "{}user:password"])
def test_bearer_and_basic_credentials_alike(shape: str, control: str) -> None:
    token = shape.format(control)

    with pytest.raises(InvalidInput) as refused:
        ServiceNowProvider(api_url=URL, api_access_token=token)

    assert refused.value.field == "api_access_token"
    assert refused_message(refused) == (
        f"the access token must not contain control characters (NUL, CR, LF, ...): "
        f"found U+{ord(control):04X}"
    )


@given(before=token_text, control=controls, after=token_text)
def test_jira_refuses_them_too(before: str, control: str, after: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        JiraProvider(
            api_url="https://acme.atlassian.net",
            api_access_token=with_a_control(before, control, after),
        )

    assert refused.value.field == "api_access_token"


@pytest.mark.parametrize("option", ["client_id", "client_secret"])
@given(before=token_text, control=controls, after=token_text)
def test_oauth_client_credentials_with_a_control_character_are_refused(
    option: str, before: str, control: str, after: str
) -> None:
    oauth = {"client_id": "client", "client_secret": "secret"}
    oauth[option] = with_a_control(before, control, after)

    with pytest.raises(InvalidInput) as refused:
        ServiceNowProvider(api_url=URL, api_access_token="user:password", **oauth)

    assert refused.value.field == option
    assert f"the OAuth {option} must not contain control characters" in refused_message(refused)


@given(login=token_text, control=controls)
def test_an_oauth_login_with_a_control_character_is_refused(login: str, control: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        ServiceNowProvider(
            api_url=URL,
            api_access_token=f"user:{login}{control}",
            client_id="client",
            client_secret="secret",
        )

    assert refused.value.field == "api_access_token"


@given(token=token_text.filter(bool))
def test_tokens_without_control_characters_are_accepted(token: str) -> None:
    ServiceNowProvider(api_url=URL, api_access_token=token).close()
