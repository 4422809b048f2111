"""Entry point of the ServiceNow plugin: registers the provider, nothing else."""

from __future__ import annotations

from ticketing_core import hookimpl
from ticketing_core.hookspecs import RegisterProvider
from ticketing_servicenow.provider import ServiceNowProvider


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register(ServiceNowProvider.name, ServiceNowProvider)
