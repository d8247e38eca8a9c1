"""Figures in the paper's style, saved as PNG and PDF under ``figures/<model>/``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() == "agg" or not matplotlib.get_backend():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .results import output_dir  # noqa: E402

sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def save_figure(fig, model: str, name: str) -> list[Path]:
    """Save ``fig`` as ``figures/<model>/<name>.png`` and ``.pdf``; returns both paths."""
    folder = output_dir("figures", model)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:  # a PDF without its creation date: a rerun with the same numbers writes the same bytes
        fig.savefig(path, bbox_inches="tight", dpi=150, metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    return paths


def caption(ax, text: str) -> None:
    """A small note under the axes (model, number of facts, data source)."""
    ax.annotate(text, xy=(0, 0), xycoords="axes fraction", xytext=(0, -34), textcoords="offset points",
                fontsize=7, color="0.35", va="top")


__all__ = ["plt", "sns", "save_figure", "caption"]
