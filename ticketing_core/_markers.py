"""The pluggy markers of project "ticketing" (import ``hookimpl`` from ``ticketing_core``)."""

import pluggy

PROJECT_NAME = "ticketing"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
