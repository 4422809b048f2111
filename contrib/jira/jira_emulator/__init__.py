"""A local Jira Cloud REST API v3 emulator for tests and demos (issues, comments, JQL search)."""

from .adf import adf_to_text, text_to_adf
from .app import (
    ADMIN_ACCOUNT_ID,
    DEFAULT_ACCOUNTS,
    DEFAULT_API_TOKEN,
    DEFAULT_EMAIL,
    DEFAULT_PROJECTS,
    Account,
    ApiError,
    JiraEmulator,
    Project,
)
from .server import RunningEmulator, run_in_thread

__all__ = [
    "ADMIN_ACCOUNT_ID",
    "DEFAULT_ACCOUNTS",
    "DEFAULT_API_TOKEN",
    "DEFAULT_EMAIL",
    "DEFAULT_PROJECTS",
    "Account",
    "ApiError",
    "JiraEmulator",
    "Project",
    "RunningEmulator",
    "adf_to_text",
    "run_in_thread",
    "text_to_adf",
]
