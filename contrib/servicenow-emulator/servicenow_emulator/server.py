"""Serve an :class:`Emulator` with uvicorn, in a background thread or in the foreground."""

from __future__ import annotations

import ticketing_localserver

from .app import Emulator

RunningEmulator = ticketing_localserver.RunningEmulator[Emulator]
# "ServiceNow" is also the Server header real instances answer with.
SERVER = ticketing_localserver.EmulatorServer("ServiceNow", Emulator, server_header="ServiceNow")
make_config = SERVER.config
run_in_thread = SERVER.run_in_thread
