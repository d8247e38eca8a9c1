"""The notebooks are committed clean, parameterised, and their nbval references are current."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REFERENCES = ROOT / "executed" / "reference"


def _code_cells(path: Path, skip_injected: bool = True) -> list[dict]:
    cells = json.loads(path.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code"
            and not (skip_injected and "injected-parameters" in c.get("metadata", {}).get("tags", []))]


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_known_facts.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_with_one_parameters_cell(path):
    cells = _code_cells(path)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells), "strip the outputs"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert "model =" in _source(tagged[0])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reference_is_current(path):
    """nbval re-runs executed/reference/<notebook>; it must hold today's code (run `make references`)."""
    reference = REFERENCES / path.name
    assert reference.exists(), f"missing {reference.relative_to(ROOT)}: run `make references`"
    ours = [_source(c) for c in _code_cells(path)]
    theirs = [_source(c) for c in _code_cells(reference)]
    assert ours == theirs, f"{reference.relative_to(ROOT)} is stale: run `make references`"
    checked = [c for c in _code_cells(reference) if "nbval-check-output" in c.get("metadata", {}).get("tags", [])]
    assert checked and all(c.get("outputs") for c in checked), "checked cells need reference outputs"
