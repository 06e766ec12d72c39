"""Example third-party RAVN analyzer: alerts when one of a configured list of programs is executed."""

__version__ = "0.1.0"
