"""Jira Cloud provider for ticketing: issues over REST API v3."""

from ticketing_jira.provider import JiraProvider

__all__ = ["JiraProvider"]
