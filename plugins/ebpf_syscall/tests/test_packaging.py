"""The probe's BPF C ships as package data: a wheel of ravn-ebpf-syscall holds syscall.bpf.c and the shared headers,
and the probe installed from it (not editable) compiles and attaches from its installed location."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from ravn_ebpf_syscall.config import SyscallConfig
from ravn_ebpf_syscall.source import SyscallSource

from ravn_core.bpf.abi import bpf_dir
from ravn_core.bpf.sources import package_data
from ravn_core.errors import UnusableEnvironment
from ravn_core.testing import make_context, require_kernel

PROJECT = Path(__file__).resolve().parents[1]
SHIPPED = {"ravn_ebpf_syscall/bpf/syscall.bpf.c": bpf_dir() / "syscall.bpf.c",
           "ravn_ebpf_syscall/bpf/include/ravn_events.h": bpf_dir() / "include" / "ravn_events.h",
           "ravn_ebpf_syscall/bpf/include/ravn_common.bpf.h": bpf_dir() / "include" / "ravn_common.bpf.h"}

# Run from the installed copy: load the probe, report where its files came from and its health, stop it.
CHILD = """
import json, sys
from ravn_ebpf_syscall.config import SyscallConfig
from ravn_ebpf_syscall.source import SyscallSource
import ravn_ebpf_syscall
from ravn_core.testing import make_context

src = SyscallSource("ebpf_syscall", SyscallConfig(), make_context("wheel"))
out = {"package": ravn_ebpf_syscall.__file__, "source": str(src.source_path()), "include": str(src.include_dir())}
if sys.argv[1] == "load":
    src.start()
    try:
        h = src.health()
        out["health"] = [h.state, h.counters["programs_attached"], h.counters["programs_expected"]]
    finally:
        src.stop()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the directory it was installed into with pip --target)."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(PROJECT)],
                   check=True, timeout=300)
    (wheel,) = tmp.glob("ravn_ebpf_syscall-*.whl")
    target = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    return wheel, target


def run_installed(target: Path, what: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the venv's editable install
    out = subprocess.run([sys.executable, "-c", CHILD, what], capture_output=True, text=True, env=env,
                         timeout=300, cwd=str(target))
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_wheel_holds_the_probe_c_and_the_shared_headers(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name, repo_file in SHIPPED.items():
            assert name in names, sorted(names)
            assert zf.read(name) == repo_file.read_bytes(), name
    shipped_c = {n for n in names if n.endswith((".c", ".h"))}
    assert shipped_c == set(SHIPPED)  # only this probe's program, not the other probes'


def test_installed_probe_reads_its_package_data(installed: tuple[Path, Path]) -> None:
    _, target = installed
    got = run_installed(target, "paths")
    pkg = target / "ravn_ebpf_syscall"
    assert got["package"] == str(pkg / "__init__.py")
    assert got["source"] == str(pkg / "bpf" / "syscall.bpf.c")
    assert got["include"] == str(pkg / "bpf" / "include")


@pytest.mark.kernel
def test_installed_probe_compiles_and_attaches(installed: tuple[Path, Path]) -> None:
    require_kernel()
    _, target = installed
    got = run_installed(target, "load")
    assert got["source"] == str(target / "ravn_ebpf_syscall" / "bpf" / "syscall.bpf.c")
    state, attached, expected = got["health"]  # type: ignore[misc]
    assert state == "ok" and attached == expected > 2, got


def test_editable_install_reads_the_checkout() -> None:
    """In the development venv (editable installs) the probe loads the repository's files, which are the ones a
    wheel would copy, never a stale copy elsewhere."""
    src = SyscallSource("ebpf_syscall", SyscallConfig(), make_context("editable"))
    assert src.source_path() == (bpf_dir() / "syscall.bpf.c").resolve()
    assert src.include_dir() == (bpf_dir() / "include").resolve()


def test_missing_package_data_names_the_package() -> None:
    with pytest.raises(UnusableEnvironment, match=r"^ravn_ebpf_syscall: BPF source bpf/nope\.bpf\.c is missing"):
        package_data("ravn_ebpf_syscall", "bpf/nope.bpf.c")
