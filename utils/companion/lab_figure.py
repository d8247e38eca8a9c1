"""The lab's slide figure (``exercises/LAB.md``): the paper's Figure 1 redrawn on one model's own layers.

``python -m utils.companion.lab_figure --model smollm2-135m`` (``make lab-figure MODEL=...``) reads the
model's results (``results/<model>/`` under the output root), locates each step with the ledger's own
helpers (:func:`utils.paper.ledger.recall_steps`: claims 1, 2, 5 and 7), so the slide shows the layers
notebook 04's ledger judges and never numbers typed in, and writes ``figures/<model>/recall_schematic.png``
and ``.pdf``. It needs no model: only the tables notebooks 01-03 wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paper import ledger
from ..runs.results import MixedRunsError
from .plotting import plt, recall_schematic, save_figure

NAME = "recall_schematic"
"""The figure's file name under ``figures/<model>/`` (the book's lab page embeds it)."""
TABLES = ("information_flow_prepend", "attributes_rate", "extraction_layers")
"""The tables the steps are read from (notebooks 01, 02 and 03)."""


def steps(model: str, root: Path | None = None) -> ledger.RecallSteps:
    """The model's steps, from its results folder under ``root`` (default: the output root)."""
    results = ledger.ModelResults.load(model, root, names=TABLES)
    if not results.tables:
        raise FileNotFoundError(f"no results for {results.model} (none of {', '.join(TABLES)}): run notebooks 01-03 "
                                f"for it first (make reproduce MODEL={model})")
    return ledger.recall_steps(results)


def write(model: str, root: Path | None = None) -> list[Path]:
    """Draw the model's schematic and save it (PNG and PDF) under ``figures/<model>/``."""
    located = steps(model, root)
    fig = recall_schematic(located)
    try:
        return save_figure(fig, located.model, NAME)
    finally:
        plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m", help="a model with results (its results/ folder name)")
    args = parser.parse_args(argv)
    try:
        paths = write(args.model)
    except (FileNotFoundError, MixedRunsError) as err:
        sys.exit(f"make lab-figure: {err}")
    print("the lab's slide figure: " + "  ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
