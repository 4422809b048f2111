"""Entry point of the Jira plugin: registers the provider, nothing else."""

from __future__ import annotations

from ticketing_core import hookimpl
from ticketing_core.hookspecs import RegisterProvider
from ticketing_jira.provider import JiraProvider


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register(JiraProvider.name, JiraProvider)
