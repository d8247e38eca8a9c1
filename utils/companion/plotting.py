"""Figures in the paper's style, saved as PNG and PDF under ``figures/<model>/``.

One visual language: layers counted from 0 (the paper's figures plot l + 1), every figure
titled with the model, controls in the legend, captions in words, confidence bands only
where there are at least two facts to draw them from (the caption says so otherwise). The
style constants below (SUBJECT, NON_SUBJECT, LAST, CONTROL, BASELINE, CONTROL_STYLE,
BASELINE_STYLE, BAND_ALPHA, LEGEND) are used by every function, so a dashed grey line with a
band is a control and a dotted purple one the static baseline in every figure, and legends sit
beside or below the axes, never over the data. Every figure of notebooks 00-04 is drawn here,
so it can be checked on the committed results tables without running a model.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() == "agg" or not matplotlib.get_backend():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# Two warnings that tell a reader nothing, printed (with the machine's absolute paths) under figures
# of executed notebooks: tokens in scripts the default font lacks (a top-token label in Bengali is
# drawn as a box, which the label's text in the tables shows in full), and matplotlib's colour-bar
# layout dividing by a zero-height extension when a two-slope norm clips a row (the sink's).
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
warnings.filterwarnings("ignore", message="invalid value encountered in scalar multiply", category=RuntimeWarning,
                        module="matplotlib.transforms")

from ..paper.rules import depth  # noqa: E402
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


def _spans(layers) -> str:
    """Layers as runs: [0, 1, 2, 5] -> "0-2, 5"."""
    runs, start = [], None
    for k, layer in enumerate(layers):
        if start is None:
            start = layer
        if k + 1 == len(layers) or layers[k + 1] != layer + 1:
            runs.append(f"{start}-{layer}" if layer != start else f"{layer}")
            start = None
    return ", ".join(runs)


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
    highest = None  # per layer, the highest position's mean
    for k, position in enumerate(order):
        part = curves[curves.position == position]
        if part.empty:
            continue
        line = mean_band(part, "layer", y)
        means = line.set_index("layer")["mean"]
        highest = means if highest is None else np.fmax(highest, means.reindex(highest.index))
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
        below = [] if highest is None else [int(layer) for layer, v in highest.items() if v < baseline]
        if below and len(below) == len(highest):
            missing += ("; the static embedding (dotted) lies above every curve: no position gains attributes "
                        "under this measure")
        elif below:
            missing += (f"; at layers {_spans(below)} the static embedding (dotted) lies above every position's "
                        "curve")
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
    palette = {"no intervention": "0.15", "MLP sublayers": SUBLAYER_COLOURS["MLP"],
               "attention sublayers": SUBLAYER_COLOURS["attention"]}
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
    colours = {"need the subject": SUBJECT, "need only the last position": LAST}
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
        flow.plot(windows.layer, windows.mean_change, color=CONTROL, marker="o", markersize=3, linewidth=1)
        flow.axhline(0, color="0.6", linewidth=0.6)
        flow.set_ylabel("notebook 01: mean change (%) of the prediction,\nlast → subject blocked (window centre)")
        flow.grid(False)
        handles += [Line2D([], [], color=CONTROL, marker="o", markersize=3, linewidth=1),
                    Patch(color="0.85")]
        names += ["notebook 01: last → subject blocked (right axis)", "window centres where that hurts"]
    legend_below(ax, handles, names, ncol=2, y=-0.3)
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
    """The extraction rate per model on relative depth: attention updates (solid, from
    ``extraction``, :func:`utils.paper.ledger.extraction_by_depth` for all models) and, since
    the claim is attention against MLP, each model's MLP updates too (dashed, same colour, read
    from its ``extraction_layers`` table with the same projection)."""
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    palette = dict(zip(names, sns.color_palette()))
    for r in results:
        if r.model not in palette:
            continue
        attn = extraction[extraction.model == r.model]
        if len(attn):
            draw_band(ax, mean_band(attn, "depth", "value", seed=seed), "depth", palette[r.model],
                      f"{r.model}: attention")
        t = r.table("extraction_layers")
        if t is not None and r.n_layers:
            mlp = t[(t.measure == "mlp") & (t.projection == r.projection)]
            if len(mlp):
                mlp = mlp.assign(depth=depth(mlp.layer, r.n_layers))
                draw_band(ax, mean_band(mlp, "depth", "value", seed=seed), "depth", palette[r.model],
                          f"{r.model}: MLP", CONTROL_STYLE)
    _depth_axis(ax, "share of facts")
    legend_right(ax)
    ax.set_title("Extraction rate by relative depth: the share of facts whose attention (solid) or MLP (dashed)\n"
                 "update at the last position ranks the predicted token first", fontsize=9)
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


# --------------------------------------------------------------------------------------
# Notebooks 00, 01 and 03: the figures that were drawn in the notebooks' own cells

SUBLAYER_COLOURS = {"attention": "#4c72b0", "MLP": "#dd8452"}
SPACE = "\u2423"  # a visible space: a token's leading space shown, not hidden in quotes or brackets


def token_labels(tokens, subject_positions) -> list[str]:
    """Row labels for a per-token figure: the index, the token with its leading or trailing
    spaces shown as ``␣`` (no quotes, no brackets), and "(subject)" on the subject's tokens."""
    subject = set(subject_positions)
    out = []
    for i, token in enumerate(tokens):
        text = token.replace("\n", "\\n")
        stripped = text.strip(" ")
        lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
        shown = SPACE * lead + stripped + SPACE * trail if stripped else SPACE * len(text)
        out.append(f"{i}: {shown}" + ("  (subject)" if i in subject else ""))
    return out


