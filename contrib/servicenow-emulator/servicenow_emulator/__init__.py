"""A local ServiceNow Table API emulator for tests and demos (``incident`` and its references)."""

from .app import (
    ADMIN_SYS_ID,
    DEFAULT_GROUPS,
    DEFAULT_PASSWORD,
    DEFAULT_USERS,
    ApiError,
    Emulator,
    Group,
    User,
)
from .server import RunningEmulator, run_in_thread

__all__ = [
    "ADMIN_SYS_ID",
    "DEFAULT_GROUPS",
    "DEFAULT_PASSWORD",
    "DEFAULT_USERS",
    "ApiError",
    "Emulator",
    "Group",
    "RunningEmulator",
    "User",
    "run_in_thread",
]
