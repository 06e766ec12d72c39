"""The one daemon every scenario test module shares (session scope: its BPF programs compile once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ravn_core.testing import require_kernel
from tests.scenarios.harness import Daemon


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    require_kernel()
    d = Daemon()
    try:
        d.warm_up()
        yield d
    finally:
        rc = d.stop()
        d.cleanup()
    assert rc == 0, f"ravn exited {rc} on SIGTERM:\n{''.join(d.stderr_lines[-20:])}"
