"""A notebook's first cell, the repository's address in one place, and clean outputs."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from notebook_checks import dirty_outputs

from utils import setup as project_setup
from utils.runs.progress import progress
from utils.runs.results import display_path

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = sorted((ROOT / "executed").glob("*/[0-9][0-9]_*.ipynb"))
"""The executed notebooks a reader gets: the nbval references and every model's full run."""


def test_setup_cells_colab_block_and_pyproject_agree_with_the_one_address():
    assert project_setup.problems() == [], "run `python -m utils.setup sync`"
    assert project_setup.repository_url().startswith("https://github.com/")


def _copy(tmp_path) -> Path:
    for name in ("README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("notebooks", "exercises"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("solutions"))
    return tmp_path


def test_every_notebook_opens_with_the_synced_setup_cell():
    """The sections and the exercises: one cell, written by `python -m utils.setup sync`."""
    paths = project_setup.notebook_paths(ROOT)
    assert {p.parent.name for p in paths} == {"notebooks", "exercises"}
    for path in paths:
        cell = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert "".join(cell["source"]) == project_setup.setup_cell(), f"{path.name}: run `python -m utils.setup sync`"
        assert not cell["outputs"] and "setup" in cell["metadata"]["tags"]


def test_an_edited_setup_cell_is_caught_and_sync_restores_it(tmp_path):
    root = _copy(tmp_path)
    path = root / "exercises" / "01_information_flow_exercises.ipynb"
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["source"] = ["import sys\n", "sys.path.insert(0, '..')"]  # the exercises' old, Colab-less cell
    path.write_text(json.dumps(nb))
    assert project_setup.problems(root) == [f"{path.relative_to(root)}: its first code cell is not the synced setup cell"]
    project_setup.sync(root)
    assert project_setup.problems(root) == []


def test_a_published_address_gives_badges_and_sync_writes_it_everywhere(tmp_path):
    root, url = _copy(tmp_path), "https://github.com/a/b"
    found = project_setup.problems(root, url)
    assert len(found) == len(project_setup.notebook_paths(root)) + 2  # every setup cell, the README, pyproject
    project_setup.sync(root, url)
    (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text().replace(project_setup.PLACEHOLDER, url))
    assert project_setup.problems(root, url) == []
    readme = (root / "README.md").read_text()
    assert "https://colab.research.google.com/github/a/b/blob/main/notebooks/00_known_facts.ipynb" in readme
    assert "https://colab.research.google.com/github/a/b/blob/main/exercises/00_known_facts_exercises.ipynb" in readme
    cells = json.loads((root / "notebooks" / "01_information_flow.ipynb").read_text())["cells"]  # still valid JSON
    assert any(f'or "{url}"' in "".join(c["source"]) for c in cells)


def test_the_placeholder_gives_no_colab_link_and_says_how_to_set_it():
    readme = (ROOT / "README.md").read_text()
    if not project_setup.published():
        assert "colab.research.google.com" not in readme
        assert "set `REPOSITORY` in `utils/setup.py`" in readme


def test_a_stray_colab_link_under_the_placeholder_is_caught(tmp_path):
    root = _copy(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n" + project_setup.colab_badge("notebooks/02_subject_enrichment.ipynb"))
    assert "README: a Colab link outside the Colab block" in project_setup.problems(root)


def test_missing_dependencies_say_what_to_run(monkeypatch):
    monkeypatch.setattr(project_setup, "requirements", lambda root=None: ["torch", "no-such-distribution-xyz"])
    with pytest.raises(project_setup.MissingRequirements) as err:
        project_setup.setup(ROOT, colab=False)
    message = str(err.value)
    assert "no-such-distribution-xyz" in message and "torch" not in message.split("needs:")[1].split(".")[0]
    assert f'-m pip install -e "{ROOT}"' in message and "make venv" in message


def test_colab_installs_the_project_once_and_only_when_something_is_missing(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(project_setup.subprocess, "run", lambda cmd, check: calls.append(cmd))
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    project_setup.install_in_colab(tmp_path)  # this environment has every dependency: nothing to install
    assert calls == []
    monkeypatch.setattr(project_setup, "missing_requirements", lambda root=None: ["gguf"])
    project_setup.install_in_colab(tmp_path)
    project_setup.install_in_colab(tmp_path)
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "-e", str(tmp_path)]]


def test_progress_prints_one_final_line_outside_a_notebook(capsys):
    assert list(progress(range(3), "sweep", note=" (2 more from an earlier run)")) == [0, 1, 2]
    out = capsys.readouterr()
    assert out.out.splitlines() == [out.out.strip()] and out.out.startswith("sweep: 3 facts in ")
    assert out.out.rstrip().endswith("(2 more from an earlier run)") and out.err == ""


def test_paths_are_shown_relative_to_the_project(tmp_path, monkeypatch):
    assert display_path(ROOT / "results" / "m" / "t.csv") == "results/m/t.csv"
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(tmp_path))
    assert display_path(tmp_path / "results" / "m" / "t.csv") == "results/m/t.csv"


def test_the_checker_finds_what_a_reader_should_not_see(tmp_path):
    """The clean-output check fails on the outputs the references had before this project's
    outputs were cleaned (progress bars, tqdm's IProgress warning, absolute paths)."""
    outputs = [{"output_type": "stream", "name": "stderr", "text": [
        "/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found.\n",
        "attributes_rate:  45%|████▌     | 10/22 [00:01<00:01,  6.73it/s]\n"]},
        {"output_type": "stream", "name": "stdout", "text": "sweep: 3 of 26 facts ...\n"},
        {"output_type": "execute_result", "data": {"text/plain": "PosixPath('/tmp/x/results')"}, "metadata": {}}]
    nb = {"cells": [{"cell_type": "code", "outputs": outputs, "source": ""}]}
    path = tmp_path / "dirty.ipynb"
    path.write_text(json.dumps(nb))
    kinds = {line.split(": ")[1] for line in dirty_outputs(path)}
    assert kinds == {"an absolute path", "IProgress", "a warning", "a progress bar", "a progress line left behind"}


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_executed_notebooks_read_cleanly(path):
    assert dirty_outputs(path) == []
