"""ServiceNow provider for ticketing: incidents over the Table API."""

from ticketing_servicenow.provider import ServiceNowProvider

__all__ = ["ServiceNowProvider"]
