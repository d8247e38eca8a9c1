"""The paper's claims, model by model: the claims ledger of notebook 04.

Each section notebook ends with verdicts for its own model. The ledger puts the paper's
claims side by side for every model that has results: per claim and model, the measured
effect, a 95% bootstrap confidence interval over facts, the number of facts, and a verdict
(holds / partly / does not hold / not measured) from a rule written down in
:mod:`utils.paper.rules` before any number is computed, and the same for every model.

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
from ..runs.results import check_same_run, load_meta, load_table, model_slug
from .rules import (
    BANDS,
    BARELY,
    CLAIM_TEXT,
    EARLY_WINDOWS,
    FEW,
    HALF_RISE_BY,
    HEAD_EXCESS,
    HURTS,
    MIN_FACTS,
    MLP_DROP,
    MOST,
    N_BOOT,
    ORDER_GAP,
    RANK_TOP,
    SEED,
    SOME,
    TABLES,
    depth,
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
    def load(cls, model: str, root: Path | None = None) -> "ModelResults":
        """The model's tables, refused (:class:`utils.runs.results.MixedRunsError`) when they
        come from different runs or models: the claims and the relative depth combine them."""
        tables, metas = {}, {}
        for name in TABLES:
            table = load_table(name, model, root=root)
            if table is not None:
                tables[name], metas[name] = table, load_meta(name, model, root) or {}
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
    name: str
    value: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    n: int = 0


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
        note = self.note or None
        if not self.measures:
            return [{"claim": self.claim, "model": self.model, "measure": None, "value": np.nan, "ci_low": np.nan,
                     "ci_high": np.nan, "n": self.n, "verdict": self.verdict, "note": note}]
        return [{"claim": self.claim, "model": self.model, "measure": m.name, "value": m.value, "ci_low": m.ci_low,
                 "ci_high": m.ci_high, "n": m.n, "verdict": self.verdict, "note": note} for m in self.measures]


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


def _measure(name, n, statistic, boot) -> Measure:
    return Measure(name, *bootstrap(n, statistic, **boot), n=n)


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


def _dip_cell(claim: str, r: ModelResults, source: str, band: tuple[float, float], boot) -> Cell:
    if cell := _missing(claim, r, "information_flow_prepend"):
        return cell
    curves = _curves(r, source)
    if cell := _too_few(claim, r, len(curves)):
        return cell
    x, d, n = curves.to_numpy(), depth(curves.columns, r.n_layers), len(curves)
    at = int(np.nanargmin(_nanmean(x, 0)))
    change = _measure("deepest mean change (%)", n, lambda i: _nanmean(x[i, at]), boot)
    where = _measure("depth of the deepest mean change", n, lambda i: d[np.nanargmin(_nanmean(x[i], 0))], boot)
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
                   lambda i: ds[np.nanargmin(_nanmean(s[i], 0))] - dq[np.nanargmin(_nanmean(q[i], 0))], boot)
    return Cell("3", r.model, _verdict(gap.ci_low > 0, gap.value >= ORDER_GAP), [gap], len(facts))


def claim_4(r: ModelResults, **boot) -> Cell:
    """Last -> last: the largest mean change stays within +-10% (holds) or +-20% (partly)."""
    if cell := _missing("4", r, "information_flow_prepend"):
        return cell
    curves = _curves(r, "last")
    if cell := _too_few("4", r, len(curves)):
        return cell
    x, n = curves.to_numpy(), len(curves)
    at = int(np.nanargmax(np.abs(_nanmean(x, 0))))
    change = _measure("largest mean change in size (%)", n, lambda i: _nanmean(x[i, at]), boot)
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


def claim_5(r: ModelResults, **boot) -> Cell:
    """The rate at the last subject token rises (half of it by mid-depth) and its peak exceeds
    every other position's peak and the static-embedding baseline."""
    if cell := _missing("5", r, "attributes_rate"):
        return cell
    facts, layers, rates, _, base = _rates(r)
    if cell := _too_few("5", r, len(facts), "facts with an attribute set"):
        return cell
    n, d, sl = len(facts), depth(layers, r.n_layers), rates["subject last"]
    at = int(np.nanargmax(_nanmean(sl, 0)))

    def half_rise(i):
        m = _nanmean(sl[i], 0)
        return d[int(np.argmax(m >= m[0] + (np.nanmax(m) - m[0]) / 2))]

    others = {p: x for p, x in rates.items() if p != "subject last"}
    best = max(others, key=lambda p: np.nanmax(_nanmean(others[p], 0)))
    at_best = int(np.nanargmax(_nanmean(others[best], 0)))
    rise = _measure("rise from layer 0 to the peak (points)", n, lambda i: _nanmean(sl[i, at] - sl[i, 0]), boot)
    half = _measure("depth where half the rise is reached", n, half_rise, boot)
    over = _measure(f"peak minus the best other position's peak ({best})", n,
                    lambda i: _nanmean(sl[i, at] - others[best][i, at_best]), boot)
    over_base = _measure("peak minus the static-embedding baseline", n, lambda i: _nanmean(sl[i, at] - base[i]), boot)
    peak = _measure("peak rate (%)", n, lambda i: _nanmean(sl[i, at]), boot)
    rest = half.value <= HALF_RISE_BY and over.ci_low > 0 and over_base.ci_low > 0
    return Cell("5", r.model, _verdict(rise.ci_low > 0, rest), [rise, half, over, over_base, peak], n,
                f"peak at layer {layers[at]}")


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
                      boot)
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

    mlp_drop = _measure("relative drop under early MLP knockouts (%)", n, lambda i: drop(mlp, i), boot)
    attn_drop = _measure("relative drop under early attention knockouts (%)", n, lambda i: drop(attn, i), boot)
    diff = _measure("MLP drop minus attention drop (points)", n, lambda i: drop(mlp, i) - drop(attn, i), boot)
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
    diff = _measure("attention share minus MLP share", n, lambda i: a_any[i].mean() - m_any[i].mean(), boot)
    share_upper = _measure("attention events in the upper half", n,
                           lambda i: np.nansum(a[i][:, upper]) / np.nansum(a[i]), boot)
    measures = [diff, share_upper,
                _measure("attention share (facts)", n, lambda i: a_any[i].mean(), boot),
                _measure("MLP share (facts)", n, lambda i: m_any[i].mean(), boot)]
    other = "paper" if r.projection == "logit_lens" else "logit_lens"
    a2 = np.nanmax(_events(r, "attn", other).reindex(attn.index).to_numpy(), 1)
    m2 = np.nanmax(_events(r, "mlp", other).reindex(attn.index).to_numpy(), 1)
    measures += [_measure(f"attention share ({other} projection)", n, lambda i: _nanmean(a2[i]), boot),
                 _measure(f"MLP share ({other} projection)", n, lambda i: _nanmean(m2[i]), boot)]
    return Cell("7", r.model, _verdict(diff.ci_low > 0, share_upper.ci_low > MOST), measures, n,
                f"{r.projection} projection")