def known_by_relation(by_relation, *, model: str, note: str):
    """Notebook 00's accuracy per relation: one bar per relation (``by_relation`` indexed by
    relation id with ``facts``, ``known``, ``accuracy``, ``example``), "known of facts" written
    at every bar, and a bar of zero drawn as a visible tick so it does not read as a missing row."""


    rows = by_relation.reset_index()
    fig, ax = plt.subplots(figsize=(7.2, max(2.6, 0.36 * len(rows) + 1.4)))
    y = np.arange(len(rows))
    ax.barh(y, rows.accuracy, color=NON_SUBJECT, height=0.7)
    zero = rows.accuracy == 0
    ax.scatter(np.zeros(zero.sum()), y[zero], marker="|", s=120, color=NON_SUBJECT, linewidths=2, zorder=3)
    for k, row in rows.iterrows():
        ax.annotate(f"{int(row.known)} of {int(row.facts)}", xy=(row.accuracy, k), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=7, color="0.25")
    labels = [textwrap.shorten(f"{r[rows.columns[0]]}  {str(r.example).replace('{}', '_')}", 60, placeholder=" ...")
              for _, r in rows.iterrows()]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set(xlim=(0, 1.15), ylim=(len(rows) - 0.5, -0.5), xlabel="top-1 accuracy: share of the relation's facts known",
           title=f"{model}: known facts by relation")
    ax.set_ylabel("relation (Wikidata id, example template)", fontsize=8)
    ax.grid(axis="y", visible=False)
    caption(ax, note + "; at each bar: known facts of the relation's facts")
    return fig


