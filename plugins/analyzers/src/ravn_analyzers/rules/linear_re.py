"""Rule regexes in linear time: the ``regex`` operator compiles its patterns with RE2 (google-re2).

Python's ``re`` backtracks: a rule author's ``(a+)+$`` against a 40-character argv takes minutes, during which the
analysis thread is stuck and every later event waits (or is dropped). RE2 matches in time linear in the input
whatever the pattern. It has no backreferences (``\\1``) and no lookaround (``(?=``, ``(?!``, ``(?<=``); a pattern
that uses them is rejected when the rules load, with the pattern and RE2's reason. ``\\d``, ``\\w`` and ``\\s``
are ASCII-only in RE2, and ``$`` matches only at the very end (Python's also before a final newline).

Cost: about 1-2 us per test on a short string (RE2's matcher called directly, no match object built), against
0.3-1 us for ``re``; only ``regex`` conditions pay it (``glob``, ``contains``, ``startswith`` do not use RE2).
"""

from __future__ import annotations

from typing import Any

import re2

_UNANCHORED: Any = re2._re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


class RegexError(ValueError):
    """RE2 cannot compile the pattern; the message says why."""


class LinearRegex:
    """A compiled pattern with ``search(text)``: truthy when it matches anywhere in ``text``, else None
    (the shape the generated rule code tests: ``.search(x) is not None``)."""

    __slots__ = ("_match", "pattern")

    def __init__(self, pattern: str) -> None:
        options = re2.Options()
        options.log_errors = False  # the error is raised, with the pattern, as RegexError
        options.never_capture = True  # only "does it match" is asked
        try:
            compiled = re2.compile(pattern, options=options)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode(errors="replace")
            raise RegexError(f"{reason} (rule regexes use RE2: linear time, no backreferences or lookaround)") \
                from None
        self.pattern = pattern
        self._match = compiled._regexp.Match  # RE2::Match on UTF-8 bytes: no per-call offset bookkeeping

    def search(self, text: str) -> bool | None:
        data = text.encode("utf-8", "replace")
        return True if self._match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH else None

    def __repr__(self) -> str:
        return f"LinearRegex({self.pattern!r})"


__all__ = ["LinearRegex", "RegexError"]
