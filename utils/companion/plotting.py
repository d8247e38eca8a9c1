"""Figures in the paper's style, saved as PNG and PDF under ``figures/<model>/``.

One visual language: layers counted from 0 (the paper's figures plot l + 1), every figure
titled with the model, controls in the legend, captions in words, confidence bands only
where there are at least two facts to draw them from (the caption says so otherwise).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() == "agg" or not matplotlib.get_backend():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..runs.results import output_dir  # noqa: E402

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


def bands(n_facts: int):
    """Seaborn's 95% bootstrap band over facts, or none (and a note) with fewer than two facts."""
    return (("ci", 95), "") if n_facts >= 2 else (None, "; one fact: no confidence band")


def integer_layers(ax, label: str = "layer") -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


SUBJECT_LAST_CONTROL = "subject last, another subject's attribute set (control)"


def rate_by_position(data, y: str, *, model: str, title: str, ylabel: str, note: str, order,
                     baseline: float | None = None, control: bool = False, band: bool = True):
    """Notebook 02's curves: one line per position over the layers of ``data`` (rows with
    ``position``, ``layer`` >= 0 and ``y``), optionally the static-embedding ``baseline`` and
    the mismatched-subject control of "subject last" (column ``control_rate``)."""
    curves = data[data.layer >= 0]
    errorbar, missing = bands(curves.known_id.nunique()) if band else (None, "")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    sns.lineplot(data=curves, x="layer", y=y, hue="position", style="position", hue_order=order, style_order=order,
                 errorbar=errorbar, n_boot=200, seed=0, linewidth=2, ax=ax)
    if baseline is not None:
        ax.axhline(baseline, color="0.4", linestyle=":", linewidth=1.5, label="static embedding")
    if control:
        line = curves[curves.position == "subject last"].groupby("layer").control_rate.mean()
        if line.notna().any():
            ax.plot(line.index, line.values, color="0.5", linewidth=1, linestyle="--", label=SUBJECT_LAST_CONTROL)
        else:
            missing += "; no control (it needs two subjects with attribute sets)"
    ax.legend(title="", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    integer_layers(ax, "layer (hidden state entering it; 0 = the embeddings)")
    ax.set(ylabel=ylabel, title=f"{model}: {title}")
    caption(ax, note + missing)
    return fig


def sublayer_knockouts(frame, *, model: str, variant: str, repr_layer: int, top_k: int, note: str):
    """Notebook 02's knockout figure: the attributes rate at ``repr_layer`` (left) and the
    share of facts whose attribute is in the top ``top_k`` (right) per window start, for no
    intervention and MLP / attention windows knocked out; dotted: the control."""
    hue = ["no intervention", "MLP sublayers", "attention sublayers"]
    palette = dict(zip(hue, sns.color_palette()))
    errorbar, missing = bands(frame.known_id.nunique())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    sns.lineplot(data=frame, x="start", y="attributes_rate", hue="condition", style="condition", hue_order=hue,
                 style_order=hue, palette=palette, errorbar=errorbar, n_boot=200, seed=0, linewidth=2, ax=axes[0])
    controls = frame.groupby(["condition", "start"]).control_rate.mean()
    for condition, line in controls.groupby(level="condition"):
        line = line.droplevel("condition")
        axes[0].plot(line.index, line.values, color=palette[condition], linewidth=0.9, alpha=0.7, linestyle=":")
    handles, labels = axes[0].get_legend_handles_labels()
    if controls.notna().any():
        handles.append(Line2D([], [], color="0.4", linewidth=0.9, linestyle=":"))
        labels.append("dotted: the same, another subject's set (control)")
    else:
        missing += "; no control (it needs two subjects with attribute sets)"
    axes[0].get_legend().remove()
    fig.legend(handles, labels, title="", fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.1), ncol=4,
               frameon=False)
    axes[0].set(ylabel=f"attributes rate at the output of layer {repr_layer} (%)",
                title=f"{model}: sublayer knockouts ({variant})")
    sns.lineplot(data=frame, x="start", y="in_top", hue="condition", style="condition", hue_order=hue,
                 style_order=hue, palette=palette, errorbar=None, linewidth=2, ax=axes[1], legend=False)
    axes[1].set(ylabel=f"attribute token in the top {top_k} (%)", title=f"{model}: the fact's own attribute")
    for ax in axes:
        integer_layers(ax, "first knocked-out layer of the window")
    caption(axes[0], note + missing)
    return fig


