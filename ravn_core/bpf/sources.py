"""Where a probe's BPF C is: package data of the probe's distribution.

Each probe distribution ships its ``.bpf.c`` and the shared headers (``bpf/include/``) under ``<package>/bpf/``: the
``[tool.hatch.build.targets.wheel.force-include]`` table of its pyproject.toml copies them from the repository's
``bpf/`` into the wheel. An editable install (``pip install -e``, what scripts/setup.sh makes) imports the package
from the checkout, which holds no copy (hatchling puts one in site-packages, outside the package: never read, and
stale once the C is edited); there the same table, read from the project's pyproject.toml, names the checkout files
the wheel would ship, so both kinds of install load the same files under the same names.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

from ravn_core.errors import UnusableEnvironment


def package_data(package: str, name: str) -> Path:
    """The file or directory ``<package>/<name>`` (``bpf/syscall.bpf.c``, ``bpf/include``) of an installed package,
    or, for an editable install, the checkout path its wheel's force-include table copies there.

    Raises ``UnusableEnvironment`` naming the package when neither exists (package data not installed)."""
    installed = Path(str(importlib.resources.files(package))) / name
    if installed.exists():
        return installed.resolve()
    found = _editable_force_include(f"{package}/{name}")
    if found is not None and found.exists():
        return found
    raise UnusableEnvironment(f"{package}: BPF source {name} is missing from {installed.parent} (package data not "
                              "installed; reinstall the plugin)")


def _editable_force_include(target: str) -> Path | None:
    """The checkout path that an editable distribution's force-include table maps to ``target`` (a path inside
    the wheel), or None."""
    for dist in importlib.metadata.distributions():
        project = _editable_project(dist)
        if project is None:
            continue
        try:
            pyproject = tomllib.loads((project / "pyproject.toml").read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        table: Any = pyproject
        for key in ("tool", "hatch", "build", "targets", "wheel", "force-include"):
            table = table.get(key, {}) if isinstance(table, dict) else {}
        for source, dest in table.items():
            if str(dest).strip("/") == target:
                return (project / source).resolve()
    return None


def _editable_project(dist: importlib.metadata.Distribution) -> Path | None:
    """The project directory of an editable install (PEP 610 ``direct_url.json``), else None."""
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    url = str(info.get("url", ""))
    if not (info.get("dir_info") or {}).get("editable") or not url.startswith("file://"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
