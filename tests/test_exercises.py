"""The exercises (exercises/*.ipynb, checkers in utils/companion/exercises/) work in both directions.

Every checker passes its reference solution (exercises/solutions/), fails the unsolved stub as
written in the notebook with its own "not implemented yet" failure (not a crash), and fails one
plausible wrong answer (tests/exercise_mistakes.py) with a message that says where and why. The
notebooks themselves run end to end with papermill once their stubs are replaced by the solutions.
"""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from exercise_mistakes import MISTAKES
from notebook_checks import with_solutions

from utils.companion.exercises import EXERCISES, ExerciseFailed, NotImplementedYet

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb"))
SOLUTIONS = {p.name[:2]: p for p in (ROOT / "exercises" / "solutions").glob("[0-9][0-9]_*.py")}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(tag: str) -> dict[str, tuple[Path, str]]:
    """exercise id -> (notebook, source) of the cells tagged ``tag``."""
    found = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if tag in cell.metadata.get("tags", []):
                assert cell.metadata["exercise"] not in found, f"two {tag} cells for {cell.metadata['exercise']}"
                found[cell.metadata["exercise"]] = (path, cell.source)
    return found


STUBS, CHECKS = _cells("exercise"), _cells("check")


def test_every_exercise_has_a_stub_a_check_a_solution_and_a_mistake():
    assert len(NOTEBOOKS) == 4 and set(SOLUTIONS) == {"00", "01", "02", "03"}
    assert set(STUBS) == set(CHECKS) == set(EXERCISES) == set(MISTAKES)
    for ex, (name, checker) in EXERCISES.items():
        path, source = STUBS[ex]
        assert path.name.startswith(ex[:2]), f"{ex} is in {path.name}"
        assert f"def {name}(" in source and "raise NotImplementedError" in source
        assert CHECKS[ex][1].startswith(f"{checker.__name__}({name}"), f"{ex}'s check cell calls {CHECKS[ex][1]!r}"
        assert hasattr(_load(SOLUTIONS[ex[:2]]), name)
    for count in (sum(ex.startswith(f"0{i}") for ex in EXERCISES) for i in range(4)):
        assert 3 <= count <= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_and_never_importing_the_solutions(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
    assert not any("solutions" in c.source for c in code)


@pytest.mark.parametrize("ex", list(EXERCISES))
def test_solution_passes(ex, smollm, capsys):
    name, checker = EXERCISES[ex]
    checker(getattr(_load(SOLUTIONS[ex[:2]]), name), smollm)
    assert f"PASSED {ex}" in capsys.readouterr().out


@pytest.mark.parametrize("ex", list(EXERCISES))
def test_unsolved_stub_fails_with_not_implemented_yet(ex, smollm):
    name, checker = EXERCISES[ex]
    namespace = {}
    exec("import torch\n" + STUBS[ex][1], namespace)  # the stub exactly as the notebook has it
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        checker(namespace[name], smollm)


@pytest.mark.parametrize("ex", list(EXERCISES))
def test_wrong_answer_fails_with_a_useful_message(ex, smollm):
    wrong, phrase = MISTAKES[ex]
    with pytest.raises(ExerciseFailed) as failure:
        EXERCISES[ex][1](wrong, smollm)
    message = str(failure.value)
    assert not isinstance(failure.value, NotImplementedYet)
    assert message.startswith(ex) and "expected:" in message and "got:" in message and "hint:" in message
    assert phrase in message, message


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_with_the_solutions(path, tmp_path):
    """The notebook as a student finishes it: every exercise cell replaced by the reference
    solution, run from exercises/ with papermill; every check passes and the cells after them run."""
    import papermill

    nb = with_solutions(nbformat.read(path, as_version=4), SOLUTIONS[path.name[:2]])
    solved = tmp_path / path.name
    nbformat.write(nb, solved)
    out = tmp_path / f"executed_{path.name}"
    papermill.execute_notebook(str(solved), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    for cell in executed.cells:
        if "check" in cell.metadata.get("tags", []):
            text = "".join(o.get("text", "") for o in cell.outputs)
            assert f"PASSED {cell.metadata['exercise']}" in text, json.dumps(cell.outputs)[:2000]