def information_flow_curves(data, *, model: str, k: int, groups, title: str, note: str):
    """Notebook 01's figure: mean relative change per window centre, one panel per group of
    source sets, 95% bands over facts."""
    errorbar, missing = bands(data.known_id.nunique())
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True, squeeze=False)
    for ax, sets in zip(axes[0], groups):
        part = data[data.source.isin(sets)]
        sns.lineplot(data=part, x="layer", y="relative_change", hue="source", style="source", hue_order=list(sets),
                     style_order=list(sets), errorbar=errorbar, seed=0, ax=ax)
        ax.axhline(0, color="0.3", lw=0.8)
        integer_layers(ax, f"centre of the {k}-layer window")
        ax.set_ylabel("% change in prediction probability")
        sns.move_legend(ax, "lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, title=None, frameon=False)
    fig.suptitle(f"{model}: {title}", y=1.04)
    caption(axes[0][0], note + missing)
    return fig


__all__ = ["bands", "caption", "information_flow_curves", "integer_layers", "plt", "rate_by_position",
           "save_figure", "sns", "sublayer_knockouts"]


def mechanism_by_layer(mechanism, windows, *, model: str, n_layers: int, note: str):
    """Section 3 meets section 5 on one layer axis: notebook 01's mean change of the
    prediction's probability when the last position cannot attend to the subject (a line over
    window centres, the windows that hurt shaded), and, at each extracting layer, the share of
    its events that need the subject and the share that need only the last position (bars,
    95% intervals, the number of events written above). ``mechanism`` is
    :func:`utils.paper.by_layer.mechanism_by_layer`, ``windows`` its ``hurting_windows``
    (or None when notebook 01 has not run)."""
    per_layer = mechanism[mechanism.layer >= 0]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.38 * n_layers + 2), 3.8))
    width = 0.38
    colours = {"need the subject": "C3", "need only the last position": "C0"}
    labels = {"need the subject": "events that need the subject (blocked last → subject: stop)",
              "need only the last position": "events that need only the last position (all but last: survive)"}
    for k, (column, colour) in enumerate(colours.items()):
        x = per_layer.layer + (k - 0.5) * width
        y = per_layer[column]
        err = [(y - per_layer[f"{column} ci_low"]).clip(lower=0), (per_layer[f"{column} ci_high"] - y).clip(lower=0)]
        ax.bar(x, y, width=width, color=colour, alpha=0.8, yerr=err, capsize=2, label=labels[column])
    for layer, events in zip(per_layer.layer, per_layer.events):
        ax.annotate(f"{events}", xy=(layer, 1.02), ha="center", fontsize=7, color="0.3")
    ax.set(xlim=(-0.7, n_layers - 0.3), ylim=(0, 1.1), xlabel="layer",
           ylabel="share of the layer's extraction events",
           title=f"{model}: where attention extracts, and what it needs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = ax.get_legend_handles_labels()
    if windows is not None and len(windows):
        for centre in windows[windows.hurts].layer:
            ax.axvspan(centre - 0.5, centre + 0.5, color="0.85", zorder=0)
        flow = ax.twinx()
        flow.plot(windows.layer, windows.mean_change, color="0.2", marker="o", markersize=3, linewidth=1)
        flow.axhline(0, color="0.6", linewidth=0.6)
        flow.set_ylabel("notebook 01: mean change (%) of the prediction,\nlast → subject blocked (window centre)")
        flow.grid(False)
        handles += [Line2D([], [], color="0.2", marker="o", markersize=3, linewidth=1),
                    Patch(color="0.85")]
        names += ["notebook 01: last → subject blocked (right axis)", "window centres where that hurts"]
    ax.legend(handles, names, fontsize=6.5, loc="upper left", bbox_to_anchor=(0, -0.3), ncol=2, frameon=False)
    caption(ax, f"{note}; above each layer: its number of extraction events")
    return fig, ax
