"""What a clean executed notebook must not show a reader, and helpers the notebook tests share."""

from __future__ import annotations

import json
import re
from pathlib import Path

DIRTY = {
    "a progress bar": re.compile(r"\d+%\|[^\n]*\||\d+(\.\d+)?(it/s|s/it)\]"),
    "a progress line left behind": re.compile(r": \d+ of \d+ [\w ]+ \.\.\.$"),  # utils.runs.progress replaces it
    "an absolute path": re.compile(r"(?<![\w.~-])(/work/|/tmp/|/root/|/home/|/Users/|/content/|[A-Z]:\\\\)"),
    "IProgress": re.compile(r"IProgress"),
    "a warning": re.compile(r"Warning"),
    "an error": re.compile(r"Traceback \(most recent call last\)"),
}


def output_texts(cell: dict) -> list[str]:
    """The text a reader sees in a code cell's outputs (streams, plain-text results, errors)."""
    texts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            texts.append("".join(out["text"]) if isinstance(out["text"], list) else out["text"])
        elif out["output_type"] == "error":
            texts.append(f"{out['ename']}: {out['evalue']}\nTraceback (most recent call last)")
        else:
            plain = out.get("data", {}).get("text/plain")
            if plain is not None:
                texts.append("".join(plain) if isinstance(plain, list) else plain)
    return texts


def dirty_outputs(path: Path, allowed: tuple[str, ...] = ()) -> list[str]:
    """Every line of an executed notebook's outputs that shows a reader a progress bar, an
    absolute path, an "IProgress" or other warning, or an error: 'cell N: what: line'.
    ``allowed``: strings removed first (a model loaded from a folder is named by its path)."""
    cells = json.loads(Path(path).read_text())["cells"]
    found = []
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        for text in output_texts(cell):
            for line in text.splitlines():
                for fine in allowed:
                    line = line.replace(fine, "<allowed>")
                for what, pattern in DIRTY.items():
                    if pattern.search(line):
                        found.append(f"code cell {i}: {what}: {line.strip()[:160]}")
    return found


def with_parameters(notebook: Path, target: Path, **values) -> Path:
    """A copy of ``notebook`` whose parameters cell ends by setting ``values`` (what papermill
    would inject, for runners that do not inject: plain nbconvert)."""
    nb = json.loads(notebook.read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    cell["source"] = source.rstrip("\n") + "\n# set by the test\n" + "".join(
        f"{name} = {value!r}\n" for name, value in values.items())
    target.write_text(json.dumps(nb, indent=1))
    return target


def with_solutions(nb, solution: Path):
    """An exercise notebook (nbformat) as a student finishes it: each cell tagged ``exercise`` is
    replaced by an import of that exercise's function from the reference solution file."""
    from utils.companion.exercises import EXERCISES

    for cell in nb.cells:
        if "exercise" in cell.metadata.get("tags", []):
            name = EXERCISES[cell.metadata["exercise"]][0]
            cell.source = (f"import importlib.util\n_spec = importlib.util.spec_from_file_location('solution', "
                           f"{str(solution)!r})\n_solution = importlib.util.module_from_spec(_spec)\n"
                           f"_spec.loader.exec_module(_solution)\n{name} = _solution.{name}")
    return nb
