"""The two names of the plugin system (pitfall P1: they are independent strings)."""

import pluggy

PROJECT = "vpmu"
ENTRY_POINT_GROUP = "vpmu.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
