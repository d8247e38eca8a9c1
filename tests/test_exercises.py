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
    assert len(NOTEBOOKS) == 6 and set(SOLUTIONS) == {"00", "01", "02", "03", "04", "05"}
    assert set(STUBS) == set(CHECKS) == set(EXERCISES) == set(MISTAKES)
    for ex, (name, checker) in EXERCISES.items():
        path, source = STUBS[ex]
        assert path.name.startswith(ex[:2]), f"{ex} is in {path.name}"
        assert f"def {name}(" in source and "raise NotImplementedError" in source
        assert CHECKS[ex][1].startswith(f"{checker.__name__}({name}"), f"{ex}'s check cell calls {CHECKS[ex][1]!r}"
        assert hasattr(_load(SOLUTIONS[ex[:2]]), name)
    for count in (sum(ex.startswith(f"0{i}") for ex in EXERCISES) for i in range(6)):
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


def _estimates() -> dict[str, int]:
    """Exercise id -> the minutes its notebook's header estimates."""
    import re

    found = {}
    for path in NOTEBOOKS:
        for cell in nbformat.read(path, as_version=4).cells:
            if m := re.search(r"## Exercise (\d\d\.\d).*?about (\d+) minutes", cell.source, re.S):
                found[m.group(1)] = int(m.group(2))
    return found


def test_the_lab_plan_adds_up_to_90_minutes_and_names_real_exercises():
    """exercises/LAB.md (the 90-minute handout): its rows' minutes add up to 90 and start where
    the previous row ends; each exercise it names exists, with the minutes its notebook
    estimates; the rest are listed as left for later, with their total."""
    import re

    text = (ROOT / "exercises" / "LAB.md").read_text()
    rows = re.findall(r"^\| (\d):(\d\d) \| (\d+) +\| (.*?) \|", text, re.M)
    assert rows, "no timed rows in LAB.md"
    clock, estimates, in_lab = 0, _estimates(), []
    for hours, minutes, length, what in rows:
        assert int(hours) * 60 + int(minutes) == clock, f"row {what[:40]!r} starts at {hours}:{minutes}, not {clock}"
        clock += int(length)
        for ex in re.findall(r"\*\*(\d\d\.\d)\*\*", what):
            assert ex in EXERCISES, f"LAB.md names {ex}, which is no exercise"
            assert estimates[ex] == int(length), f"{ex}: {length} min in LAB.md, {estimates[ex]} in its notebook"
            in_lab.append(ex)
    assert clock == 90 and re.search(r"\*\*total\*\* \| \*\*90\*\*", text)
    later = text.split("**Left for later**")[1]
    left = [ex for ex in EXERCISES if ex not in in_lab]
    for ex in left:
        a, b = ex.split(".")
        spans = re.findall(rf"{a}\.(\d)(?:-{a}\.(\d))?", later)
        assert any(int(lo) <= int(b) <= int(hi or lo) for lo, hi in spans), f"{ex}: neither in the lab nor left for later"
    assert f"{sum(estimates[ex] for ex in left)} minutes more" in later