def flow_example(heat, *, model: str, title: str, k: int, has_sink: bool, note: str = ""):
    """Notebook 01's one-fact map: % change of the prediction's probability per blocked
    position (rows, labelled by :func:`token_labels`) and window centre, on a diverging scale
    centred at 0 whose two sides are scaled separately, so a small increase shows as clearly as
    a large drop. With an attention sink its row is left out of the scale (blocking the sink,
    which every position attends to, hurts at every layer and would wash out the rest)."""

    others = heat.iloc[1:] if has_sink else heat
    low, high = min(-1.0, float(others.min().min())), max(1.0, float(others.max().max()))
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(heat) + 1.4))
    sns.heatmap(heat, cmap="RdBu", norm=TwoSlopeNorm(vcenter=0, vmin=low, vmax=high), ax=ax,
                cbar_kws={"label": "% change in prediction probability\n(red: drops, blue: rises)"})
    ax.set(xlabel=f"centre of the {k}-layer window", ylabel="blocked position (␣ marks a space)",
           title=f"{model}: {title}")
    ax.tick_params(axis="y", labelsize=8)
    bar = ax.collections[0].colorbar  # ticks on both sides: the two sides have their own scales
    bar.set_ticks(sorted({round(float(v), 1) for v in np.r_[np.linspace(low, 0, 4), np.linspace(0, high, 3)]}))
    sink = ""
    if has_sink and heat.iloc[0].min() < low:
        sink = (f"; row 0 is the attention sink: blocking it hurts everywhere (down to {heat.iloc[0].min():.0f}%), "
                "so the colours are scaled to the other rows")
    caption(ax, "the last position blocked from one position at a time; drops and rises have their own colour scales"
            + sink + (f"; {note}" if note else ""))
    return fig


PROJECTION_WORDS = {"paper": "the paper's projection: the embedding matrix, no final norm",
                    "logit_lens": "the logit lens: the final norm, then the unembedding"}


def extraction_rate_by_layer(events, *, model: str, note: str):
    """Notebook 03's extraction rate per layer for attention and MLP updates, one panel per
    projection (``events``: rows with ``projection``, ``sublayer``, ``layer``, ``value``),
    95% bands over facts; markers only where the rate is above zero, so the many empty layers
    are a plain line."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6), sharey=True)
    for ax, mode in zip(axes, ["paper", "logit_lens"]):
        part = events[events.projection == mode]
        for name, colour in SUBLAYER_COLOURS.items():
            rows = part[part.sublayer == name]
            if rows.empty:
                continue
            line = mean_band(rows, "layer", "value")
            draw_band(ax, line, "layer", colour, f"{name} updates")
            shown = line[line["mean"] > 0]
            ax.plot(shown["layer"], shown["mean"], "o", color=colour, markersize=4)
        integer_layers(ax)
        ax.set_title(PROJECTION_WORDS[mode], fontsize=9)
    axes[0].set_ylabel("extraction rate (share of facts)")
    legend_right(axes[1])
    fig.suptitle(f"{model}: extraction events at the last position (the update ranks the prediction first)",
                 fontsize=10)
    fig.tight_layout()
    caption(axes[0], note + "; 95% bands over facts")
    return fig


BLOCKED_KEY = {
    "none": "nothing blocked",
    "subject": "every subject token",
    "subject-last": "the last subject token",
    "non-subject ex. last": "the non-subject tokens, not the last",
    "non-subject": "the non-subject tokens and the last itself",
    "last": "the last position itself",
    "subject-last + last": "the last subject token and the last",
    "all but first": "every token but the first",
    "all but last": "every token but the last",
    "all but subject-last": "every token but the last subject token",
    "all but subject-last + last": "every token but those two",
    "all": "every token",
}
"""The edges from the last position that each of notebook 03's conditions removes (the
official code's labels on the left)."""

VARIANT_WORDS = {"official": "official: softmax applied again (the paper's code)",
                 "renormalised": "renormalised: the kept weights rescaled to sum to 1"}


def extraction_blocked(shares, order, *, model: str, n_events: int, note: str):
    """Notebook 03's blocking at the extracting layer: per condition (rows, with a key to what
    each blocks) and variant (the paper's named), the share of the ``n_events`` attention
    extraction events that survive; ``shares`` has ``condition``, ``variant``, ``value``."""

    conditions = [c for c in order if c in set(shares.condition)]
    variants = [v for v in VARIANT_WORDS if v in set(shares.variant)]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(conditions) + 1.6))
    y = np.arange(len(conditions))
    height = 0.8 / max(len(variants), 1)
    for j, (variant, colour) in enumerate(zip(variants, [NON_SUBJECT, "#dd8452"])):
        values = shares[shares.variant == variant].set_index("condition").value.reindex(conditions)
        bars = ax.barh(y + (j - (len(variants) - 1) / 2) * height, values, height=height, color=colour,
                       label=VARIANT_WORDS[variant])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_yticks(y, [f"{c}  ({BLOCKED_KEY.get(c, c)})" for c in conditions], fontsize=7.5)
    ax.set(xlim=(0, 1.12), ylim=(len(conditions) - 0.5, -0.5),
           xlabel=f"share of the {n_events} extraction events that survive (denominator: events, not facts)",
           ylabel="edges from the last position blocked", title=f"{model}: blocking at the extracting layer")
    ax.grid(axis="y", visible=False)
    legend_below(ax, *ax.get_legend_handles_labels(), ncol=2, y=-0.12)
    caption(ax, note)
    return fig


