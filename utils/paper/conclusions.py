"""The written conclusion that ends each notebook (00-04), generated from that notebook's own
tables and the claims ledger, so that the prose cannot drift from the numbers.

Why it is built this way:

* **No number is typed in.** Every number in a sentence is read from a results table
  (:func:`utils.runs.results.load_table`) or from the ledger (:func:`utils.paper.ledger.build`,
  recomputed from the same tables when the notebook does not pass its own), never written here.
* **The ledger judges.** A verdict word (holds / partly / does not hold / not measured) is
  always the ledger's; this module defines no threshold of its own for a claim. Where a
  sentence needs an interval the ledger has, it takes the ledger's; where the ledger has no such
  measure (a per-layer share, a knockout window, a subject-position split) the interval is a
  bootstrap over facts with the ledger's own :func:`utils.paper.ledger.bootstrap`.
* **Small runs say so.** Below :data:`SMALL_RUN` facts a conclusion says the run is small and
  makes no comparison with the paper (a 5-fact run cannot agree or disagree with it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..paths import output_root
from ..runs.results import load_meta, load_table, model_slug
from . import ledger as ledger_module
from .rules import BANDS, CLAIM_TEXT, MIN_FACTS, N_BOOT, SEED, TABLES, depth

SMALL_RUN = 50
"""Fewer facts than this: a small run, described but not compared with the paper."""

ABOUT_ZERO = 0.1
"""A mean attributes rate below this share of the curve's peak is described as "about 0"
(a description of the curve's shape, not a rule: no verdict depends on it)."""
DOMINANT = 0.1
"""An extracting layer is described on its own when it carries at least this share of the
events (the issue's "a layer that carries >= 10% of the events")."""

STEPS = {"§3 information flow": ("1", "2", "3", "4"), "§4 subject enrichment": ("5", "5b", "6", "6b"),
         "§5 attribute extraction": ("7", "8", "9", "10", "11")}
"""The paper's steps and the ledger's claims that test each (5b is this project's control)."""

DATASETS = {"known_1000": "ROME's known_1000.json, the paper's queries",
            "small": "this project's 50 facts (data/facts_small.json)"}


# --------------------------------------------------------------------------------------
# Reading: tables, metadata, the ledger


def _table(name: str, model: str, root) -> pd.DataFrame | None:
    return load_table(name, model, root=root)


def _params(name: str, model: str, root) -> dict:
    return (load_meta(name, model, root) or {}).get("params", {})


def _results(model: str, names, root) -> ledger_module.ModelResults:
    """The ledger's reader restricted to one notebook's tables (``names``), so that a notebook
    rerun on its own is judged on its own tables even when another notebook's are from an older run."""
    tables, metas = {}, {}
    for name in names:
        table = load_table(name, model, root=root)
        if table is not None:
            tables[name], metas[name] = table, load_meta(name, model, root) or {}
    n_layers = next((m["n_layers"] for m in metas.values() if m.get("n_layers")), None)
    projection = metas.get("extraction_layers", {}).get("params", {}).get("projection", "logit_lens")
    return ledger_module.ModelResults(model_slug(model), tables, n_layers, projection, metas)


def ledger_rows(model: str, notebook: str, root=None, long: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ledger's rows for ``model`` (the long table ``long`` when given, else built from the
    tables notebook ``notebook`` writes)."""
    slug = model_slug(model)
    if long is None:
        names = [name for name, nb in TABLES.items() if nb == notebook]
        long = ledger_module.build([_results(slug, names, root)])
    return long[long.model == slug]


def _rows(long: pd.DataFrame, claim: str) -> pd.DataFrame:
    return long[long.claim.astype(str) == claim]


def _row(long: pd.DataFrame, claim: str, *words: str):
    """The first ledger row of ``claim`` whose measure names all ``words`` (None if none does)."""
    rows = _rows(long, claim)
    for row in rows.itertuples():
        if isinstance(row.measure, str) and all(w.lower() in row.measure.lower() for w in words):
            return row
    return None


def verdict(long: pd.DataFrame, claim: str) -> str:
    rows = _rows(long, claim)
    return str(rows.verdict.iloc[0]) if len(rows) else "not measured"


def _num(value: float, unit: str = "") -> str:
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "points":
        return f"{value:+.1f} points"
    return f"{value:.3g}"


def _ci(lo: float, hi: float, unit: str = "") -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "(no interval)"
    f = (lambda v: f"{v:.1f}") if unit in ("%", "points") else (lambda v: f"{v:.3g}")
    return f"[{f(lo)}, {f(hi)}]"


def _with_ci(value, lo, hi, unit="") -> str:
    return f"{_num(value, unit)} {_ci(lo, hi, unit)}"


def _unit_of(row) -> str:
    unit = getattr(row, "unit", None)
    if isinstance(unit, str) and unit:
        return unit
    measure = str(row.measure)
    return "%" if "(%)" in measure else "points" if "(points)" in measure else ""


def claim_line(long: pd.DataFrame, claim: str) -> str:
    """One claim as the ledger judges it: its words, the verdict, the main measure with its 95% interval."""
    rows = _rows(long, claim)
    if not len(rows):
        return f"- Claim {claim} ({CLAIM_TEXT[claim]}): **not measured** (no ledger row)."
    main = rows.iloc[0]
    if main.verdict == "not measured":
        return f"- Claim {claim} ({CLAIM_TEXT[claim]}): **not measured** ({main.note})."
    unit = _unit_of(main)
    rule = getattr(main, "rule", None)
    rule = f"; rule: {rule}" if isinstance(rule, str) and rule else ""
    return (f"- Claim {claim} ({CLAIM_TEXT[claim]}): **{main.verdict}**. {main.measure}: "
            f"{_with_ci(main.value, main.ci_low, main.ci_high, unit)}, n = {int(main.n)}{rule}.")


def _boot(values_by_fact, statistic) -> tuple[float, float, float]:
    """Bootstrap over facts (the ledger's resampling, seed and count) of ``statistic(index)``."""
    return ledger_module.bootstrap(len(values_by_fact), statistic, n_boot=N_BOOT, seed=SEED)


def _mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    return _boot(x, lambda i: np.nanmean(x[i]))


def _layers_text(layers) -> str:
    layers = sorted(int(v) for v in layers)
    if not layers:
        return "no layer"
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ", ".join(map(str, layers))


def _runs(layers) -> list[list[int]]:
    """Consecutive runs of integers."""
    out: list[list[int]] = []
    for v in sorted(int(x) for x in layers):
        if out and v == out[-1][-1] + 1:
            out[-1].append(v)
        else:
            out.append([v])
    return out


def _header(model: str, n: int, what: str, source: str) -> str:
    return f"**{model_slug(model)}**: {n} {what}; {source}."


def _small(model: str, n: int, what: str, source: str, long: pd.DataFrame | None, claims) -> str:
    text = (f"{_header(model, n, what, source)}\n\nThis is a **small run** ({n} < {SMALL_RUN} "
            f"facts): the numbers above describe these facts only, and no comparison with the paper is made.")
    if long is not None:
        words = ", ".join(f"claim {c}: {verdict(long, c)}" for c in claims)
        text += f" The ledger's verdicts on so few facts ({words}) are not read as a replication."
    return text


def _dataset_text(params: dict) -> str:
    dataset = str(params.get("dataset", "?"))
    return f"prompts from {DATASETS.get(dataset, dataset)}"


# --------------------------------------------------------------------------------------
# 00 · the known facts


def conclusion_00(model: str, table: pd.DataFrame | None = None, dataset: str | None = None, root=None) -> str:
    """How many facts the model knows, out of how many, and where the prompts come from.
    ``table`` is the known-set table of notebook 00 (``known_set``); by default the saved
    ``facts_evaluated.csv``."""
    root = root or output_root()
    params = _params("facts_evaluated", model, root)
    table = _table("facts_evaluated", model, root) if table is None else table
    if table is None:
        return f"**{model_slug(model)}**: no known-set table (run the cells above)."
    dataset = dataset or params.get("dataset", "?")
    evaluated = table[table.skip_reason.isna()]
    known = int(evaluated.known.sum())
    source = _dataset_text({"dataset": dataset})
    text = (f"{_header(model, known, 'known facts', source)}\n\nThe model's top-1 next token is the attribute's "
            f"first token for {known} of the {len(evaluated)} facts evaluated ({known / max(len(evaluated), 1):.1%}); "
            f"{len(table) - len(evaluated)} of {len(table)} could not be evaluated (the subject not found in its "
            f"prompt). In the top 5: {(evaluated.attribute_rank < 5).mean():.1%}.")
    if known < SMALL_RUN:
        return text + (f"\n\nThis is a **small run** ({known} < {SMALL_RUN} known facts): the later notebooks' "
                       "numbers describe these facts only and make no comparison with the paper.")
    return text + (f"\n\nThe known set ({known} facts) is the n behind the ledger's verdicts (holds / partly / does "
                   "not hold) in notebooks 01-04; the later steps may use fewer (the facts with an attribute set, "
                   "the facts with an extraction event), and each says how many.")


# --------------------------------------------------------------------------------------
# 01 · information flow


def _flow_curves(flow: pd.DataFrame, source: str) -> pd.DataFrame:
    return flow[flow.source == source].pivot_table(index="known_id", columns="layer", values="relative_change")


def top_layer_increases(flow: pd.DataFrame, n_layers: int) -> list[tuple[str, int, float, float, float]]:
    """(source, window centre, mean change, ci_low, ci_high) for every source whose largest mean
    change in the upper band is an increase with its interval above 0: blocking that edge there
    *raises* the prediction's probability."""
    out = []
    for source in ("subject", "non-subject", "last"):
        curves = _flow_curves(flow, source)
        if curves.empty:
            continue
        upper = curves.columns[depth(curves.columns, n_layers) >= BANDS["upper"][0]]
        means = curves[upper].mean()
        at = int(means.idxmax())
        value, lo, hi = _mean_ci(curves[at].to_numpy())
        if lo > 0:
            out.append((source, at, value, lo, hi))
    return out


def conclusion_01(model: str, root=None, long: pd.DataFrame | None = None) -> str:
    """The relation's and the subject's dips (deepest layer, one layer or a band), the
    subject-position split, the top-layer increases, and the ledger's claims 1-4."""
    root = root or output_root()
    summary, flow = _table("information_flow_summary", model, root), _table("information_flow_prepend", model, root)
    if summary is None or flow is None:
        return f"**{model_slug(model)}**: the information-flow tables are missing (run the sweep above)."
    params = _params("information_flow_prepend", model, root)
    n_layers = (load_meta("information_flow_prepend", model, root) or {}).get("n_layers")
    long = ledger_rows(model, "01", root, long)
    sink = summary.sink.iloc[0] if "prepend" not in set(summary.sink) else "prepend"
    rows = summary[summary.sink == sink].set_index(["facts_group", "source"])
    n = int(flow.known_id.nunique())
    source = (f"{_dataset_text(params)}; knockout window k = {params.get('k')} layers; the target is the model's own "
              "prediction")
    if n < SMALL_RUN:
        return _small(model, n, "known facts", source, long, ("1", "2", "3", "4"))
    lines = [_header(model, n, "known facts", source), ""]
    dips = (("1", "non-subject", "relation (non-subject) → last"), ("2", "subject", "subject → last"))
    for claim, src, name in dips:
        s = rows.loc[("all", src)]
        change = _row(long, claim, "change")
        where = (f"{_with_ci(change.value, change.ci_low, change.ci_high, '%')} (ledger)" if change is not None
                 else _num(s.deepest_mean_change, "%"))
        width = int(s.half_drop_to) - int(s.half_drop_from)
        shape = ("a single layer" if width == 0 else
                 f"a band: at least half of that drop at window centres {int(s.half_drop_from)}-{int(s.half_drop_to)}")
        lines.append(f"- Blocking {name}: deepest at window centre {int(s.at_layer)}, mean change {where}; "
                     f"{shape}.")
    groups = ("subject starts the prompt", "subject later in the prompt")
    if all((g, "non-subject") in rows.index for g in groups):
        first, later = (rows.loc[(g, "non-subject")] for g in groups)
        sub_first, sub_later = (rows.loc[(g, "subject")] for g in groups)
        moved = "moves" if int(first.at_layer) != int(later.at_layer) else "stays"
        lines.append(f"- Subject position: for the {int(later.facts)} facts whose subject comes later in the prompt "
                     f"the relation's dip {moved} from layer {int(first.at_layer)} (the {int(first.facts)} facts whose "
                     f"prompt starts with the subject, {_num(first.deepest_mean_change, '%')}) to layer "
                     f"{int(later.at_layer)} ({_num(later.deepest_mean_change, '%')}); the subject's dip is at layer "
                     f"{int(sub_first.at_layer)} and {int(sub_later.at_layer)} respectively (point estimates, "
                     "information_flow_summary.csv).")
    if n_layers:
        ups = top_layer_increases(flow, n_layers)
        for src, at, value, lo, hi in ups:
            lines.append(f"- Blocking last → {src} in the windows centred on layer {at} (upper layers) *raises* the "
                         f"prediction's probability: mean change {_with_ci(value, lo, hi, '%')}.")
        if not ups:
            lines.append("- No edge's blocking in the upper layers raises the prediction's probability with an "
                         "interval above 0.")
    lines += ["", "Against the paper's claims (the ledger's rules, 95% bootstrap intervals over facts):"]
    lines += [claim_line(long, c) for c in ("1", "2", "3", "4")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# 02 · subject enrichment


def knockout_increase(knock: pd.DataFrame, top_k: int) -> dict | None:
    """The MLP knockout windows that *raise* the attributes rate above the clean run's, and the
    one that raises it most: its rate and the attribute's top-``top_k`` share against the
    clean run's, with bootstrap intervals of the increase over facts."""
    rate = knock.pivot_table(index="known_id", columns=["sublayer", "start"], values="attributes_rate")
    top = knock.assign(top=(knock.attribute_rank < top_k).astype(float)).pivot_table(
        index="known_id", columns=["sublayer", "start"], values="top")
    none, mlp = rate["none"].mean(), rate["mlp"].mean()
    raising = [int(s) for s in mlp.index if mlp[s] > none[s]]
    if not raising:
        return None
    best = int((mlp - none).idxmax())
    d = (rate[("mlp", best)] - rate[("none", best)]).to_numpy()
    dt = (top[("mlp", best)] - top[("none", best)]).to_numpy()
    return {"starts": raising, "best": best, "none": float(none[best]), "mlp": float(mlp[best]),
            "increase": _mean_ci(d), "top_none": float(top[("none", best)].mean()),
            "top_mlp": float(top[("mlp", best)].mean()), "top_increase": _mean_ci(dt),
            "facts": rate[("mlp", best)].index}


def conclusion_02(model: str, root=None, long: pd.DataFrame | None = None) -> str:
    """The static-embedding baseline against the last-subject curve, the curve's shape, the
    MLP-knockout increase against that baseline, the paper's projection, and claims 5-6b."""
    root = root or output_root()
    rates = _table("attributes_rate", model, root)
    if rates is None:
        return f"**{model_slug(model)}**: attributes_rate.csv is missing (run the cells above)."
    params = _params("attributes_rate", model, root)
    long = ledger_rows(model, "02", root, long)
    rated = rates[rates.attributes_rate.notna()]
    n, known = int(rated.known_id.nunique()), int(rates.known_id.nunique())
    source = (f"attribute source {params.get('attribute_source')} (top {params.get('top_k')} tokens, "
              f"{params.get('kept')} kept), {params.get('projection')} projection; {_dataset_text(params)}")
    what = f"facts with an attribute set (of {known} known)"
    if n < SMALL_RUN:
        return _small(model, n, what, source, long, ("5", "5b", "6", "6b"))
    lines = [_header(model, n, what, source), ""]
    curve = rated[(rated.position == "subject last") & (rated.layer >= 0)].groupby("layer").attributes_rate.mean()
    base = rated[rated.layer < 0].groupby("known_id").attributes_rate.mean()
    base_mean = float(base.mean())
    peak_layer, peak = int(curve.idxmax()), float(curve.max())
    below = curve.index[curve < base_mean]
    margin = _row(long, "5", "baseline")
    margin_text = (f"; peak minus baseline {_with_ci(margin.value, margin.ci_low, margin.ci_high, 'points')} (ledger)"
                   if margin is not None else "")
    where = ("at every layer" if len(below) == len(curve) else f"at {len(below)} of {len(curve)} layers "
             f"({_layers_text(below)})" if len(below) else "at no layer")
    lines.append(f"- Baseline: the static-embedding rate ({_num(base_mean, '%')}) is above the last-subject-token rate "
                 f"{where}; the curve peaks at {_num(peak, '%')} at layer {peak_layer}{margin_text}.")
    low = curve.index[curve < peak * ABOUT_ZERO]
    flat = max(_runs(low), key=len) if len(low) else []
    half = _row(long, "5", "half")
    first_half = curve[depth(curve.index, int(curve.index.max()) + 1) <= BANDS["upper"][0]]
    rises = float(first_half.max()) > float(curve.iloc[0])
    shape = (f"an early rise: from {_num(curve.iloc[0], '%')} at layer 0 to {_num(first_half.max(), '%')} at layer "
             f"{int(first_half.idxmax())}" if rises else
             f"no early rise: the rate at layer 0 ({_num(curve.iloc[0], '%')}) is the highest of the first half")
    if len(flat) > 1:
        shape += (f"; the rate is about 0 (below {ABOUT_ZERO:.0%} of its peak, at most "
                  f"{_num(curve[flat].max(), '%')}) at {_layers_text(flat)}")
    if half is not None:
        shape += f"; half of the rise is reached at depth {_with_ci(half.value, half.ci_low, half.ci_high)} (ledger)"
    lines.append(f"- Shape: {shape}.")
    knock = _table("sublayer_knockout_official", model, root)
    if knock is not None:
        inc = knockout_increase(knock, int(_params("sublayer_knockout_official", model, root).get("top_k") or 500))
        if inc is None:
            lines.append("- Knocking out MLP windows never raises the attributes rate above the clean run's.")
        else:
            top_k = int(_params("sublayer_knockout_official", model, root).get("top_k") or 500)
            static = rated[rated.layer < 0].groupby("known_id")
            b = float(static.attributes_rate.mean().reindex(inc["facts"]).mean())
            bt = float((static.attribute_rank.min() < top_k).astype(float).reindex(inc["facts"]).mean())
            v, lo, hi = inc["increase"]
            tv, tlo, thi = inc["top_increase"]
            best = (f"the window starting at layer {inc['best']}: {_num(inc['none'], '%')} → {_num(inc['mlp'], '%')} "
                    f"(increase {_with_ci(v, lo, hi, 'points')}), the attribute's top-{top_k} share "
                    f"{inc['top_none']:.3f} → {inc['top_mlp']:.3f} (increase {_with_ci(tv, tlo, thi)})")
            if lo > 0:
                closer = abs(inc["mlp"] - b) < abs(inc["none"] - b)
                lines.append(
                    f"- MLP knockouts: knocking out the MLP windows starting at {_layers_text(inc['starts'])} *raises* "
                    f"the mean rate above the clean run's; most for {best}. So these MLP updates lower the "
                    f"attributes rate at the last subject token rather than build it. Against the static embedding "
                    f"of the same facts (rate {_num(b, '%')}, top-{top_k} share {bt:.3f}), the residual with those "
                    f"updates removed is {'closer to' if closer else 'further from'} the embedding than the clean "
                    f"residual is ({'above' if inc['mlp'] > b else 'below'} it): removing them "
                    f"{'leaves something closer to' if closer else 'does not return the residual to'} the "
                    f"embedding's own attribute content.")
            else:
                lines.append(f"- MLP knockouts: no MLP window raises the rate with an interval above 0 (largest "
                             f"mean increase: {best}).")
    paper = _table("attributes_rate_paper", model, root)
    if paper is not None:
        p = paper[paper.attributes_rate.notna()]
        pc = p[(p.position == "subject last") & (p.layer >= 0)].groupby("layer").attributes_rate.mean()
        pb = float(p[p.layer < 0].attributes_rate.mean())
        if len(pc):
            if pb > pc.max():
                lines.append(f"- Under the paper's projection the rate peaks at the embeddings: static embedding "
                             f"{_num(pb, '%')}, above every layer (best {_num(pc.max(), '%')} at layer "
                             f"{int(pc.idxmax())}).")
            else:
                lines.append(f"- Under the paper's projection the last-subject rate peaks at layer {int(pc.idxmax())} "
                             f"({_num(pc.max(), '%')}), above the static embedding ({_num(pb, '%')}).")
    lines += ["", "Against the paper's claims (the ledger's rules, 95% bootstrap intervals over facts):"]
    lines += [claim_line(long, c) for c in ("5", "5b", "6", "6b")]
    for claim in ("6", "6b"):
        attn = _row(long, claim, "attention", "drop")
        if attn is not None and "minus" not in attn.measure:
            lines.append(f"  - claim {claim}, {attn.measure}: {_with_ci(attn.value, attn.ci_low, attn.ci_high, '%')}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# 03 · attribute extraction


def extraction_by_layer(layers: pd.DataFrame, projection: str, variant: str = "renormalised",
                        conditions=("subject", "all but last")) -> pd.DataFrame:
    """A small helper until per-layer tables exist: per extracting layer, the attention
    extraction events (pooled facts), their share of all events, and the share of those events
    that survive each blocked ``condition`` (bootstrap over facts)."""
    events = layers[(layers.measure == "attn") & (layers.projection == projection) & (layers.value == 1)]
    blocked = layers[(layers.measure == "blocked") & (layers.projection == projection) & (layers.variant == variant)]
    rows = []
    for layer, group in events.groupby("layer"):
        row = {"layer": int(layer), "events": len(group), "share of events": len(group) / len(events)}
        for condition in conditions:
            part = blocked[(blocked.layer == layer) & (blocked.condition == condition)]
            per_fact = part.groupby("known_id").value.agg(["sum", "size"])
            s, c = per_fact["sum"].to_numpy(float), per_fact["size"].to_numpy(float)
            if len(per_fact):
                value, lo, hi = _boot(s, lambda i: s[i].sum() / c[i].sum())
            else:
                value = lo = hi = float("nan")
            row.update({f"survive {condition}": value, f"survive {condition} low": lo,
                        f"survive {condition} high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(row: dict, name: str) -> str:
    return _with_ci(100 * row[name], 100 * row[f"{name} low"], 100 * row[f"{name} high"], "%")


def conclusion_03(model: str, root=None, long: pd.DataFrame | None = None) -> str:
    """Extraction events by layer (pooled and the dominant layers), blocked extraction per
    layer, the extracting heads, and claims 7-11."""
    root = root or output_root()
    layers = _table("extraction_layers", model, root)
    if layers is None:
        return f"**{model_slug(model)}**: extraction_layers.csv is missing (run the cells above)."
    params = _params("extraction_layers", model, root)
    long = ledger_rows(model, "03", root, long)
    projection = params.get("projection", "logit_lens")
    n = int(layers.known_id.nunique())
    source = f"{_dataset_text(params)}; the attribute is the model's own prediction; {projection} projection"
    if n < SMALL_RUN:
        return _small(model, n, "known facts", source, long, ("7", "8", "9", "10", "11"))
    lines = [_header(model, n, "known facts", source), ""]
    by_layer = extraction_by_layer(layers, projection)
    if by_layer.empty:
        lines.append("- No attention update ranks the prediction first at any layer: nothing to extract or block.")
    else:
        facts = layers[(layers.measure == "attn") & (layers.projection == projection)]
        n_fact = int(facts.groupby("known_id").value.max().sum())
        dominant = by_layer[by_layer["share of events"] >= DOMINANT]
        lines.append(f"- Extraction events: {int(by_layer.events.sum())} (attention updates at the last position that "
                     f"rank the prediction first) in {n_fact} facts, at {_layers_text(by_layer.layer)}; layers with at "
                     f"least {DOMINANT:.0%} of the events: " + ", ".join(
                         f"layer {r['layer']} ({r['events']}, {r['share of events']:.0%})"
                         for r in dominant.to_dict("records")) + ".")
        for r in dominant.to_dict("records"):
            lines.append(f"- Layer {r['layer']} ({r['events']} events): with last → subject blocked "
                         f"{_pct(r, 'survive subject')} of "
                         f"the events survive; when the last position sees only itself (all but last blocked) "
                         f"{_pct(r, 'survive all but last')} survive.")
    heads = _table("extraction_heads", model, root)
    if heads is not None and len(heads):
        top = heads.head(3)
        lines.append("- Heads whose own share ranks the prediction first: " + "; ".join(
            f"layer {int(h['layer'])} head {int(h['head'])} in {int(h['events'])} events ({h['share of events']:.0%})"
            for h in top.to_dict("records")) + ".")
    lines += ["", "Against the paper's claims (the ledger's rules, 95% bootstrap intervals over facts):"]
    lines += [claim_line(long, c) for c in ("7", "8", "9", "10", "11")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# 04 · the ledger across models


def conclusion_04(long: pd.DataFrame) -> str:
    """Per model: how many claims hold, partly hold, do not hold, are not measured, and the
    paper's steps whose claims all hold."""
    lines = []
    for model, rows in long.groupby("model", sort=False):
        cells = rows.drop_duplicates("claim").set_index(rows.drop_duplicates("claim").claim.astype(str)).verdict
        counts = cells.value_counts()
        n = int(rows.n.max()) if rows.n.notna().any() else 0
        steps = [step for step, claims in STEPS.items() if all(cells.get(c) == "holds" for c in claims if c != "5b")]
        tally = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in ("holds", "partly", "does not hold", "not measured"))
        if n < SMALL_RUN:
            lines.append(f"- **{model}**: {tally}; a **small run** (at most {n} facts behind a claim): not compared "
                         "with the paper.")
            continue
        replicate = ", ".join(steps) if steps else "none"
        partly = [c for c, v in cells.items() if v != "holds" and v != "not measured"]
        lines.append(f"- **{model}** (up to {n} facts behind a claim): {tally}. Steps whose claims all hold "
                     f"(5b, this project's control, aside): {replicate}. Claims short of holding: "
                     + (", ".join(f"{c} ({cells[c]})" for c in partly) or "none") + ".")
    return "\n".join(lines) if lines else "No model has results."


__all__ = ["ABOUT_ZERO", "DOMINANT", "SMALL_RUN", "STEPS", "claim_line", "conclusion_00", "conclusion_01",
           "conclusion_02", "conclusion_03", "conclusion_04", "extraction_by_layer", "knockout_increase", "ledger_rows",
           "top_layer_increases", "verdict"]
