"""The paper's claims, model by model: the claims ledger of notebook 04.

The ledger puts the paper's claims side by side for every model that has results: per claim
and model, the measured effect with its unit, a 95% bootstrap confidence interval over facts,
the number of facts, and a verdict (holds / partly / does not hold / not measured) from a rule
written down in :mod:`utils.paper.rules` before any number is computed, and the same for every
model. It is the only place a claim is judged: each section notebook ends by printing this
module's rows for its own claims and model (:func:`section_report`), so a reader of 03 and a
reader of 04 get the same answer.

Why it is built this way:

* **Raw tables only.** Every claim is recomputed from the tidy per-fact tables the section
  notebooks write (:data:`TABLES`), never from their summaries, whose conventions (some
  number layers from 1) are not the ledger's.
* **Relative depth.** Models of 18, 30 or 48 layers compare only on a common axis: layer l
  (0-based, as everywhere in the project) of an L-layer model sits at depth l / (L - 1),
  0 for the first layer and 1 for the last. "Early", "upper" ... are bands of that depth
  (:data:`BANDS`), so one rule serves every model.
* **Bootstrap over facts.** A fact contributes many rows (layers, positions, windows) that
  are not independent of each other, so the intervals resample *facts* with replacement
  (:func:`bootstrap`, seeded) and recompute each statistic from the resampled facts' rows.
* **Verdicts from written rules** (:data:`utils.paper.rules.RULES`, printed first by the
  notebook), applied by the claim functions below and nowhere else.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..paths import PROJECT_ROOT, output_root
from ..runs.results import MixedRunsError, check_same_run, load_meta, load_table, model_slug
from .rules import (
    BANDS,
    BARELY,
    CLAIM_TEXT,
    EARLY_WINDOWS,
    FEW,
    HEAD_EXCESS,
    HURTS,
    LAYER_SHARE,
    MIN_FACTS,
    MLP_DROP,
    MOST,
    N_BOOT,
    ORDER_GAP,
    RANK_TOP,
    SECTIONS,
    SEED,
    TABLES,
    depth,
    rule_words,
)

# --------------------------------------------------------------------------------------
# Results of one model, and what a claim returns


@dataclass
class ModelResults:
    """The raw tables of one model (absent ones missing from ``tables``), its depth, and
    the projection its extraction tables used."""

    model: str
    tables: dict[str, pd.DataFrame]
    n_layers: int | None = None
    projection: str = "logit_lens"
    metas: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, model: str, root: Path | None = None, names=None, anchor: str | None = None) -> "ModelResults":
        """The model's tables (all of :data:`TABLES`, or only ``names``: a section notebook
        reads its own, as the others may still be from an earlier run), refused
        (:class:`utils.runs.results.MixedRunsError`) when they come from different runs or
        models: the claims and the relative depth combine them. With ``anchor`` (the table a
        notebook has just written) a table from another run is left out instead, as missing: a
        run that writes no head mappings must not be judged on an earlier run's."""
        tables, metas = {}, {}
        for name in (TABLES if names is None else names):
            table = load_table(name, model, root=root)
            if table is not None:
                tables[name], metas[name] = table, load_meta(name, model, root) or {}
        if anchor is not None and anchor in metas:
            for name in [n for n in metas if n != anchor]:
                try:
                    check_same_run({anchor: metas[anchor], name: metas[name]})
                except MixedRunsError:
                    del tables[name], metas[name]
        check_same_run(metas, where=f"results/{model_slug(model)}/")
        n_layers = next((m["n_layers"] for m in metas.values() if m.get("n_layers")), None)
        projection = metas.get("extraction_layers", {}).get("params", {}).get("projection", "logit_lens")
        return cls(model_slug(model), tables, n_layers, projection, metas)

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)

    def inputs(self) -> dict:
        """Where each table came from (for the ledger's metadata)."""
        return {name: {k: meta.get(k) for k in ("git_commit", "key", "created", "rows")}
                for name, meta in self.metas.items()}


def available_models(root: Path | None = None) -> list[str]:
    """Every folder under ``results/`` that holds at least one of the ledger's tables."""
    folder = (root or output_root()) / "results"
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and any((p / f"{name}.csv").exists() for name in TABLES)) if folder.exists() else []


@dataclass
class Measure:
    """One measured number, its interval, its unit (%, points, share of facts, depth ...) and
    whether the ledger's cell shows it beside the main measure (both sides of a comparison)."""

    name: str
    value: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n: int = 0
    unit: str = ""
    in_cell: bool = False


@dataclass
class Cell:
    """One claim on one model: its verdict and measures (the first is the main one)."""

    claim: str
    model: str
    verdict: str
    measures: list[Measure] = field(default_factory=list)
    n: int = 0
    note: str = ""

    def rows(self) -> list[dict]:
        """Long-form rows; a missing measure or note is left empty (None), so the CSV stays plain text."""
        note, rule = self.note or None, rule_words(self.claim)
        if not self.measures:
            return [{"claim": self.claim, "model": self.model, "measure": None, "value": np.nan, "ci_low": np.nan,
                     "ci_high": np.nan, "n": self.n, "verdict": self.verdict, "note": note, "unit": None,
                     "rule": rule, "in_cell": True}]
        return [{"claim": self.claim, "model": self.model, "measure": m.name, "value": m.value, "ci_low": m.ci_low,
                 "ci_high": m.ci_high, "n": m.n, "verdict": self.verdict, "note": note, "unit": m.unit or None,
                 "rule": rule, "in_cell": bool(k == 0 or m.in_cell)} for k, m in enumerate(self.measures)]


