"""Errors that reach the user as one clear line, each with its documented exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_ENVIRONMENT = 3


class RavnError(Exception):
    """Base class: ``str(error)`` is the one line shown to the user; ``exit_code`` is what ``ravn`` returns."""

    exit_code = EXIT_FAILURE


class ConfigError(RavnError):
    """The config (or a file it names: rules, model, secret) is wrong. Names the file, line and key path."""

    exit_code = EXIT_CONFIG


class StartupError(RavnError):
    """A plugin or component cannot be set up: duplicate name, plugin that cannot load, bad factory."""

    exit_code = EXIT_CONFIG


class UnusableEnvironment(RavnError):
    """The machine cannot run this: not root, no BPF, no tracefs, no kernel headers. Names the fix."""

    exit_code = EXIT_ENVIRONMENT


class DidNotEnable(RavnError):
    """Raised by a component factory whose optional dependency or input is missing (e.g. onnxruntime).

    When the config names the component explicitly, startup fails with this reason; otherwise the
    component is left out and the runtime goes on (Sentry's DidNotEnable).
    """


class DecodeError(RavnError):
    """An event or batch from outside (Redis, a JSONL file) cannot be decoded. Names what and where."""
