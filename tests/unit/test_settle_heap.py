"""ravn_core.runtime.selfwatch.settle_heap: what `ravn run` does to its own collector once started."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from ravn_core.runtime.selfwatch import GC_THRESHOLD, settle_heap
built = [[i] for i in range(1000)]  # what start-up built and keeps
cycle = []
cycle.append(cycle)  # and start-up garbage in a cycle
del cycle
before = gc.get_threshold()
settle_heap()
assert gc.get_threshold() == GC_THRESHOLD != before, gc.get_threshold()
assert gc.get_freeze_count() >= len(built), gc.get_freeze_count()
assert gc.get_count()[0] < 100  # the collection before the freeze ran
print("ok")
"""


def test_settle_heap_freezes_what_start_up_built_and_raises_the_thresholds() -> None:
    # in a process of its own: the freeze and the thresholds are process-wide
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