def bootstrap(n_facts: int, statistic: Callable[[np.ndarray], float], n_boot: int = N_BOOT,
              seed: int = SEED) -> tuple[float, float, float]:
    """``statistic(facts)`` on all facts (``facts`` = 0..n-1, indices into per-fact arrays)
    and its 95% percentile interval over ``n_boot`` resamples of the *facts* with
    replacement: (value, ci_low, ci_high). A fact's rows always travel together."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(statistic(np.arange(n_facts)))
        stats = np.array([statistic(rng.integers(0, n_facts, n_facts)) for _ in range(n_boot)], dtype=float)
    if not np.isfinite(stats).any():
        return value, float("nan"), float("nan")
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return value, float(lo), float(hi)


def resamples(n_facts: int, statistic: Callable[[np.ndarray], float], n_boot: int = N_BOOT,
              seed: int = SEED) -> np.ndarray:
    """The ``n_boot`` values of ``statistic`` behind :func:`bootstrap`'s interval (the same
    resamples, same seed): to say why an interval of a discrete measure is narrow."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.array([statistic(rng.integers(0, n_facts, n_facts)) for _ in range(n_boot)], dtype=float)


def _measure(name, n, statistic, boot, unit: str = "", in_cell: bool = False) -> Measure:
    return Measure(name, *bootstrap(n, statistic, **boot), n=n, unit=unit, in_cell=in_cell)


def _not_measured(claim: str, r: ModelResults, why: str) -> Cell:
    return Cell(claim, r.model, "not measured", note=why)


def _missing(claim: str, r: ModelResults, name: str) -> Cell | None:
    if r.table(name) is None:
        when = ", when some head extracts on its own" if name == "extraction_head_mappings" else ""
        return _not_measured(claim, r, f"{name}.csv missing (written by notebook {TABLES[name]}{when})")
    if r.n_layers is None:
        return _not_measured(claim, r, "number of layers unknown (no .meta.json)")
    return None


def _too_few(claim: str, r: ModelResults, n: int, what: str = "facts") -> Cell | None:
    return _not_measured(claim, r, f"{what}: only {n} (< {MIN_FACTS})") if n < MIN_FACTS else None


def _verdict(main: bool, rest: bool) -> str:
    return "holds" if main and rest else "partly" if main else "does not hold"


