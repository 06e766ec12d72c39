"""docs/EVENTS.md is exactly what scripts/gen_events_doc.py generates from the schema and the BPF headers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ravn_core.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]


def _generate() -> str:
    spec = importlib.util.spec_from_file_location("gen_events_doc", ROOT / "scripts" / "gen_events_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text: str = mod.generate()
    return text


def test_events_doc_is_generated() -> None:
    text = _generate()
    assert (ROOT / "docs" / "EVENTS.md").read_text() == text, "docs/EVENTS.md is stale: run scripts/gen_events_doc.py"


def test_every_type_and_field_documented() -> None:
    text = _generate()
    for name, t in EVENT_TYPES.items():
        assert f"### `{name}`" in text
        for f in t.fields:
            assert f"| `{f.name}` |" in text
