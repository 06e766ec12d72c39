"""RAVN core: the plugin host, config, threaded runtime and CLI of the RAVN runtime security monitor."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("ravn")

__all__ = ["__version__", "hookimpl"]