def _nanmean(x, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


# --------------------------------------------------------------------------------------
# §3 information flow (claims 1-4): information_flow_prepend.csv


def _curves(r: ModelResults, source: str) -> pd.DataFrame:
    """Per fact (rows) and window centre (columns): relative change (%) of the prediction's
    probability when the last position cannot attend to ``source``."""
    t = r.table("information_flow_prepend")
    return t[t.source == source].pivot_table(index="known_id", columns="layer", values="relative_change")


def _deepest(x: np.ndarray) -> int:
    """The column of a facts x window-centres array where the mean over facts is lowest: where
    blocking hurts most on average (claims 1-3 locate their dips with it)."""
    return int(np.nanargmin(_nanmean(x, 0)))


def _dip_cell(claim: str, r: ModelResults, source: str, band: tuple[float, float], boot) -> Cell:
    if cell := _missing(claim, r, "information_flow_prepend"):
        return cell
    curves = _curves(r, source)
    if cell := _too_few(claim, r, len(curves)):
        return cell
    x, d, n = curves.to_numpy(), depth(curves.columns, r.n_layers), len(curves)
    at = _deepest(x)
    change = _measure("deepest mean change (%)", n, lambda i: _nanmean(x[i, at]), boot, "%")
    where = _measure("depth of the deepest mean change", n, lambda i: d[np.nanargmin(_nanmean(x[i], 0))], boot,
                     "depth", in_cell=True)
    main = change.ci_high < 0
    rest = change.value <= HURTS and band[0] <= where.value <= band[1]
    return Cell(claim, r.model, _verdict(main, rest), [change, where], n, f"deepest at layer {curves.columns[at]}")


def claim_1(r: ModelResults, **boot) -> Cell:
    """Relation (non-subject) -> last: a dip of at least 20% in early-to-middle layers."""
    return _dip_cell("1", r, "non-subject", BANDS["early-to-middle"], boot)


def claim_2(r: ModelResults, **boot) -> Cell:
    """Subject -> last: a dip of at least 20% in middle-to-upper layers."""
    return _dip_cell("2", r, "subject", BANDS["middle-to-upper"], boot)


def claim_3(r: ModelResults, **boot) -> Cell:
    """The relation's deepest point comes before the subject's (both re-located in every resample)."""
    if cell := _missing("3", r, "information_flow_prepend"):
        return cell
    subject, relation = _curves(r, "subject"), _curves(r, "non-subject")
    facts = subject.index.intersection(relation.index)
    if cell := _too_few("3", r, len(facts)):
        return cell
    s, q = subject.loc[facts].to_numpy(), relation.loc[facts].to_numpy()
    ds, dq = depth(subject.columns, r.n_layers), depth(relation.columns, r.n_layers)
    gap = _measure("subject's dip depth minus relation's", len(facts),
                   lambda i: ds[np.nanargmin(_nanmean(s[i], 0))] - dq[np.nanargmin(_nanmean(q[i], 0))], boot, "depth")
    # A layer index is discrete: the interval is as wide as the dips move between resamples.
    # Say how often each stays where all the facts put it, so a narrow interval reads as what it is.
    stays = []
    for name, x, columns in (("subject", s, subject.columns), ("relation", q, relation.columns)):
        at = _deepest(x)
        moved = resamples(len(facts), lambda i: float(np.nanargmin(_nanmean(x[i], 0)) == at), **boot)
        stays.append(f"the {name}'s dip stays at layer {columns[at]} in {moved.mean():.0%} of the resamples")
    note = ("both dips are re-located on the resampled facts' mean curves in every resample; " + ", ".join(stays)
            + " (an interval of one value means the dips do not move, not that nothing was resampled)")
    return Cell("3", r.model, _verdict(gap.ci_low > 0, gap.value >= ORDER_GAP), [gap], len(facts), note)


def claim_4(r: ModelResults, **boot) -> Cell:
    """Last -> last: the largest mean change stays within +-10% (holds) or +-20% (partly)."""
    if cell := _missing("4", r, "information_flow_prepend"):
        return cell
    curves = _curves(r, "last")
    if cell := _too_few("4", r, len(curves)):
        return cell
    x, n = curves.to_numpy(), len(curves)
    at = int(np.nanargmax(np.abs(_nanmean(x, 0))))
    change = _measure("largest mean change in size (%)", n, lambda i: _nanmean(x[i, at]), boot, "%")
    if max(abs(change.ci_low), abs(change.ci_high)) < BARELY:
        verdict = "holds"
    elif abs(change.value) < 2 * BARELY:
        verdict = "partly"
    else:
        verdict = "does not hold"
    return Cell("4", r.model, verdict, [change], n, f"at layer {curves.columns[at]}")


# --------------------------------------------------------------------------------------
# §4 subject enrichment (claims 5, 5b, 6, 6b): attributes_rate.csv, sublayer_knockout_*.csv


def _rates(r: ModelResults):
    """Facts with an attribute set; per position a facts x layers array of the attributes
    rate, the control (another subject's set) at the last subject token, the baseline."""
    t = r.table("attributes_rate")
    rated = t[t.attributes_rate.notna()]
    facts = pd.Index(sorted(rated.known_id.unique()))
    layered = rated[rated.layer >= 0]
    layers = pd.Index(sorted(layered.layer.unique()))

    def grid(position, value="attributes_rate"):
        part = layered[layered.position == position]
        return part.pivot_table(index="known_id", columns="layer", values=value).reindex(index=facts, columns=layers)

    positions = [p for p in layered.position.unique()]
    rates = {p: grid(p).to_numpy() for p in positions}
    control = grid("subject last", "control_rate").to_numpy()
    base = rated[rated.layer < 0].set_index("known_id").attributes_rate.reindex(facts).to_numpy()
    return facts, layers, rates, control, base


def _enrichment_peaks(subject_last: np.ndarray, layers, n_layers: int) -> tuple[np.ndarray, int, int]:
    """Claim 5's places on the last subject token's mean curve (facts x layers): the columns of
    the early-to-middle band, the band's peak and the peak over all layers (column indices)."""
    d = depth(layers, n_layers)
    band = np.flatnonzero((d >= BANDS["early-to-middle"][0]) & (d <= BANDS["early-to-middle"][1]))
    at = int(band[np.nanargmax(_nanmean(subject_last[:, band], 0))])
    return band, at, int(np.nanargmax(_nanmean(subject_last, 0)))


def claim_5(r: ModelResults, **boot) -> Cell:
    """In the early-to-middle band the last subject token's peak rate exceeds the
    static-embedding baseline (the main effect: the layers added attributes the embedding did
    not hold) and every other position's peak in the same band (the comparison)."""
    if cell := _missing("5", r, "attributes_rate"):
        return cell
    facts, layers, rates, _, base = _rates(r)
    if cell := _too_few("5", r, len(facts), "facts with an attribute set"):
        return cell
    n, sl = len(facts), rates["subject last"]
    band, at, whole = _enrichment_peaks(sl, layers, r.n_layers)
    others = {p: x for p, x in rates.items() if p != "subject last"}
    best = max(others, key=lambda p: np.nanmax(_nanmean(others[p][:, band], 0)))
    at_best = int(band[np.nanargmax(_nanmean(others[best][:, band], 0))])
    over_base = _measure(f"band peak minus the static-embedding baseline (layer {layers[at]})", n,
                         lambda i: _nanmean(sl[i, at] - base[i]), boot, "points")
    over = _measure(f"band peak minus the best other position's band peak ({best}, layer {layers[at_best]})", n,
                    lambda i: _nanmean(sl[i, at] - others[best][i, at_best]), boot, "points", in_cell=True)
    measures = [over_base, over,
                _measure("band peak rate (%)", n, lambda i: _nanmean(sl[i, at]), boot, "%"),
                _measure("static-embedding baseline (%)", n, lambda i: _nanmean(base[i]), boot, "%"),
                _measure(f"peak rate over all layers (%), at layer {layers[whole]}", n,
                         lambda i: _nanmean(sl[i, whole]), boot, "%"),
                _measure("rise from layer 0 to the band peak (points)", n, lambda i: _nanmean(sl[i, at] - sl[i, 0]),
                         boot, "points")]
    note = (f"early-to-middle band: layers {layers[band[0]]}-{layers[band[-1]]} (depth <= "
            f"{BANDS['early-to-middle'][1]}); peaks located on all facts' mean curves")
    return Cell("5", r.model, _verdict(over_base.ci_low > 0, over.ci_low > 0), measures, n, note)


def claim_5b(r: ModelResults, **boot) -> Cell:
    """The rate at the subject-last peak exceeds the rate against another subject's set."""
    if cell := _missing("5b", r, "attributes_rate"):
        return cell
    facts, layers, rates, control, _ = _rates(r)
    if cell := _too_few("5b", r, len(facts), "facts with an attribute set"):
        return cell
    n, sl = len(facts), rates["subject last"]
    at = int(np.nanargmax(_nanmean(sl, 0)))
    excess = _measure("rate minus control at the peak (points)", n, lambda i: _nanmean(sl[i, at] - control[i, at]),
                      boot, "points")
    rate = float(_nanmean(sl[:, at]))
    return Cell("5b", r.model, _verdict(excess.ci_low > 0, excess.value >= rate / 2), [excess], n,
                f"rate at layer {layers[at]}: {rate:.1f}%")


def _knockouts(claim: str, r: ModelResults, variant: str, boot) -> Cell:
    name = f"sublayer_knockout_{variant}"
    if cell := _missing(claim, r, name):
        return cell
    t = r.table(name)
    early = t[t.start < EARLY_WINDOWS * (t.start.max() + 1)]
    rates = early.pivot_table(index="known_id", columns="sublayer", values="attributes_rate")
    if cell := _too_few(claim, r, len(rates), "facts with an attribute set"):
        return cell
    none, mlp, attn = (rates[c].to_numpy() for c in ("none", "mlp", "attn"))
    n = len(rates)

    def drop(x, i):
        return 100 * (1 - _nanmean(x[i]) / _nanmean(none[i]))

    mlp_drop = _measure("relative drop under early MLP knockouts (%)", n, lambda i: drop(mlp, i), boot, "%")
    attn_drop = _measure("relative drop under early attention knockouts (%)", n, lambda i: drop(attn, i), boot, "%",
                         in_cell=True)
    diff = _measure("MLP drop minus attention drop (points)", n, lambda i: drop(mlp, i) - drop(attn, i), boot,
                    "points", in_cell=True)
    repr_layer = r.metas.get(name, {}).get("params", {}).get("repr_layer")
    note = f"windows starting at layers {int(early.start.min())}-{int(early.start.max())}; rate read at the output " \
           f"of layer {repr_layer}"
    main = mlp_drop.ci_low > 0
    return Cell(claim, r.model, _verdict(main, mlp_drop.value >= MLP_DROP and diff.ci_low > 0),
                [mlp_drop, attn_drop, diff], n, note)


def claim_6(r: ModelResults, **boot) -> Cell:
    """Early MLP knockouts (the official code's) drop the rate by >= 25%, more than attention ones."""
    return _knockouts("6", r, "official", boot)


def claim_6b(r: ModelResults, **boot) -> Cell:
    """As claim 6 with updates zeroed."""
    return _knockouts("6b", r, "zero", boot)


# --------------------------------------------------------------------------------------
# §5 attribute extraction (claims 7-11): extraction_layers.csv, extraction_patched.csv,
# extraction_head_mappings.csv


def _events(r: ModelResults, measure: str, projection: str | None = None) -> pd.DataFrame:
    """Per fact (rows) and layer (columns): 1 where the ``measure`` update ranks the prediction first."""
    t = r.table("extraction_layers")
    part = t[(t.measure == measure) & (t.projection == (projection or r.projection))]
    return part.pivot_table(index="known_id", columns="layer", values="value")


def claim_7(r: ModelResults, **boot) -> Cell:
    """Attention extracts in more facts than the MLP; most of its events are in the upper half."""
    if cell := _missing("7", r, "extraction_layers"):
        return cell
    attn = _events(r, "attn")
    mlp = _events(r, "mlp").reindex(index=attn.index, columns=attn.columns)
    if cell := _too_few("7", r, len(attn)):
        return cell
    a, m, n = attn.to_numpy(), mlp.to_numpy(), len(attn)
    a_any, m_any = np.nanmax(a, 1), np.nanmax(m, 1)
    upper = depth(attn.columns, r.n_layers) >= BANDS["upper"][0]
    diff = _measure("attention share minus MLP share", n, lambda i: a_any[i].mean() - m_any[i].mean(), boot,
                    "share of facts")
    share_upper = _measure("attention events in the upper half", n,
                           lambda i: np.nansum(a[i][:, upper]) / np.nansum(a[i]), boot, "share of events")
    measures = [diff, share_upper,
                _measure("attention share (facts)", n, lambda i: a_any[i].mean(), boot, "share of facts", True),
                _measure("MLP share (facts)", n, lambda i: m_any[i].mean(), boot, "share of facts", True)]
    other = "paper" if r.projection == "logit_lens" else "logit_lens"
    a2 = np.nanmax(_events(r, "attn", other).reindex(attn.index).to_numpy(), 1)
    m2 = np.nanmax(_events(r, "mlp", other).reindex(attn.index).to_numpy(), 1)
    measures += [_measure(f"attention share ({other} projection)", n, lambda i: _nanmean(a2[i]), boot,
                          "share of facts"),
                 _measure(f"MLP share ({other} projection)", n, lambda i: _nanmean(m2[i]), boot, "share of facts")]
    return Cell("7", r.model, _verdict(diff.ci_low > 0, share_upper.ci_low > MOST), measures, n,
                f"{r.projection} projection")


def _split_layers(events: pd.DataFrame) -> list[int]:
    """The extracting layers that each carry at least :data:`LAYER_SHARE` of the events (one
    row per event, a ``layer`` column), when more than one does; else none (nothing to split)."""
    share = events.layer.value_counts(normalize=True)
    layers = sorted(int(layer) for layer in share[share >= LAYER_SHARE].index)
    return layers if len(layers) > 1 else []


def _per_fact(rows: pd.DataFrame, condition: str, variant: str) -> pd.Series:
    """Per fact: 1 where its extraction stops at every extracting layer of ``rows`` under ``condition``."""
    part = rows[(rows.condition == condition) & (rows.variant == variant)]
    return 1 - part.groupby("known_id").value.max()


def claim_8(r: ModelResults, **boot) -> Cell:
    """Blocking last -> subject at the extracting layers stops extraction in most facts (the
    interval above one half), and in more facts than blocking last -> non-subject, the paper's
    set (which holds the last position: the official code's "block non-subject"). The set
    without the last position is shown beside it, named; the pooled share is split by
    extracting layer where several layers carry the events."""
    if cell := _missing("8", r, "extraction_layers"):
        return cell
    t = r.table("extraction_layers")
    blocked = t[(t.measure == "blocked") & (t.projection == r.projection)]
    if cell := _too_few("8", r, blocked[blocked.condition == "subject"].known_id.nunique(),
                        "facts with an attention extraction event"):
        return cell
    facts = pd.Index(sorted(blocked[blocked.condition == "subject"].known_id.unique()))
    stops = {(c, v): _per_fact(blocked, c, v).reindex(facts).to_numpy()
             for c in ("subject", "non-subject", "non-subject ex. last") for v in ("renormalised", "official")
             if len(blocked[(blocked.condition == c) & (blocked.variant == v)])}
    n = len(facts)
    subject = stops[("subject", "renormalised")]

    def share(key):
        return lambda i: _nanmean(stops[key][i])

    main = _measure("facts whose extraction stops, last -> subject blocked (renormalised)", n,
                    share(("subject", "renormalised")), boot, "share of facts")
    measures = [main]
    diff = None
    if ("non-subject", "renormalised") in stops:
        other = stops[("non-subject", "renormalised")]
        diff = _measure("subject blocked minus non-subject blocked (the paper's set, with the last position)", n,
                        lambda i: _nanmean(subject[i] - other[i]), boot, "share of facts", in_cell=True)
        measures += [diff, _measure("facts whose extraction stops, last -> non-subject blocked (the paper's set, with "
                                    "the last position)", n, share(("non-subject", "renormalised")), boot,
                                    "share of facts", in_cell=True)]
    if ("non-subject ex. last", "renormalised") in stops:
        other_ex = stops[("non-subject ex. last", "renormalised")]
        measures += [_measure("facts whose extraction stops, last -> non-subject ex. last blocked (without the last "
                              "position)", n, share(("non-subject ex. last", "renormalised")), boot, "share of facts"),
                     _measure("subject blocked minus non-subject ex. last blocked", n,
                              lambda i: _nanmean(subject[i] - other_ex[i]), boot, "share of facts")]
    if ("subject", "official") in stops:
        measures.append(_measure("facts whose extraction stops, last -> subject blocked (official re-softmax)", n,
                                 share(("subject", "official")), boot, "share of facts"))
    events = blocked[(blocked.condition == "subject") & (blocked.variant == "renormalised")]
    # the same counted per event (fact x extracting layer), the facts still resampled whole
    per_event = {c: blocked[(blocked.condition == c) & (blocked.variant == "renormalised")].groupby("known_id").value
                 for c in ("subject", "non-subject")}
    if len(per_event["non-subject"].size()):
        stopped = {c: (g.size() - g.sum()).reindex(facts).to_numpy(float) for c, g in per_event.items()}
        total = per_event["subject"].size().reindex(facts).to_numpy(float)
        measures += [_measure("events whose extraction stops, subject blocked minus non-subject blocked (the paper's "
                              "set), per event", n,
                              lambda i: (stopped["subject"][i].sum() - stopped["non-subject"][i].sum()) / total[i].sum(),
                              boot, "share of events")]
    split = _split_layers(events)
    for layer in split:
        at = blocked[blocked.layer == layer]
        ids = pd.Index(sorted(at[at.condition == "subject"].known_id.unique()))
        per = {c: _per_fact(at, c, "renormalised").reindex(ids).to_numpy() for c in ("subject", "non-subject")}
        m = len(ids)
        measures += [_measure(f"events whose extraction stops, last -> subject blocked, at layer {layer}", m,
                              lambda i, x=per["subject"]: _nanmean(x[i]), boot, "share of events"),
                     _measure(f"events whose extraction stops, last -> non-subject blocked, at layer {layer}", m,
                              lambda i, x=per["non-subject"]: _nanmean(x[i]), boot, "share of events")]
    any_layer = t[(t.measure == "blocked_any") & (t.variant == "official")].pivot_table(
        index="known_id", columns="condition", values="value")
    if {"none", "subject"} <= set(any_layer.columns):
        none, subj, n_all = any_layer["none"].to_numpy(), any_layer["subject"].to_numpy(), len(any_layer)
        measures += [_measure("all facts extracting at some layer, nothing blocked (official aggregation)", n_all,
                              lambda i: none[i].mean(), boot, "share of facts"),
                     _measure("... last -> subject blocked at each layer in turn", n_all,
                              lambda i: subj[i].mean(), boot, "share of facts")]
    counts = events.layer.value_counts()
    note = (f"{r.projection} projection; {len(events)} events in {n} facts ("
            + ", ".join(f"layer {int(k)}: {int(v)}" for k, v in counts.sort_index().items()) + ")"
            + (f"; split by extracting layer (each of {', '.join(map(str, split))} carries >= {LAYER_SHARE:.0%} of "
               "the events); the verdict reads the pooled share" if split else ""))
    rest = diff is not None and diff.ci_low > 0
    return Cell("8", r.model, _verdict(main.ci_low > MOST, rest), measures, n, note)


def claim_9(r: ModelResults, **boot) -> Cell:
    """Patching the subject positions with the earliest source layer lowers the share of facts
    where attention extracts; patching them lowers it more than patching the other positions."""
    for name in ("extraction_patched", "extraction_layers"):
        if cell := _missing("9", r, name):
            return cell
    p = r.table("extraction_patched")
    unpatched = _events(r, "attn").max(axis=1)
    rates = p.pivot_table(index="known_id", columns=["positions", "source_layer"], values="extracted")
    facts = rates.index.intersection(unpatched.index)
    if cell := _too_few("9", r, len(facts)):
        return cell
    extracting = int(unpatched.loc[facts].sum())
    if cell := _too_few("9", r, extracting, "facts where attention extracts without patching"):
        return cell
    u, n, first = unpatched.loc[facts].to_numpy(), len(facts), int(p.source_layer.min())
    rates = rates.loc[facts]
    subject0 = rates[("subject", first)].to_numpy()
    means = {g: rates[g].to_numpy().mean(1) for g in ("subject", "non-subject", "last")}
    reduction = _measure(f"relative reduction, subject patched from layer {first}", n,
                         lambda i: 1 - subject0[i].mean() / u[i].mean(), boot, "share of the unpatched share")
    others = _measure("other positions' rate minus the subject's (mean over source layers)", n,
                      lambda i: min(means["non-subject"][i].mean(), means["last"][i].mean()) - means["subject"][i].mean(),
                      boot, "share of facts", in_cell=True)
    measures = [reduction, others, _measure("unpatched share", n, lambda i: u[i].mean(), boot, "share of facts"),
                _measure(f"share with the subject patched from layer {first}", n, lambda i: subject0[i].mean(), boot,
                         "share of facts")]
    for g in ("subject", "non-subject", "last"):
        measures.append(_measure(f"extraction rate with the {g} positions patched (mean over source layers)", n,
                                 lambda i, g=g: means[g][i].mean(), boot, "share of facts"))
    # per extracting layer: the facts whose unpatched attention extracts at that layer (the
    # patched table keeps, per fact, whether extraction survives at any layer)
    attn = _events(r, "attn").loc[facts]
    events = attn.stack().rename("value").reset_index().query("value == 1")
    split = _split_layers(events)
    for layer in split:
        ids = np.flatnonzero(attn[layer].to_numpy() == 1)
        x = subject0[ids]
        measures.append(_measure(f"facts still extracting with the subject patched from layer {first}, of those "
                                 f"extracting at layer {layer}", len(ids), lambda i, x=x: x[i].mean(), boot,
                                 "share of facts"))
    note = (f"{extracting} facts extract unpatched; {r.projection} projection"
            + (f"; split by the layer where the unpatched attention extracts (each of {', '.join(map(str, split))} "
               f"carries >= {LAYER_SHARE:.0%} of the events; a patched fact counts as extracting at any layer); the "
               "verdict reads the pooled measures" if split else ""))
    return Cell("9", r.model, _verdict(reduction.ci_low > 0, others.ci_low > 0), measures, n, note)


def claim_10(r: ModelResults, **boot) -> Cell:
    """In most extraction events the attribute is outside the top 10 of the last-subject representation."""
    if cell := _missing("10", r, "extraction_layers"):
        return cell
    t = r.table("extraction_layers")
    ranks = t[(t.measure == "subject_rank") & (t.projection == r.projection)]
    per_fact = ranks.groupby("known_id").value
    if cell := _too_few("10", r, per_fact.ngroups, "facts with an attention extraction event"):
        return cell
    low = per_fact.apply(lambda v: int((v >= RANK_TOP).sum())).to_numpy()
    count = per_fact.size().to_numpy()
    lists = [np.asarray(v, dtype=float) for _, v in per_fact]
    n = len(count)
    share = _measure(f"events with the attribute at rank >= {RANK_TOP}", n, lambda i: low[i].sum() / count[i].sum(),
                     boot, "share of events")
    median = _measure("median rank over events", n, lambda i: np.median(np.concatenate([lists[j] for j in i])), boot,
                      "rank")
    return Cell("10", r.model, _verdict(share.ci_low > FEW, share.ci_low > MOST), [share, median], n,
                f"{int(count.sum())} events; {r.projection} projection")


def claim_11(r: ModelResults, **boot) -> Cell:
    """The best head's W_V W_O puts the attribute in the top 10 for more facts than the
    control attributes (the best head chosen again in every resample)."""
    if cell := _missing("11", r, "extraction_head_mappings"):
        return cell
    m = r.table("extraction_head_mappings").assign(head_id=lambda d: d.layer.astype(str) + "." + d["head"].astype(str))
    m["excess"] = (m.rank_best < RANK_TOP).astype(float) - m.control_top10.astype(float)
    counts = m.groupby("head_id").known_id.nunique()
    heads = counts[counts >= MIN_FACTS].index
    if len(heads) == 0:
        most = int(counts.max()) if len(counts) else 0
        return _not_measured("11", r, f"facts where the most frequent head extracts: only {most} (< {MIN_FACTS})")
    m = m[m.head_id.isin(heads)]
    excess = m.pivot_table(index="known_id", columns="head_id", values="excess")
    top10 = m.assign(top=(m.rank_best < RANK_TOP).astype(float)).pivot_table(
        index="known_id", columns="head_id", values="top").reindex_like(excess)
    control = m.pivot_table(index="known_id", columns="head_id", values="control_top10").reindex_like(excess)
    x, n = excess.to_numpy(), len(excess)
    best = int(np.nanargmax(_nanmean(x, 0)))
    value = _measure("best head: top-10 share minus control's", n, lambda i: np.nanmax(_nanmean(x[i], 0)), boot,
                     "share of facts")
    top, ctrl = top10.to_numpy()[:, best], control.to_numpy()[:, best]
    layer, head = excess.columns[best].split(".")
    measures = [value, _measure("best head: top-10 share", n, lambda i: _nanmean(top[i]), boot, "share of facts"),
                _measure("best head: control's top-10 share", n, lambda i: _nanmean(ctrl[i]), boot, "share of facts")]
    note = (f"best head: layer {layer} head {head} (depth {float(depth(int(layer), r.n_layers)):.2f}), "
            f"{int(counts[excess.columns[best]])} facts")
    return Cell("11", r.model, _verdict(value.ci_low > 0, value.value >= HEAD_EXCESS), measures, n, note)


CLAIMS = {"1": claim_1, "2": claim_2, "3": claim_3, "4": claim_4, "5": claim_5, "5b": claim_5b, "6": claim_6,
          "6b": claim_6b, "7": claim_7, "8": claim_8, "9": claim_9, "10": claim_10, "11": claim_11}


# --------------------------------------------------------------------------------------
# The ledger


def _prompts(r: ModelResults, claim: str) -> str:
    """Which prompts a claim's step ran on, and why its n can differ from the other steps':
    §3 (claims 1-4) runs its prompts with the sink token its ``sink`` choice gives (``prepend``
    adds one to a model without a BOS token), §4 and §5 the prompts as the tokenizer gives them,
    and each step keeps the facts the model knows under its own prompts."""
    flow_meta = r.metas.get("information_flow_prepend", {}).get("params", {})
    own = "information_flow_prepend" if claim in SECTIONS["01"] else next(
        (t for t in ("attributes_rate", "extraction_layers") if t in r.metas), None)
    if own is None or own not in r.metas:
        return ""
    if own == "information_flow_prepend":
        text = f"§3 prompts (sink={flow_meta.get('sink')!r}: a sink token first)"
    else:
        text = f"§4-§5 prompts (prepend_sink={r.metas[own].get('params', {}).get('prepend_sink')!r}: as tokenized)"
    counts = {t: r.table(t).known_id.nunique() for t in ("information_flow_prepend", "extraction_layers")
              if r.table(t) is not None}
    if len(counts) == 2 and len(set(counts.values())) == 2:
        text += (f"; known facts differ by step: {counts['information_flow_prepend']} under the §3 prompts, "
                 f"{counts['extraction_layers']} under the raw prompts of §4-§5 (the sink token changes which facts "
                 "the model predicts)")
    return text


def judge(claim: str, r: ModelResults, n_boot: int = N_BOOT, seed: int = SEED) -> Cell:
    """One claim on one model, with the prompts of its step in the note."""
    cell = CLAIMS[claim](r, n_boot=n_boot, seed=seed)
    prompts = _prompts(r, claim)
    if prompts:
        cell.note = f"{cell.note}; {prompts}" if cell.note else prompts
    return cell


def build(models, root: Path | None = None, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """The long-form ledger (claim, model, measure, value, ci_low, ci_high, n, verdict,
    note) of every claim on every model (names, or loaded :class:`ModelResults`)."""
    rows = []
    for model in models:
        r = model if isinstance(model, ModelResults) else ModelResults.load(model, root)
        for claim in CLAIMS:
            rows += judge(claim, r, n_boot, seed).rows()
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["claim", "model", "measure", "value", "ci_low", "ci_high", "n", "verdict", "note", "unit", "rule", "in_cell"]
"""The long ledger's columns: ``unit`` is the measure's unit, ``rule`` the claim's rule in
words, ``in_cell`` marks the measures the wide table's cell shows (the main one, and both
sides of a comparison)."""


def _number(row) -> str:
    unit = "" if pd.isna(row.unit) or not row.unit else f" {row.unit}" if row.unit != "%" else "%"
    return f"{row.value:.3g} [{row.ci_low:.3g}, {row.ci_high:.3g}]{unit}"


def cell_text(group: pd.DataFrame) -> str:
    """One claim on one model in a line: each measure the cell shows (``in_cell``) with its
    interval and unit, then n and the verdict."""
    main = group.iloc[0]
    if main.verdict == "not measured":
        return f"not measured: {main.note}"
    shown = group[group.in_cell.astype(bool)] if "in_cell" in group else group.iloc[:1]
    parts = [_number(row) if k == 0 else f"{row.measure}: {_number(row)}" for k, (_, row) in
             enumerate(shown.iterrows())]
    return "; ".join(parts) + f", n={main.n}: {main.verdict}"


_cell_text = cell_text


def section_rows(model: str, section: str, root: Path | None = None, n_boot: int = N_BOOT,
                 seed: int = SEED) -> pd.DataFrame:
    """The ledger's rows for the claims a section notebook judges (:data:`SECTIONS`), on one
    model, from that model's results folder: what the notebook prints at its end, computed by
    the one function that also fills ``results/ledger.csv`` (notebooks define no rule)."""
    claims = SECTIONS[section]
    names = [t for t, nb in TABLES.items() if nb == section]
    r = ModelResults.load(model, root, names, anchor=names[0])
    rows = []
    for claim in claims:
        rows += judge(claim, r, n_boot, seed).rows()
    return pd.DataFrame(rows, columns=COLUMNS)


def section_report(model: str, section: str, root: Path | None = None) -> str:
    """:func:`section_rows` as text: per claim its rule in words, then each measure's value,
    unit, 95% interval and n, and the verdict."""
    rows = section_rows(model, section, root)
    lines = [f"The paper's claims on {model_slug(model)}, judged by the ledger (utils/paper/rules.py; 95% bootstrap "
             "intervals over facts):"]
    for claim, group in rows.groupby("claim", sort=False):
        main = group.iloc[0]
        lines += ["", f"{claim}. {CLAIM_TEXT[claim]}: {main.verdict}", f"   rule: {main.rule}"]
        if main.verdict == "not measured":
            lines.append(f"   {main.note}")
            continue
        lines += [f"   {row.measure}: {_number(row)}, n={row.n}" for row in group.itertuples()]
        if isinstance(main.note, str) and main.note:
            lines.append(f"   note: {main.note}")
    return "\n".join(lines)


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per claim, one column per model: main measure [95% CI], n, verdict."""
    order = {c: i for i, c in enumerate(CLAIMS)}
    cells = long.groupby(["claim", "model"], sort=False).apply(_cell_text, include_groups=False).unstack("model")
    cells = cells.reindex(sorted(cells.index, key=order.get))[list(dict.fromkeys(long.model))]
    cells.index = [f"{c}. {CLAIM_TEXT[c]}" for c in cells.index]
    return cells


PAPER_CLAIMS = PROJECT_ROOT / "data" / "paper_claims.csv"


def paper_claims() -> pd.DataFrame:
    """What the paper reports per claim, with its source (data/paper_claims.csv)."""
    return pd.read_csv(PAPER_CLAIMS, dtype={"claim": str}, keep_default_na=False, na_values={"value": [""]})


def paper_column(claims: pd.DataFrame | None = None) -> pd.Series:
    """One text per claim: the paper's statements and numbers, each with its source tag."""
    claims = paper_claims() if claims is None else claims
    text = claims.groupby("claim", sort=False).apply(
        lambda g: "; ".join(f"{row.text} [{row.tag}]" for row in g.itertuples()), include_groups=False)
    return text.reindex(list(CLAIMS)).fillna("")


# --------------------------------------------------------------------------------------
# Curves on relative depth, for the cross-model figures (one row per fact x layer)


def flow_by_depth(r: ModelResults) -> pd.DataFrame | None:
    """Information flow: relative change (%) when the last position cannot attend to the
    subject or the non-subject positions, per fact and window centre."""
    t = r.table("information_flow_prepend")
    if t is None or r.n_layers is None:
        return None
    t = t[t.source.isin(["non-subject", "subject"])]
    return t[["known_id", "source", "layer", "relative_change"]].assign(model=r.model, depth=depth(t.layer, r.n_layers))


def attributes_by_depth(r: ModelResults) -> pd.DataFrame | None:
    """Attributes rate (%) at the last subject token per fact with an attribute set and layer."""
    t = r.table("attributes_rate")
    if t is None or r.n_layers is None:
        return None
    t = t[(t.position == "subject last") & (t.layer >= 0) & t.attributes_rate.notna()]
    return t[["known_id", "layer", "attributes_rate"]].assign(model=r.model, depth=depth(t.layer, r.n_layers))


def extraction_by_depth(r: ModelResults) -> pd.DataFrame | None:
    """1 where the attention update at the last position ranks the prediction first (the
    projection of the model's run), per fact and layer."""
    t = r.table("extraction_layers")
    if t is None or r.n_layers is None:
        return None
    t = t[(t.measure == "attn") & (t.projection == r.projection)]
    return t[["known_id", "layer", "value"]].assign(model=r.model, depth=depth(t.layer, r.n_layers))


# --------------------------------------------------------------------------------------
# The paper's Figure 1 on one model's layers (the lab's slide figure: utils/companion/lab_figure.py).
# The layers are located by the claims' own helpers above, so the figure and the ledger cannot disagree.


@dataclass(frozen=True)
class FlowDip:
    """Where blocking the last position from a set of positions hurts most (a window centre),
    the mean change (%) there, and the facts behind it: claims 1 and 2's located dip."""

    layer: int
    change: float
    n_facts: int


@dataclass(frozen=True)
class EnrichmentPeaks:
    """Claim 5's places on the last subject token's attributes rate: the early-to-middle band
    (first and last layer), the band's peak with its mean rate and the static-embedding
    baseline (%), and the peak over all layers."""

    band: tuple[int, int]
    peak: int
    peak_rate: float
    baseline: float
    overall_peak: int
    n_facts: int


@dataclass(frozen=True)
class RecallSteps:
    """The paper's steps located on one model's layers, each None when its table is missing."""

    model: str
    n_layers: int
    window: int | None
    relation: FlowDip | None
    subject: FlowDip | None
    enrichment: EnrichmentPeaks | None
    extraction_events: pd.Series | None
    """Attention extraction events per layer (layers with at least one), claim 7's events."""
    n_extraction_facts: int = 0
    projection: str = "logit_lens"

    @property
    def extraction_layer(self) -> int | None:
        """The layer with the most attention extraction events (the earliest of a tie)."""
        events = self.extraction_events
        return None if events is None or events.empty else int(events.idxmax())

    @property
    def papers_order(self) -> bool | None:
        """Whether the located layers come in the paper's order: the relation before the subject,
        the extraction not before the subject (None when a step is missing). A description of
        the figure, not a verdict: claim 3 judges the order with its interval."""
        if self.relation is None or self.subject is None or self.extraction_layer is None:
            return None
        return self.relation.layer < self.subject.layer <= self.extraction_layer


def flow_dip(r: ModelResults, source: str) -> FlowDip | None:
    """Claims 1 and 2's dip for ``source`` ("non-subject": the relation, "subject"), located as they locate it."""
    if r.table("information_flow_prepend") is None:
        return None
    curves = _curves(r, source)
    if curves.empty:
        return None
    x = curves.to_numpy()
    at = _deepest(x)
    return FlowDip(int(curves.columns[at]), float(_nanmean(x[:, at])), len(curves))


def enrichment_peaks(r: ModelResults) -> EnrichmentPeaks | None:
    """Claim 5's peaks of the last subject token's attributes rate, located as it locates them."""
    if r.table("attributes_rate") is None or r.n_layers is None:
        return None
    facts, layers, rates, _, base = _rates(r)
    if not len(facts) or "subject last" not in rates:
        return None
    sl = rates["subject last"]
    band, at, whole = _enrichment_peaks(sl, layers, r.n_layers)
    return EnrichmentPeaks((int(layers[band[0]]), int(layers[band[-1]])), int(layers[at]), float(_nanmean(sl[:, at])),
                           float(_nanmean(base)), int(layers[whole]), len(facts))


def attention_events_by_layer(r: ModelResults) -> pd.Series | None:
    """The number of attention extraction events per layer (claim 7's events, the model's
    projection), layers without one left out."""
    if r.table("extraction_layers") is None:
        return None
    events = _events(r, "attn").sum().astype(int)
    return events[events > 0].sort_index()


def recall_steps(r: ModelResults) -> RecallSteps:
    """The relation's and the subject's dips (claims 1, 2), the enrichment peaks (claim 5) and
    the attention extraction events (claim 7) of one model."""
    window = (r.metas.get("information_flow_prepend") or {}).get("params", {}).get("k")
    n_extraction = 0 if r.table("extraction_layers") is None else len(_events(r, "attn"))
    return RecallSteps(r.model, r.n_layers, None if window is None else int(window), flow_dip(r, "non-subject"),
                       flow_dip(r, "subject"), enrichment_peaks(r), attention_events_by_layer(r), n_extraction,
                       r.projection)
