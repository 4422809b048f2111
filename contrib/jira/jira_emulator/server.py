"""Serve a :class:`JiraEmulator` with uvicorn, in a background thread or in the foreground."""

from __future__ import annotations

import ticketing_localserver

from .app import JiraEmulator

RunningEmulator = ticketing_localserver.RunningEmulator[JiraEmulator]
# AtlassianEdge is the Server header Jira Cloud answers with.
SERVER = ticketing_localserver.EmulatorServer("Jira", JiraEmulator, server_header="AtlassianEdge")
make_config = SERVER.config
run_in_thread = SERVER.run_in_thread
