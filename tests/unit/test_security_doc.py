"""docs/SECURITY.md names, for every finding, the test that reproduces the attack: each one named must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "SECURITY.md"


def named_tests() -> list[tuple[str, str | None]]:
    """(test file, test function or None) for each test cell of the findings tables. A cell lists items separated
    by ``,`` or ``;``: ``path/test_x.py::name``, ``test_x.py::name`` (a file named in full before), ``::name``
    (same file) or a file alone."""
    out: list[tuple[str, str | None]] = []
    files: list[str] = []  # full paths named so far, in any row
    for line in DOC.read_text().split("\n## Findings", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or cells[2] in ("test", "---"):
            continue
        current = ""
        for item in re.split(r"[,;]", re.sub(r"\([^)]*\)", "", cells[2])):
            item = item.strip()
            if not item:
                continue
            path, _, name = item.partition("::")
            if path:
                if "/" not in path:
                    path = next((f for f in reversed(files) if f.endswith("/" + path)), path)
                files.append(path)
                current = path
            out.append((current, name or None))
    return out


def test_every_test_the_security_doc_names_exists() -> None:
    named = named_tests()
    assert len(named) >= 40, named  # the parser still reads the tables
    for path, name in named:
        f = ROOT / path
        assert f.is_file(), f"docs/SECURITY.md names {path}, which does not exist"
        if name is not None:
            assert re.search(rf"^(async )?def {re.escape(name)}\(", f.read_text(), re.M), \
                f"docs/SECURITY.md names {path}::{name}, which does not exist"
