"""docs/DETECTIONS.md's rule catalogue is exactly what scripts/gen_rules_doc.py generates from the default rules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ravn_analyzers.rules.loader import load_rules, rule_files

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "DETECTIONS.md"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_rules_doc", ROOT / "scripts" / "gen_rules_doc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rule_catalogue_is_generated() -> None:
    text = DOC.read_text()
    stale = "docs/DETECTIONS.md's rule catalogue is stale: run scripts/gen_rules_doc.py"
    assert _module().generate(text) == text, stale


def test_every_default_rule_has_a_row_with_its_score() -> None:
    text = _module().generate(DOC.read_text())
    files: list[str | Path] = [*rule_files(["default"], [])]
    for rule in load_rules(files).rules:
        assert f"| `{rule.name}` | {rule.score} |" in text


def test_the_rest_of_the_document_is_kept() -> None:
    doc = "# D\n\nintro\n\n## Rule catalogue\n\nold row\n\n## After\n\nkept\n"
    new = _module().generate(doc)
    assert new.startswith("# D\n\nintro\n\n## Rule catalogue\n")
    assert "old row" not in new
    assert new.endswith("## After\n\nkept\n")