def extraction_patched(patched, *, model: str, unpatched: float, sources, note: str):
    """Notebook 03's patching: the share of facts where attention still extracts after the
    positions in ``positions`` get the hidden state of an early ``source_layer``; the source
    layers (e.g. 0, 1, 2, 4, 8) on a categorical axis, evenly spaced, as the sweep chose them;
    the unpatched share dashed (the control); the legend beside the axes."""
    order = list(sources)
    where = {layer: k for k, layer in enumerate(order)}
    frame = patched.assign(slot=patched.source_layer.map(where))
    fig, ax = plt.subplots(figsize=(6.6, 3.6))
    colours = {"subject": SUBJECT, "non-subject": NON_SUBJECT, "last": LAST}
    for k, (positions, part) in enumerate(frame.groupby("positions", sort=False)):
        line = mean_band(part, "slot", "extracted")
        colour = colours.get(positions, sns.color_palette()[k + 3])
        draw_band(ax, line, "slot", colour, f"{positions} positions patched")
        ax.plot(line["slot"], line["mean"], "o", color=colour, markersize=4)
    ax.axhline(unpatched, color=CONTROL, label="no patching (control)", **CONTROL_STYLE)
    ax.set_xticks(range(len(order)), [str(s) for s in order])
    ax.set(xlabel="patched with the hidden state entering layer (0 = the embeddings; not evenly spaced)",
           ylabel="share of facts where attention extracts", title=f"{model}: extraction after patching early states")
    legend_right(ax)
    caption(ax, note + "; 95% bands over facts")
    return fig


def extraction_heads(by_head, *, model: str, n_heads: int, n_events: int, note: str):
    """Notebook 03's heads: per head (rows) and layer (columns, only layers where some head
    extracts alone), the number of events the head carries; a thick line between two columns
    whose layers are not adjacent, and the axis says so."""
    counts = by_head.pivot(index="head", columns="layer", values="events").fillna(0)
    counts = counts.reindex(range(n_heads), fill_value=0).astype(int).sort_index(axis=1)
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * counts.shape[1] + 2.5), max(3.5, 0.4 * n_heads + 1.5)))
    sns.heatmap(counts, annot=True, fmt="d", cmap="Purples", cbar=False, ax=ax, annot_kws={"fontsize": 10})
    layers = list(counts.columns)
    gaps = [j for j in range(1, len(layers)) if layers[j] - layers[j - 1] > 1]
    for j in gaps:
        ax.axvline(j, color="black", linewidth=3)
    label = "layer" + (" (only layers with such events; a thick line: layers skipped)" if gaps else "")
    ax.set(xlabel=label, ylabel="head", title=f"{model}: extraction events a single head carries")
    caption(ax, f"{n_events} attention extraction events; {note}")
    return fig


def extraction_subject_rank(ranks, *, model: str, note: str):
    """Notebook 03's rank of the extracted attribute in the last-subject representation, at
    the output and at the input of the extracting layer: step histograms on the same
    logarithmic bins, the legend beside the axes."""

    labels = {"subject_rank": "output of layer ℓ (official)", "subject_rank_input": "input of layer ℓ"}
    frame = ranks.assign(rank=ranks.value + 1, state=ranks.measure.map(labels))
    edges = np.logspace(0, np.log10(max(float(frame["rank"].max()), 10.0)) + 1e-9, 25)
    fig, ax = plt.subplots(figsize=(6.6, 3.3))
    lines = [(labels["subject_rank"], SUBJECT, "-"), (labels["subject_rank_input"], CONTROL, "--")]
    for name, colour, style in lines:
        part = frame[frame.state == name]
        if len(part):
            ax.hist(part["rank"], bins=edges, histtype="step", color=colour, linestyle=style, linewidth=1.6,
                    label=name)
    ax.set_xscale("log")
    ax.set(xlabel="rank of the attribute + 1 (log scale; the same bins for both)", ylabel="extraction events",
           title=f"{model}: the attribute in the last-subject representation")
    legend_right(ax)
    caption(ax, note)
    return fig


