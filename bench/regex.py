"""Cost of one rule-regex test: RE2's matcher called directly (what analyzer_rules does), google-re2's public
``search`` on ``str`` and on ``bytes``, and Python's ``re`` (backtracking, not used for rules).

    .venv/bin/python bench/regex.py [--calls 20000] [--repeat 7]

Prints microseconds per test (best of ``--repeat`` runs of ``--calls`` calls) per pattern and text; last line: one
JSON object with the min/max per way. See plugins/analyzers/src/ravn_analyzers/rules/linear_re.py for why it matters.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import timeit
from typing import Any

import re2
from ravn_analyzers.rules.linear_re import LinearRegex

PATTERNS = [r"(?i)(curl|wget)\s+.*\|\s*(ba)?sh", r"^/(tmp|dev/shm|var/tmp)/", r"\.(so|ko)(\.\d+)*$"]
TEXTS = ["/usr/bin/python3 -m pytest tests/unit -x -q --tb=short", "/tmp/build/main.o",
         "/lib/x86_64-linux-gnu/libc.so.6"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    ways: dict[str, list[float]] = {"direct": [], "public_str": [], "public_bytes": [], "python_re": []}
    for pattern in PATTERNS:
        direct = LinearRegex(pattern)
        public = re2.compile(pattern, options=options)
        backtracking = re.compile(pattern)
        for text in TEXTS:
            calls: dict[str, Any] = {
                "direct": lambda d=direct, t=text: d.search(t),
                "public_str": lambda c=public, t=text: c.search(t) is not None,
                "public_bytes": lambda c=public, t=text: c.search(t.encode("utf-8", "replace")) is not None,
                "python_re": lambda c=backtracking, t=text: c.search(t) is not None,
            }
            answers = {name: bool(fn()) for name, fn in calls.items()}
            assert len(set(answers.values())) == 1, (pattern, text, answers)
            row = []
            for name, fn in calls.items():
                us = min(timeit.repeat(fn, number=args.calls, repeat=args.repeat)) / args.calls * 1e6
                ways[name].append(us)
                row.append(f"{name} {us:.2f} us")
            print(f"{pattern[:28]:<28} {text[:24]:<24} " + ", ".join(row))
    print(json.dumps({"bench": "regex", **{k: [round(min(v), 2), round(max(v), 2)] for k, v in ways.items()},
                      "loadavg_1m": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
