"""docs/hooks.md documents every hook with its exact arguments (datasette's test_docs)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from ravn_core import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def spec_signatures() -> dict[str, list[str]]:
    return {name: list(inspect.signature(fn).parameters) for name, fn in vars(hookspecs).items()
            if name.startswith("ravn_") and callable(fn)}


def test_every_hook_is_documented_with_its_arguments() -> None:
    documented = {m.group(1): [a.strip() for a in m.group(2).split(",") if a.strip()]
                  for m in re.finditer(r"^### (ravn_\w+)\(([^)]*)\)", DOC.read_text(), re.M)}
    assert documented == spec_signatures()


def test_every_hook_is_in_the_order_diagram() -> None:
    text = DOC.read_text().split("## Registration phase")[0]
    for name in spec_signatures():
        assert name in text, f"{name} missing from the order diagram"


def test_plugin_host_has_a_facade_for_every_hook() -> None:
    """Core never writes pm.hook.x(...) outside plugins.py (STYLE rule 2)."""
    core = Path(hookspecs.__file__).parent
    for path in core.rglob("*.py"):
        if path.name != "plugins.py":
            assert "pm.hook." not in path.read_text(), path