__all__ = ["BASELINE", "CONTROL", "LAST", "NON_SUBJECT", "SUBJECT", "VERDICT_COLOURS", "atlas_attributes",
           "atlas_extraction", "atlas_flow", "bands", "caption", "extraction_blocked", "extraction_heads",
           "extraction_patched", "extraction_rate_by_layer", "extraction_subject_rank", "flow_example",
           "information_flow_curves", "information_flow_sink", "integer_layers", "known_by_relation", "ledger_figure",
           "mean_band",
           "mechanism_by_layer", "plt", "rate_by_position", "save_figure", "sns", "sublayer_knockouts",
           "token_labels"]


def information_flow_sink(both, *, model: str, k: int):
    """Notebook 01's two sink choices (rows, column ``sets``) by subject placement (columns,
    ``subject``), in the main figure's colours and legend. Where the two choices give the same
    curves (a tokenizer that adds no sink token, say) one row is drawn and the caption says
    so, instead of a second identical row. Each panel's title gives its number of facts."""
    rows = list(dict.fromkeys(both.sets))
    means = {r: both[both.sets == r].groupby(["subject", "source", "layer"]).relative_change.mean() for r in rows}
    same = len(rows) == 2 and means[rows[0]].index.equals(means[rows[1]].index) and np.allclose(
        means[rows[0]].to_numpy(), means[rows[1]].to_numpy(), equal_nan=True)
    shown = rows[:1] if same else rows
    cols = list(dict.fromkeys(both.subject))
    sources = list(dict.fromkeys(both.source))
    palette = {s: _colour(s, SOURCE_COLOURS, i) for i, s in enumerate(sources)}
    fig, axes = plt.subplots(len(shown), len(cols), figsize=(4.8 * len(cols), 3.1 * len(shown) + 0.6), sharey=True,
                             squeeze=False)
    for i, row in enumerate(shown):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            part = both[(both.sets == row) & (both.subject == col)]
            n = part.known_id.nunique()
            sns.lineplot(data=part, x="layer", y="relative_change", hue="source", hue_order=sources, palette=palette,
                         errorbar=("ci", 95) if n >= 2 else None, seed=0, ax=ax, linewidth=1.8,
                         err_kws={"alpha": BAND_ALPHA}, legend=(i == 0 and j == 0))
            ax.axhline(0, color="0.3", lw=0.8)
            integer_layers(ax, f"centre of the {k}-layer window")
            ax.set_ylabel("% change in prediction probability" if j == 0 else "")
            ax.set_title(f"{row}\nsubject {col}: {n} facts{' (no band)' if n < 2 else ''}", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if axes[0][0].get_legend():
        axes[0][0].get_legend().remove()
    legend_below(fig, handles, labels, ncol=len(labels), y=0.02)
    fig.suptitle(f"{model}: the sink kept out of the sets vs the official sets", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    note = f"{both.known_id.nunique()} facts; 95% bands over facts"
    if same:
        note += f"; the two sink choices give the same curves here, so one row is shown ({' = '.join(rows)})"
    caption(axes[-1][0], note)
    return fig


# --------------------------------------------------------------------------------------
# The lab's slide figure: the paper's Figure 1 on one model's own layers

SCHEMATIC_COLOURS = {"enrichment": SOURCE_COLOURS["subject-last"], "relation": SOURCE_COLOURS["non-subject"],
                     "subject": SOURCE_COLOURS["subject"], "extraction": LAST}
"""The steps in the colours of the positions they are about: the last subject token (orange),
the relation's positions (blue), the subject's (red), the last position, where attention
writes the attribute (green)."""
SCHEMATIC_MISSING = {"enrichment": "attributes_rate.csv (notebook 02)",
                     "relation": "information_flow_prepend.csv (notebook 01)",
                     "subject": "information_flow_prepend.csv (notebook 01)",
                     "extraction": "extraction_layers.csv (notebook 03)"}
SCHEMATIC_ROW = 1.45
"""The height of a step's row (its title, track and two lines of numbers), in axis units."""
SCHEMATIC_BOTTOM = -1.0


def _schematic_marker(ax, layer: int, y: float, colour, gid: str, filled: bool = True, size: float = 30):
    """A step's layer as a large circle with the layer's number in it, and a guide down to the axis."""
    ax.plot([layer, layer], [y, SCHEMATIC_BOTTOM], color=colour, linewidth=1.2, linestyle=":", alpha=0.5, zorder=0)
    ax.plot([layer], [y], "o", markersize=size, color=colour if filled else "white", markeredgecolor=colour,
            markeredgewidth=2.5, zorder=3, gid=gid)
    ax.annotate(str(layer), (layer, y), ha="center", va="center", fontsize=size * 0.5, fontweight="bold",
                color="white" if filled else colour, zorder=4)


def _schematic_row(ax, y: float, title: str, detail: str, colour, n_layers: int, width: int) -> None:
    """A step's track across the layers, its title (the paper's words) above, the numbers below
    (wrapped to ``width`` characters, on white, so the guides pass behind them)."""
    ax.plot([-0.5, n_layers - 0.5], [y, y], color="0.85", linewidth=3, solid_capstyle="round", zorder=0)
    ax.annotate(title, (-0.5, y + 0.3), fontsize=17, fontweight="bold", color=colour, va="bottom", zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.annotate(textwrap.fill(detail, width), (-0.5, y - 0.3), fontsize=12.5, color="0.3", va="top", zorder=5,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


def _schematic_enrichment(ax, y: float, peaks, n_layers: int) -> str:
    colour = SCHEMATIC_COLOURS["enrichment"]
    first, last = peaks.band
    ax.add_patch(plt.Rectangle((first - 0.5, y - 0.12), last - first + 1, 0.24, color=colour, alpha=0.22,
                               linewidth=0, zorder=1))
    if peaks.overall_peak != peaks.peak:
        _schematic_marker(ax, peaks.overall_peak, y, colour, "enrichment overall peak", filled=False, size=24)
    _schematic_marker(ax, peaks.peak, y, colour, "enrichment")
    return (f"attributes rate of the last subject token: highest in the early-to-middle band (shaded, layers "
            f"{first}-{last}) entering layer {peaks.peak} (0: the embeddings), {peaks.peak_rate:.1f}% (static embedding "
            f"{peaks.baseline:.1f}%); over all layers at layer {peaks.overall_peak}; {peaks.n_facts} facts")


def _schematic_dip(ax, y: float, step: str, dip, window: int | None, words: str) -> str:
    _schematic_marker(ax, dip.layer, y, SCHEMATIC_COLOURS[step], step)
    windows = f"{window}-layer windows, " if window else ""
    return (f"blocking the last position from {words} hurts most at layer {dip.layer}: {dip.change:+.0f}% for the "
            f"prediction ({windows}{dip.n_facts} facts)")


def _schematic_extraction(ax, y: float, steps) -> str:
    colour, events, at = SCHEMATIC_COLOURS["extraction"], steps.extraction_events, steps.extraction_layer
    for layer, count in events.items():
        if layer != at:
            _schematic_marker(ax, int(layer), y, colour, "extraction other", filled=False,
                              size=max(18.0, 30 * (count / events.max()) ** 0.5))
    _schematic_marker(ax, at, y, colour, "extraction")
    where = ", ".join(f"{layer}: {count}" for layer, count in events.items())
    return (f"{events[at]} of {events.sum()} attention extraction events at layer {at} (by layer: {where}); "
            f"{steps.n_extraction_facts} facts, {steps.projection} projection")


def _order_words(steps) -> str:
    """The located layers against the paper's order, in words (what the caption says)."""
    if steps.papers_order is None:
        return "a step is not measured, so the paper's order cannot be read here"
    layers = (f"relation {steps.relation.layer}, subject {steps.subject.layer}, extraction "
              f"{steps.extraction_layer}")
    if steps.papers_order:
        return f"in the paper's order: the relation arrives before the subject, extraction not before it ({layers})"
    return (f"not the paper's order ({layers}; the paper: the relation before the subject, extraction not before "
            "the subject): the layers are drawn where this model has them")


def recall_schematic(steps):
    """The paper's Figure 1 as a slide, on one model's own layers: where the last subject token
    is enriched, where the relation and then the subject reach the last position, and where
    attention extracts the attribute. ``steps`` is :func:`utils.paper.ledger.recall_steps`, so
    every layer drawn is the one the ledger locates (claims 1, 2, 5, 7); a step whose table is
    missing is drawn as "not measured", and a model whose layers break the paper's order is
    drawn as it is, the caption saying so. Each step's main marker carries the step's name as
    its ``gid`` (tests read the drawn layers back)."""
    n_layers, width = steps.n_layers, max(13.0, 0.42 * steps.n_layers + 2)
    fig, ax = plt.subplots(figsize=(width, 9.0))
    chars = int(0.78 * width * 72 / (12.5 * 0.55))  # a detail line about as wide as the axes
    rows = [("enrichment", "subject enrichment (MLPs, last subject token)", steps.enrichment),
            ("relation", "relation propagation to the last position", steps.relation),
            ("subject", "the subject reaches the last position (attention)", steps.subject),
            ("extraction", "attribute extraction (attention heads)", steps.extraction_layer)]
    for k, (step, title, located) in enumerate(rows):
        y = SCHEMATIC_ROW * (len(rows) - 1 - k)
        if located is None:
            layer, detail = "", f"not measured: {SCHEMATIC_MISSING[step]} is missing"
        elif step == "enrichment":
            layer, detail = f": layer {located.peak}", _schematic_enrichment(ax, y, located, n_layers)
        elif step == "extraction":
            layer, detail = f": layer {located}", _schematic_extraction(ax, y, steps)
        else:
            words = "the relation's positions" if step == "relation" else "the subject"
            layer, detail = f": layer {located.layer}", _schematic_dip(ax, y, step, located, steps.window, words)
        _schematic_row(ax, y, title + layer, detail, SCHEMATIC_COLOURS[step], n_layers, chars)
    ax.set(xlim=(-0.9, n_layers - 0.1), ylim=(SCHEMATIC_BOTTOM, SCHEMATIC_ROW * (len(rows) - 1) + 0.75), yticks=[])
    ax.set_xticks(range(n_layers))
    ax.tick_params(axis="x", labelsize=12)
    ax.set_xlabel(f"layer (0 to {n_layers - 1}; the paper's figures count from 1)", fontsize=14)
    ax.grid(False)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{steps.model} ({n_layers} layers): where the paper's steps of recall happen", fontsize=20,
                 loc="left", pad=14)
    fig.text(0.01, 0.0, textwrap.fill(_schematic_sources(steps), int(chars * 12.5 / 10.5)), fontsize=10.5,
             color="0.35", va="top")
    return fig


def _schematic_sources(steps) -> str:
    return (f"On {steps.model}: {_order_words(steps)}. From results/{steps.model}/: relation and "
            "subject from information_flow_prepend (notebook 01: the window centre where blocking the last position "
            "hurts most, claims 1-2); enrichment from attributes_rate (notebook 02: claim 5's peaks of the last subject "
            "token's rate); extraction from extraction_layers (notebook 03: the layer with the most attention "
            "extraction events, claim 7's events). Located by utils.paper.ledger, as notebook 04's ledger locates "
            "them (its verdicts say which steps hold); `make lab-figure MODEL=...` redraws it.")


__all__ += ["recall_schematic"]
