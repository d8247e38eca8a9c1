"""The README's timings, read from the executed notebooks' own records.

A hand-written "about 19 minutes" goes stale with the next run (the README once said so while
the committed run had taken 37). So the README quotes no time of its own: the block between
``<!-- timings:begin -->`` and ``<!-- timings:end -->`` is written here from papermill's per-cell
durations (``metadata.papermill.duration`` of every cell) in ``executed/<model>/*.ipynb``, with
the run's parameters and, when the notebook recorded it, the machine's core count.
``python -m utils.companion.timings`` (part of ``make readme``) rewrites it; ``--check`` exits
with 1 when the README differs from the notebooks, which ``tests/test_readme.py`` asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..paths import PROJECT_ROOT
from .findings import replace_between

README = PROJECT_ROOT / "README.md"
BEGIN, END = "<!-- timings:begin -->", "<!-- timings:end -->"
MODEL = "gemma-3-270m"
"""The run the README times: the reader's edition (the default model's full run)."""


def notebook_timing(path: Path) -> dict:
    """Minutes of one executed notebook (the sum of its cells' papermill durations), its longest
    cell, its parameters and the core count if recorded (``metadata.papermill.cpu_count`` or
    ``metadata.machine.cpu_count``; papermill itself records none)."""
    nb = json.loads(Path(path).read_text())
    durations = [(c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0, i)
                 for i, c in enumerate(nb["cells"])]
    meta = nb.get("metadata", {})
    if not any(d for d, _ in durations):
        raise ValueError(f"{path}: no papermill durations in its cells (was it executed with papermill?)")
    longest, cell = max(durations)
    cores = meta.get("papermill", {}).get("cpu_count") or meta.get("machine", {}).get("cpu_count")
    return {"notebook": Path(path).stem, "seconds": sum(d for d, _ in durations), "longest": longest,
            "longest_cell": cell, "parameters": meta.get("papermill", {}).get("parameters", {}), "cores": cores}


def render(model: str = MODEL, root: Path = PROJECT_ROOT) -> str:
    """The block's text: one row per executed notebook of ``model``, and the total."""
    paths = sorted((root / "executed" / model).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no executed notebooks in executed/{model}/: run `make reproduce MODEL={model}`")
    rows = [notebook_timing(p) for p in paths]
    params = rows[0]["parameters"]
    n = params.get("n_facts", 0)
    run = (f"`make reproduce MODEL={params.get('model', model)}` ({params.get('dataset', '?')}, "
           f"{'all facts' if not n else f'N_FACTS={n}'}, {params.get('device', '?')}, {params.get('dtype', '?')})")
    cores = {r["cores"] for r in rows} - {None}
    machine = (f"on {', '.join(map(str, sorted(cores)))} CPU cores" if cores
               else "the machine's core count is not recorded in the notebooks")
    lines = [f"Times of the committed run {run}, from papermill's per-cell durations in "
             f"`executed/{model}/` ({machine}):", "",
             "| notebook | minutes | longest cell |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['notebook']} | {r['seconds'] / 60:.1f} | {r['longest']:.0f} s (cell {r['longest_cell']}) |")
    lines.append(f"| all | {sum(r['seconds'] for r in rows) / 60:.1f} | |")
    return "\n".join(lines) + "\n"


def updated(readme: str, block: str | None = None) -> str:
    """``readme`` with the text between the markers replaced by ``block`` (default: :func:`render`)."""
    return replace_between(readme, BEGIN, END, render() if block is None else block)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs from the notebooks")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = updated(text)
    if args.check:
        print("README timings match executed/" if new == text else "README timings differ from executed/: make readme")
        return int(new != text)
    README.write_text(new)
    print(f"README timings regenerated from executed/{MODEL}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
