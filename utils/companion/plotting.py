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


# --------------------------------------------------------------------------------------
# One style for every figure: the same colour means the same kind of line everywhere, the
# controls are dashed with their own band, the static baseline dotted, legends outside the data.

SUBJECT = "#c44e52"  # the subject positions (red)
NON_SUBJECT = "#4c72b0"  # the relation / non-subject positions (blue)
LAST = "#55a868"  # the last position (green)
CONTROL = "0.35"  # a control: another subject's attribute set, no intervention ... (grey, dashed)
BASELINE = "#8172b3"  # the static-embedding baseline (purple, dotted): not a grey, so it is not read as the control
CONTROL_STYLE = {"linestyle": "--", "linewidth": 1.3}
BASELINE_STYLE = {"linestyle": ":", "linewidth": 1.8}
BAND_ALPHA = 0.15  # every 95% band, curve or control
LEGEND = {"fontsize": 7, "frameon": False, "title": None}
VERDICT_COLOURS = {"holds": "#4daf4a", "partly": "#fdbf6f", "does not hold": "#e41a1c", "not measured": "#d9d9d9"}
"""The ledger figure's colour per verdict (green, amber, red, light grey)."""


def legend_right(ax, handles=None, labels=None):
    """The legend to the right of the axes, never over the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), **LEGEND)


def legend_below(fig_or_ax, handles, labels, ncol: int = 3, y: float = -0.16):
    """A legend under the axes (or the figure), in ``ncol`` columns, never over the data."""
    return fig_or_ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol, **LEGEND)


def mean_band(frame, x: str, y: str, unit: str = "known_id", n_boot: int = 200, seed: int = 0):
    """Mean of ``y`` per ``x`` with a 95% bootstrap interval over ``unit`` (facts resampled with
    replacement, seeded): the bands of controls drawn by hand match seaborn's for the curves.
    Columns ``x``, ``mean``, ``low``, ``high``; no interval (NaN) with fewer than two facts."""
    import numpy as np
    import pandas as pd

    grid = frame.pivot_table(index=unit, columns=x, values=y)
    values = grid.to_numpy(dtype=float)
    mean = np.nanmean(values, 0) if len(values) else np.full(grid.shape[1], np.nan)
    low = high = np.full_like(mean, np.nan)
    if len(values) >= 2:
        rng = np.random.default_rng(seed)
        draws = np.stack([np.nanmean(values[rng.integers(0, len(values), len(values))], 0) for _ in range(n_boot)])
        low, high = np.nanpercentile(draws, 2.5, 0), np.nanpercentile(draws, 97.5, 0)
    return pd.DataFrame({x: grid.columns.to_numpy(), "mean": mean, "low": low, "high": high})


def draw_band(ax, line, x: str, colour, label: str, style: dict | None = None, band: bool = True):
    """A line from :func:`mean_band` with its band, in the figure style (``style``: a control's or
    the curve's line style)."""
    ax.plot(line[x], line["mean"], color=colour, label=label, **(style or {"linewidth": 2}))
    if band and line["low"].notna().any():
        ax.fill_between(line[x], line["low"], line["high"], color=colour, alpha=BAND_ALPHA, linewidth=0)


def baseline_line(ax, value: float, label: str = "static embedding (baseline)", colour=BASELINE):
    """The static-embedding baseline as a dotted horizontal line."""
    ax.axhline(value, color=colour, label=label, **BASELINE_STYLE)


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

POSITION_COLOURS = {"subject last": SUBJECT, "subject first": "#dd8452", "subject subseq.": "#937860",
                    "input last": LAST, "input first": NON_SUBJECT}
"""Notebook 02's positions: the subject's in warm colours, the last position green, the first blue."""

SOURCE_COLOURS = {"subject": SUBJECT, "non-subject": NON_SUBJECT, "last": LAST, "subject-last": "#dd8452",
                  "subject-other": "#937860"}
"""Notebook 01's blocked sets, in the colours of the positions they hold."""


def _colour(name, table, k):
    return table.get(name, sns.color_palette()[k % 10])


def rate_by_position(data, y: str, *, model: str, title: str, ylabel: str, note: str, order,
                     baseline: float | None = None, control: bool = False, band: bool = True):
    """Notebook 02's curves: one line per position over the layers of ``data`` (rows with
    ``position``, ``layer`` >= 0 and ``y``), each with its 95% band over facts (``band``),
    optionally the static-embedding ``baseline`` (dotted) and the mismatched-subject control of
    "subject last" (column ``control_rate``; dashed, with its band). When no curve ever rises
    above the baseline the figure says so: the measure then finds no enrichment at all."""
    curves = data[data.layer >= 0]
    n = curves.known_id.nunique()
    missing = "" if (n >= 2 or not band) else "; one fact: no confidence band"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    highest = float("-inf")
    for k, position in enumerate(order):
        part = curves[curves.position == position]
        if part.empty:
            continue
        line = mean_band(part, "layer", y)
        highest = max(highest, float(line["mean"].max()))
        main = position == "subject last"
        draw_band(ax, line, "layer", _colour(position, POSITION_COLOURS, k), position,
                  {"linewidth": 2.2 if main else 1.4}, band=band)
    if control:
        part = curves[curves.position == "subject last"]
        line = mean_band(part, "layer", "control_rate") if "control_rate" in part else None
        if line is not None and line["mean"].notna().any():
            draw_band(ax, line, "layer", CONTROL, SUBJECT_LAST_CONTROL, CONTROL_STYLE, band=band)
        else:
            missing += "; no control (it needs two subjects with attribute sets)"
    if baseline is not None and baseline == baseline:
        baseline_line(ax, baseline)
        if highest < baseline:
            missing += ("; the static embedding (dotted) lies above every curve: no position gains attributes "
                        "under this measure")
    handles, labels = ax.get_legend_handles_labels()
    legend_below(ax, handles, labels, ncol=3, y=-0.24)
    integer_layers(ax, "layer (the hidden state entering it; 0 = the embeddings)")
    ax.set(ylabel=ylabel, title=f"{model}: {title}")
    caption(ax, note + (", 95% bands over facts" if band and n >= 2 else "") + missing)
    return fig


def sublayer_knockouts(frame, *, model: str, variant: str, repr_layer: int, top_k: int, note: str):
    """Notebook 02's knockout figure: the attributes rate after ``repr_layer`` (left) and the
    share of facts whose attribute is in the top ``top_k`` (right) per window start, for no
    intervention and MLP / attention windows knocked out, each with its control (dashed, same
    colour, one legend entry each). Windows that reach ``repr_layer`` and so knock out fewer
    layers are shaded: their drop is not comparable with a full window's."""
    hue = ["no intervention", "MLP sublayers", "attention sublayers"]
    palette = dict(zip(hue, [CONTROL, SUBJECT, NON_SUBJECT]))
    palette["no intervention"] = "0.15"
    n = frame.known_id.nunique()
    missing = "" if n >= 2 else "; one fact: no confidence band"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    has_control = False
    for condition in hue:
        part = frame[frame.condition == condition]
        if part.empty:
            continue
        draw_band(axes[0], mean_band(part, "start", "attributes_rate"), "start", palette[condition], condition)
        control = mean_band(part, "start", "control_rate")
        if control["mean"].notna().any():
            has_control = True
            draw_band(axes[0], control, "start", palette[condition], f"{condition}, another subject's set (control)",
                      CONTROL_STYLE)
        top = mean_band(part, "start", "in_top")
        draw_band(axes[1], top, "start", palette[condition], condition, band=False)
    if not has_control:
        missing += "; no control (it needs two subjects with attribute sets)"
    handles, labels = axes[0].get_legend_handles_labels()
    knocked = frame[frame.condition != "no intervention"]
    if "n_knocked" in knocked and len(knocked):
        sizes = knocked.groupby("start").n_knocked.max()
        clipped = sizes[sizes < sizes.max()].index
        for ax in axes:
            for start in clipped:
                ax.axvspan(start - 0.5, start + 0.5, color="0.9", zorder=0, linewidth=0)
        if len(clipped):
            handles.append(Patch(color="0.9"))
            labels.append(f"windows clipped at layer {repr_layer} (fewer layers knocked out)")
    legend_below(fig, handles, labels, ncol=3, y=0.08)
    axes[0].set(ylabel=f"attributes rate after layer {repr_layer} (%)", title="the attributes rate")
    axes[1].set(ylabel=f"attribute token in the top {top_k} (%)", title="the fact's own attribute")
    fig.suptitle(f"{model}: sublayer knockouts ({variant}), read at the last subject token after layer {repr_layer}",
                 fontsize=10)
    for ax in axes:
        integer_layers(ax, "first knocked-out layer of the window")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    caption(axes[0], note + (", 95% bands over facts" if n >= 2 else "") + missing)
    return fig


def information_flow_curves(data, *, model: str, k: int, groups, title: str, note: str, titles=None):
    """Notebook 01's figure: mean relative change per window centre, one panel per group of
    source sets (``titles``: one per panel), 95% bands over facts; each set keeps its colour
    (:data:`SOURCE_COLOURS`) in every panel, and one legend below the panels."""
    errorbar, missing = bands(data.known_id.nunique())
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), sharey=True, squeeze=False)
    palette = {s: _colour(s, SOURCE_COLOURS, i) for i, s in enumerate(dict.fromkeys(x for g in groups for x in g))}
    handles, labels = [], []
    for j, (ax, sets) in enumerate(zip(axes[0], groups)):
        part = data[data.source.isin(sets)]
        sns.lineplot(data=part, x="layer", y="relative_change", hue="source", hue_order=list(sets), palette=palette,
                     errorbar=errorbar, seed=0, ax=ax, linewidth=1.8, err_kws={"alpha": BAND_ALPHA})
        ax.axhline(0, color="0.3", lw=0.8)
        integer_layers(ax, f"centre of the {k}-layer window")
        ax.set_ylabel("% change in prediction probability")
        if titles:
            ax.set_title(titles[j], fontsize=9)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h), labels.append(lab)
        ax.get_legend().remove()
    legend_below(fig, handles, labels, ncol=len(labels), y=0.02)
    fig.suptitle(f"{model}: {title}", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    caption(axes[0][0], note + ("; 95% bands over facts" if not missing else missing))
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


# --------------------------------------------------------------------------------------
# Notebook 04: the models side by side on relative depth, and the ledger as a figure


def _depth_axis(ax, ylabel: str) -> None:
    ax.set(xlabel="relative depth: layer / (layers - 1)", ylabel=ylabel, xlim=(0, 1))
    ax.axhline(0, color="0.3", lw=0.8)


def atlas_attributes(results, names, *, seed: int = 0, n_boot: int = 200):
    """The attributes rate at the last subject token per model on relative depth, one panel
    per model, each with the two lines that say whether the curve means anything: the same
    positions against another subject's attribute set (dashed, with its band: a curve no
    higher than it is not enrichment) and the static-embedding baseline (dotted). ``results``
    are :class:`utils.paper.ledger.ModelResults`; models without the table are left out."""
    from ..paper.rules import depth

    ready = [r for r in results if r.table("attributes_rate") is not None and r.n_layers]
    order = {name: k for k, name in enumerate(names)}
    ready.sort(key=lambda r: order.get(r.model, len(order)))
    if not ready:
        return None
    fig, axes = plt.subplots(1, len(ready), figsize=(4.6 * len(ready) + 0.6, 3.6), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], ready):
        t = r.table("attributes_rate")
        rated = t[t.attributes_rate.notna()]
        last = rated[(rated.position == "subject last") & (rated.layer >= 0)]
        last = last.assign(depth=depth(last.layer, r.n_layers))
        curve = mean_band(last, "depth", "attributes_rate", n_boot=n_boot, seed=seed)
        draw_band(ax, curve, "depth", SUBJECT, "last subject token")
        control = mean_band(last, "depth", "control_rate", n_boot=n_boot, seed=seed)
        if control["mean"].notna().any():
            draw_band(ax, control, "depth", CONTROL, "last subject token, another subject's attribute set (control)",
                      CONTROL_STYLE)
            at = int(curve["mean"].to_numpy().argmax())
            excess = curve["mean"].iloc[at] - control["mean"].iloc[at]
            ax.annotate(f"at the curve's peak: {excess:+.1f} points over the control", xy=(0.02, 0.97),
                        xycoords="axes fraction", va="top", fontsize=7, color="0.2")
        base = rated[rated.layer < 0].attributes_rate
        if len(base):
            baseline_line(ax, float(base.mean()))
        _depth_axis(ax, "attributes rate (%)")
        ax.set_title(f"{r.model} ({r.n_layers} layers, {last.known_id.nunique()} facts)", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # one entry per kind of line, whichever panel has it
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h), labels.append(lab)
    legend_below(fig, handles, labels, ncol=3, y=0.06)
    fig.suptitle("Attributes rate at the last subject token (%), by relative depth, with its control and baseline",
                 y=1.0, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    caption(axes[0][0], "95% bands over facts; attribute sets: the offline proxy unless the model's notebook 02 "
                        "says otherwise")
    return fig


def _window_note(results, names) -> str:
    """The window size of each model's information-flow run, and whether they differ."""
    sizes = {}
    for r in results:
        k = (r.metas.get("information_flow_prepend") or {}).get("params", {}).get("k")
        if k is not None and r.n_layers:
            sizes[r.model] = (int(k), r.n_layers)
    words = "; ".join(f"{m}: {k} of {n} layers" for m, (k, n) in sizes.items())
    if len({k for k, _ in sizes.values()}) > 1:
        return f"windows of different sizes ({words}), each about a fifth of its model's layers"
    return f"windows: {words}" if words else "window sizes unknown"


def atlas_flow(flow, results, names, *, seed: int = 0):
    """Notebook 01's two main curves per model on relative depth (``flow`` is
    :func:`utils.paper.ledger.flow_by_depth` for all models), with the window sizes said."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9), sharey=True)
    for ax, source in zip(axes, ["non-subject", "subject"]):
        sns.lineplot(data=flow[flow.source == source], x="depth", y="relative_change", hue="model", hue_order=names,
                     errorbar=("ci", 95), n_boot=200, seed=seed, ax=ax, err_kws={"alpha": BAND_ALPHA})
        _depth_axis(ax, "% change in prediction probability")
        ax.set_title(f"last position blocked from the {source} positions", fontsize=9)
        ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    legend_right(axes[1], handles, labels)
    fig.suptitle("Information flow: % change in the prediction's probability under attention knockout, "
                 "by relative depth of the window's centre", fontsize=10)
    caption(axes[0], f"95% bands over facts; {_window_note(results, names)}")
    return fig


def atlas_extraction(extraction, results, names, *, seed: int = 0):
    """The attention extraction rate per model on relative depth (``extraction`` is
    :func:`utils.paper.ledger.extraction_by_depth` for all models)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sns.lineplot(data=extraction, x="depth", y="value", hue="model", hue_order=names, errorbar=("ci", 95),
                 n_boot=200, seed=seed, ax=ax, err_kws={"alpha": BAND_ALPHA})
    _depth_axis(ax, "share of facts")
    legend_right(ax)
    ax.set_title("Attention extraction rate by relative depth: the share of facts whose attention update\n"
                 "at the last position ranks the predicted token first", fontsize=9)
    caption(ax, "95% bands over facts; " + "; ".join(f"{r.model}: {r.projection} projection" for r in results))
    return fig


def ledger_figure(long, texts=None):
    """The ledger as a claims x models grid: each cell coloured by its verdict
    (:data:`VERDICT_COLOURS`), holding the main measure's value, its 95% interval and unit and
    the number of facts; a "not measured" cell says why (shortened). ``long`` is the long ledger
    (:func:`utils.paper.ledger.build`, columns claim, model, measure, value, ci_low, ci_high, n,
    verdict, note, unit ...); its first row per claim and model is the main measure. ``texts``
    (claim -> the claim in words, e.g. :data:`utils.paper.rules.CLAIM_TEXT`), when given, labels
    the rows in a few words. Returns the figure and the grid of verdicts (claims x models) it
    drew, for tests."""
    import textwrap

    import pandas as pd

    main = long.drop_duplicates(["claim", "model"])
    claims = list(dict.fromkeys(main.claim))
    models = list(dict.fromkeys(main.model))
    cells = main.set_index(["claim", "model"])
    columns = models
    fig, ax = plt.subplots(figsize=(2.9 * len(columns) + 1.2, 0.62 * len(claims) + 1.3))
    verdicts = pd.DataFrame("", index=claims, columns=models)
    for i, claim in enumerate(claims):
        for j, model in enumerate(columns):
            if (claim, model) not in cells.index:
                colour, text = "white", ""
            else:
                row = cells.loc[(claim, model)]
                verdicts.loc[claim, model] = row.verdict
                colour = VERDICT_COLOURS.get(row.verdict, "white")
                if row.verdict == "not measured":
                    text = textwrap.fill(textwrap.shorten(f"not measured: {row.note}", 88, placeholder=" ..."), 44)
                else:
                    unit = "" if pd.isna(row.get("unit")) or not row.get("unit") else str(row.unit)
                    unit = unit if unit == "%" else f" {unit}"
                    text = (f"{row.verdict}: {row.value:.3g}{unit}\n[{row.ci_low:.3g}, {row.ci_high:.3g}], "
                            f"n = {int(row.n)}")
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white", linewidth=2))
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7.5)
    ax.set(xlim=(0, len(columns)), ylim=(len(claims), 0))
    ax.set_xticks([j + 0.5 for j in range(len(columns))], columns)
    ax.xaxis.tick_top()
    def label(claim):
        words = (texts or {}).get(str(claim))
        return f"claim {claim}" + (f": {textwrap.shorten(words, 70, placeholder=' ...')}" if words else "")

    ax.set_yticks([i + 0.5 for i in range(len(claims))], [textwrap.fill(label(c), 40) for c in claims], fontsize=7.5)
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    handles = [Patch(facecolor=c, label=v) for v, c in VERDICT_COLOURS.items()]
    legend_below(ax, handles, list(VERDICT_COLOURS), ncol=4, y=-0.01)
    ax.set_title("The paper's claims, model by model: verdict (colour), main measure with its 95% interval "
                 "and unit, number of facts", fontsize=9, pad=22)
    return fig, verdicts