def claim_8(r: ModelResults, **boot) -> Cell:
    """Blocking last -> subject at the extracting layers stops extraction in most facts."""
    if cell := _missing("8", r, "extraction_layers"):
        return cell
    t = r.table("extraction_layers")
    blocked = t[(t.measure == "blocked") & (t.projection == r.projection) & (t.condition == "subject")]
    still = blocked.pivot_table(index="known_id", columns="variant", values="value", aggfunc="max")
    if cell := _too_few("8", r, len(still), "facts with an attention extraction event"):
        return cell
    n = len(still)
    removed = {v: 1 - still[v].to_numpy() for v in still.columns}
    main = _measure("facts whose extraction stops (renormalised)", n, lambda i: removed["renormalised"][i].mean(),
                    boot)
    measures = [main]
    if "official" in removed:
        measures.append(_measure("facts whose extraction stops (official re-softmax)", n,
                                 lambda i: removed["official"][i].mean(), boot))
    any_layer = t[(t.measure == "blocked_any") & (t.variant == "official")].pivot_table(
        index="known_id", columns="condition", values="value")
    if {"none", "subject"} <= set(any_layer.columns):
        none, subject, n_all = any_layer["none"].to_numpy(), any_layer["subject"].to_numpy(), len(any_layer)
        measures += [_measure("all facts extracting at some layer, nothing blocked (official aggregation)", n_all,
                              lambda i: none[i].mean(), boot),
                     _measure("... last -> subject blocked at each layer in turn", n_all,
                              lambda i: subject[i].mean(), boot)]
    return Cell("8", r.model, _verdict(main.ci_low > SOME, main.ci_low > MOST), measures, n,
                f"{r.projection} projection")


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
                         lambda i: 1 - subject0[i].mean() / u[i].mean(), boot)
    others = _measure("other positions' rate minus the subject's (mean over source layers)", n,
                      lambda i: min(means["non-subject"][i].mean(), means["last"][i].mean()) - means["subject"][i].mean(),
                      boot)
    measures = [reduction, others, _measure("unpatched share", n, lambda i: u[i].mean(), boot),
                _measure(f"share with the subject patched from layer {first}", n, lambda i: subject0[i].mean(), boot)]
    return Cell("9", r.model, _verdict(reduction.ci_low > 0, others.ci_low > 0), measures, n,
                f"{extracting} facts extract unpatched; {r.projection} projection")


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
                     boot)
    median = _measure("median rank over events", n, lambda i: np.median(np.concatenate([lists[j] for j in i])), boot)
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
    value = _measure("best head: top-10 share minus control's", n, lambda i: np.nanmax(_nanmean(x[i], 0)), boot)
    top, ctrl = top10.to_numpy()[:, best], control.to_numpy()[:, best]
    layer, head = excess.columns[best].split(".")
    measures = [value, _measure("best head: top-10 share", n, lambda i: _nanmean(top[i]), boot),
                _measure("best head: control's top-10 share", n, lambda i: _nanmean(ctrl[i]), boot)]
    note = (f"best head: layer {layer} head {head} (depth {float(depth(int(layer), r.n_layers)):.2f}), "
            f"{int(counts[excess.columns[best]])} facts")
    return Cell("11", r.model, _verdict(value.ci_low > 0, value.value >= HEAD_EXCESS), measures, n, note)


CLAIMS = {"1": claim_1, "2": claim_2, "3": claim_3, "4": claim_4, "5": claim_5, "5b": claim_5b, "6": claim_6,
          "6b": claim_6b, "7": claim_7, "8": claim_8, "9": claim_9, "10": claim_10, "11": claim_11}


# --------------------------------------------------------------------------------------
# The ledger


def build(models, root: Path | None = None, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """The long-form ledger (claim, model, measure, value, ci_low, ci_high, n, verdict,
    note) of every claim on every model (names, or loaded :class:`ModelResults`)."""
    rows = []
    for model in models:
        r = model if isinstance(model, ModelResults) else ModelResults.load(model, root)
        for claim in CLAIMS.values():
            rows += claim(r, n_boot=n_boot, seed=seed).rows()
    return pd.DataFrame(rows, columns=["claim", "model", "measure", "value", "ci_low", "ci_high", "n", "verdict",
                                       "note"])


def _cell_text(group: pd.DataFrame) -> str:
    main = group.iloc[0]
    if main.verdict == "not measured":
        return f"not measured: {main.note}"
    return f"{main.value:.3g} [{main.ci_low:.3g}, {main.ci_high:.3g}], n={main.n}: {main.verdict}"


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
