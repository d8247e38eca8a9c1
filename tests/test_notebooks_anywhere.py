"""Every notebook opens anywhere and handles the small cases a quick run meets.

* Plain ``jupyter nbconvert --to notebook --execute``, run from ``notebooks/`` of a copy of the
  repository outside this one, in a kernel that has every dependency but not the project: its
  Python starts with ``-S`` (no site module, so no ``.pth`` file runs: neither the editable
  install's finder nor any other) and gets the environment's site-packages through
  ``PYTHONPATH``. Only the notebook's own setup cell can make ``utils`` importable there. The
  run uses one fact (``n_facts = 1``, SmolLM2 on the small dataset), the smallest quick run:
  controls and confidence bands that need two facts must be skipped with a sentence, not crash.
* Every notebook through papermill on a randomly initialised 2-layer Llama loaded from a folder
  in Hugging Face format, with facts it knows by construction: layer scaling must stay inside
  a model this shallow.

Both check that the executed notebooks read cleanly (no progress bars, warnings or absolute
paths) and that the notebooks wrote their tables.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import papermill
import pytest
import transformers
from notebook_checks import dirty_outputs, with_parameters
from test_notebooks import NOTEBOOKS, ROOT
from tiny_models import facts_it_knows, saved_random_model

TABLES = {  # a table each notebook writes
    "00_known_facts.ipynb": "facts_evaluated",
    "01_information_flow.ipynb": "information_flow_summary",
    "02_subject_enrichment.ipynb": "attribute_coverage",
    "03_attribute_extraction.ipynb": "extraction_layers",
    "04_paper_vs_models.ipynb": "ledger",  # across models: results/ledger.csv
    "05_dissect_your_fact.ipynb": "dissection_example",
}


def _table_path(root: Path, notebook: str, model: str) -> Path:
    name = TABLES[notebook]
    return root / "results" / (f"{name}.csv" if name == "ledger" else f"{model}/{name}.csv")


def _environment_without_the_project(tmp: Path) -> dict:
    """A Jupyter kernel whose Python sees the dependencies but not the project; returns the
    environment variables under which nbconvert finds that kernel."""
    site_packages = sysconfig.get_paths()["purelib"]
    kernels = tmp / "jupyter" / "kernels" / "no-project"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-S", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dependencies only", "language": "python",
        "env": {"PYTHONPATH": site_packages, "PYTHONNOUSERSITE": "1"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("DISSECT_OUTPUT_ROOT", "PYTHONPATH")}
    env.update(JUPYTER_PATH=str(tmp / "jupyter"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    probe = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u; print(u.find_spec('utils'))"],
                           cwd=tmp, env={**env, "PYTHONPATH": site_packages}, capture_output=True, text=True)
    assert probe.stdout.strip() == "None", f"the project is importable without the setup cell: {probe.stdout}"
    return env


@pytest.mark.slow
def test_every_notebook_runs_with_plain_nbconvert_without_the_project_on_one_fact(tmp_path):
    copy = tmp_path / "elsewhere" / "dissecting-recall"
    for name in ("utils", "data", "notebooks"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    for notebook in NOTEBOOKS:
        with_parameters(notebook, copy / "notebooks" / notebook.name, model="smollm2-135m", dataset="small",
                        n_facts=1, device="cpu")
    env = _environment_without_the_project(tmp_path)
    out = tmp_path / "executed"
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output-dir", str(out),
         "--ExecutePreprocessor.kernel_name=no-project", "--ExecutePreprocessor.timeout=600",
         *[nb.name for nb in NOTEBOOKS]],
        cwd=copy / "notebooks", env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-4000:]
    for notebook in NOTEBOOKS:
        assert dirty_outputs(out / notebook.name) == [], notebook.name
        table = _table_path(copy, notebook.name, "smollm2-135m")
        assert table.exists(), f"{notebook.name} wrote no {table.name} into the copy it ran from"


@pytest.fixture(scope="module")
def two_layer_llama(tmp_path_factory):
    """A random 2-layer Llama in Hugging Face format, and the small facts it 'knows' (each
    fact's attribute set to its own prediction)."""
    folder = tmp_path_factory.mktemp("two-layer-llama")
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                      initializer_range=0.2)
    lm = saved_random_model(folder, config)
    path, _ = facts_it_knows(lm, folder, minimum=5)
    return folder, path, tmp_path_factory.mktemp("two-layer-outputs")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_a_two_layer_model(notebook, two_layer_llama, tmp_path, monkeypatch):
    """One output root for all the notebooks, as in `make reproduce`: 04 reads what 01-03 wrote."""
    from utils.paths import output_root

    folder, facts, outputs = two_layer_llama
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(outputs))
    executed = tmp_path / notebook.name
    papermill.execute_notebook(str(notebook), str(executed), parameters={"model": str(folder), "dataset": str(facts)},
                               cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    from utils.runs.results import model_slug

    assert _table_path(output_root(), notebook.name, model_slug(str(folder))).exists()
    assert dirty_outputs(executed, allowed=(str(folder),)) == []  # the model is named by its folder's path
