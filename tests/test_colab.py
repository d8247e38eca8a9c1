"""The Colab path, run for real: a section notebook and an exercise notebook opened in a fresh
"Colab" runtime, from an empty folder, clone the repository through their setup cell and run.

What is simulated, and only that: ``google.colab`` is a stand-in module imported when the kernel
starts (as Colab's own kernel imports it), and the repository's address is a ``file://`` URL of a
bare clone of this checkout (its committed HEAD), passed through ``DISSECT_REPOSITORY``, the
environment variable the setup cell reads first. The clone, ``sys.path``, the dependency check
and the notebook's code are the real ones; the kernel's packages are this environment's (so the
setup finds nothing to pip-install). A notebook whose address is still the placeholder must stop
with the message that says what to do, not fail inside ``git clone``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_checks import with_solutions

from utils import setup as project_setup

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is missing: the Colab path clones with it")


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """(an empty working folder, the environment of a simulated Colab kernel)."""
    tmp = tmp_path_factory.mktemp("colab")
    bare = tmp / "dissecting-recall.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(ROOT), str(bare)], check=True)
    stand_in = tmp / "stand-in"
    (stand_in / "google" / "colab").mkdir(parents=True)
    (stand_in / "google" / "__init__.py").write_text("")
    (stand_in / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s module (tests only)."""\n')
    (stand_in / "sitecustomize.py").write_text("import google.colab  # noqa: F401  (Colab's kernel imports it)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISSECT_OUTPUT_ROOT", "PYTHONPATH", "DISSECT_REPOSITORY")}
    env.update(PYTHONPATH=str(stand_in), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               DISSECT_REPOSITORY=f"file://{bare}")
    content = tmp / "content"  # Colab's working folder, empty
    content.mkdir()
    return content, env


def _run(notebook: Path, cwd: Path, env: dict, out: Path, parameters: dict | None = None) -> subprocess.CompletedProcess:
    """papermill in a child process, so that the kernel gets exactly ``env``."""
    code = ("import json, sys, papermill\n"
            "papermill.execute_notebook(sys.argv[1], sys.argv[2], cwd=sys.argv[3], kernel_name='python3',\n"
            "                           progress_bar=False, parameters=json.loads(sys.argv[4]))\n")
    return subprocess.run([sys.executable, "-c", code, str(notebook), str(out), str(cwd), json.dumps(parameters or {})],
                          env=env, capture_output=True,
                          text=True, timeout=600)


def _outputs(path: Path) -> str:
    return "\n".join(json.dumps(c.get("outputs", [])) for c in nbformat.read(path, as_version=4).cells)


def test_a_section_notebook_and_an_exercise_notebook_run_in_a_simulated_colab(colab, tmp_path):
    content, env = colab
    section = ROOT / "notebooks" / "00_known_facts.ipynb"
    result = _run(section, content, env, tmp_path / "00.ipynb",
                  {"model": "smollm2-135m", "dataset": "small", "n_facts": 3, "device": "cpu"})
    assert result.returncode == 0, result.stderr[-4000:]
    clone = content / "dissecting-recall"
    assert (clone / "utils" / "setup.py").is_file(), "the setup cell did not clone the repository into the working folder"
    written = sorted(p.name for p in (clone / "results" / "smollm2-135m").glob("*.csv"))
    assert written, "notebook 00 wrote its known set nowhere under the clone (did `utils` come from elsewhere?)"

    # the exercise notebook, finished as a student would (each stub replaced by the solution in the clone)
    nb = with_solutions(nbformat.read(ROOT / "exercises" / "00_known_facts_exercises.ipynb", as_version=4),
                        clone / "exercises" / "solutions" / "00_known_facts.py")
    solved = tmp_path / "00_exercises.ipynb"
    nbformat.write(nb, solved)
    result = _run(solved, content, env, tmp_path / "00_exercises_out.ipynb")
    assert result.returncode == 0, result.stderr[-4000:]
    executed = nbformat.read(tmp_path / "00_exercises_out.ipynb", as_version=4)
    checks = [c for c in executed.cells if "check" in c.metadata.get("tags", [])]
    assert checks and all(f"PASSED {c.metadata['exercise']}" in json.dumps(c.outputs) for c in checks)


def test_the_placeholder_address_stops_with_what_to_do(colab, tmp_path):
    """A notebook opened in Colab from a copy that does not know its repository says so, before
    any clone is tried."""
    content, env = colab
    empty = tmp_path / "content"
    empty.mkdir()
    nb = nbformat.read(ROOT / "exercises" / "01_information_flow_exercises.ipynb", as_version=4)
    setup_cell = next(c for c in nb.cells if c.cell_type == "code")
    nb.cells = [setup_cell]
    path = tmp_path / "setup_only.ipynb"
    nbformat.write(nb, path)
    env = {**env, "DISSECT_REPOSITORY": project_setup.PLACEHOLDER}
    result = _run(path, empty, env, tmp_path / "out.ipynb")
    assert result.returncode != 0
    text = _outputs(tmp_path / "out.ipynb")
    assert "is a placeholder" in text and "DISSECT_REPOSITORY" in text and "utils/setup.py" in text
    assert "CalledProcessError" not in text and not (empty / "dissecting-recall").exists()
