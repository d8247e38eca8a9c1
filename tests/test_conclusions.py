"""The generated conclusions (utils/paper/conclusions.py) say what the committed tables and the
ledger say: the model, the n, the ledger's verdict words, and numbers recomputed here from the
raw tables independently of the module; a results folder with fewer than 50 facts gives the
small-run text and no comparison with the paper; the executed references end with one."""

from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest

from utils.paper import conclusions, ledger
from utils.paths import PROJECT_ROOT
from utils.runs.results import load_meta, load_table, write_table

MODELS = ["gemma-3-270m", "smollm2-135m"]
VERDICT_WORDS = ("holds", "partly", "does not hold", "not measured", "small run")
NOTEBOOK_CLAIMS = {"01": ("1", "2", "3", "4"), "02": ("5", "5b", "6", "6b"), "03": ("7", "8", "9", "10", "11")}
BUILDERS = {"01": conclusions.conclusion_01, "02": conclusions.conclusion_02, "03": conclusions.conclusion_03}


def committed(model: str) -> bool:
    return (PROJECT_ROOT / "results" / model / "information_flow_prepend.csv").exists()


@pytest.fixture(scope="module")
def texts():
    """Every notebook's conclusion on every committed model (built once: the ledger's bootstrap)."""
    out = {}
    for model in MODELS:
        if committed(model):
            long = ledger.build([ledger.ModelResults.load(model, PROJECT_ROOT)])
            out[model] = {"long": long, **{nb: f(model, root=PROJECT_ROOT, long=long) for nb, f in BUILDERS.items()}}
    return out


def table(model, name):
    return load_table(name, model, root=PROJECT_ROOT)


def pct(v):
    return f"{v:.1f}%"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("nb", sorted(BUILDERS))
def test_names_the_model_the_n_and_the_ledgers_verdicts(texts, model, nb):
    if model not in texts:
        pytest.skip(f"no committed results for {model}")
    text, long = texts[model][nb], texts[model]["long"]
    assert f"**{model}**" in text
    n = {"01": table(model, "information_flow_prepend").known_id.nunique(),
         "02": table(model, "attributes_rate").dropna(subset=["attributes_rate"]).known_id.nunique(),
         "03": table(model, "extraction_layers").known_id.nunique()}[nb]
    assert f"**{model}**: {n} " in text
    assert "small run" not in text  # both committed runs have more than 50 facts
    for claim in NOTEBOOK_CLAIMS[nb]:
        rows = long[long.claim == claim]
        assert f"Claim {claim} (" in text
        assert f"**{rows.verdict.iloc[0]}**" in text.split(f"Claim {claim} (")[1].split("\n")[0]
        main = rows.iloc[0]
        if main.verdict != "not measured":  # the main measure and its interval are the ledger's
            line = text.split(f"Claim {claim} (")[1].split("\n")[0]
            assert f"n = {int(main.n)}" in line
            assert conclusions._with_ci(main.value, main.ci_low, main.ci_high, conclusions._unit_of(main)) in line


@pytest.mark.parametrize("model", MODELS)
def test_01_dips_split_and_top_layer_increase_equal_the_tables(texts, model):
    if model not in texts:
        pytest.skip(f"no committed results for {model}")
    text = texts[model]["01"]
    flow = table(model, "information_flow_prepend")
    means = flow.groupby(["source", "layer"]).relative_change.mean()
    for source in ("non-subject", "subject"):
        curve = means[source]
        assert f"deepest at window centre {int(curve.idxmin())}, mean change {pct(curve.min())}" in text
    summary = table(model, "information_flow_summary")
    summary = summary[summary.sink == "prepend"].set_index(["facts_group", "source"])
    first = summary.loc[("subject starts the prompt", "non-subject")]
    later = summary.loc[("subject later in the prompt", "non-subject")]
    assert (f"for the {int(later.facts)} facts whose subject comes later in the prompt the relation's dip "
            f"{'moves' if first.at_layer != later.at_layer else 'stays'} from layer {int(first.at_layer)}") in text
    assert f"to layer {int(later.at_layer)} ({pct(later.deepest_mean_change)})" in text
    # an upper-layer window whose blocking raises the probability is named with its mean change
    n_layers = load_meta("information_flow_prepend", model, PROJECT_ROOT)["n_layers"]
    upper = means["last"][means["last"].index >= (n_layers - 1) / 2]
    if upper.max() > 5:
        assert f"Blocking last → last in the windows centred on layer {int(upper.idxmax())}" in text
        assert f"*raises* the prediction's probability: mean change {pct(upper.max())}" in text


def baseline_and_curve(model, name):
    """The static-embedding rate and the last subject token's mean rate per layer, from a table."""
    rates = table(model, name).dropna(subset=["attributes_rate"])
    base = rates[rates.layer < 0].attributes_rate.mean()
    return base, rates[(rates.position == "subject last") & (rates.layer >= 0)].groupby("layer").attributes_rate.mean()


@pytest.mark.parametrize("model", MODELS)
def test_02_baseline_shape_knockout_and_projection_equal_the_tables(texts, model):
    if model not in texts:
        pytest.skip(f"no committed results for {model}")
    text = texts[model]["02"]
    base, curve = baseline_and_curve(model, "attributes_rate")
    assert f"static-embedding rate ({pct(base)})" in text
    assert f"peaks at {pct(curve.max())} at layer {int(curve.idxmax())}" in text
    if (curve < base).all():
        assert "above the last-subject-token rate at every layer" in text
    knock = table(model, "sublayer_knockout_official")
    by = knock.groupby(["sublayer", "start"]).attributes_rate.mean()
    increase = by["mlp"] - by["none"]
    best = int(increase.idxmax())
    top = knock.assign(t=knock.attribute_rank < 500).groupby(["sublayer", "start"]).t.mean()
    assert f"the window starting at layer {best}: {pct(by['none'][best])} → {pct(by['mlp'][best])}" in text
    assert f"top-500 share {top['none'][best]:.3f} → {top['mlp'][best]:.3f}" in text
    raising = [int(s) for s in increase.index if increase[s] > 0]
    if "*raises*" in text:
        assert f"starting at {conclusions._layers_text(raising)} *raises*" in text
    paper_base, paper_curve = baseline_and_curve(model, "attributes_rate_paper")
    if paper_base > paper_curve.max():
        assert f"peaks at the embeddings: static embedding {pct(paper_base)}" in text
    else:
        assert f"peaks at layer {int(paper_curve.idxmax())} ({pct(paper_curve.max())})" in text


@pytest.mark.parametrize("model", MODELS)
def test_03_events_and_blocked_extraction_per_layer_equal_the_tables(texts, model):
    if model not in texts:
        pytest.skip(f"no committed results for {model}")
    text = texts[model]["03"]
    t = table(model, "extraction_layers")
    events = t[(t.measure == "attn") & (t.projection == "logit_lens") & (t.value == 1)]
    assert f"Extraction events: {len(events)} " in text
    blocked = t[(t.measure == "blocked") & (t.variant == "renormalised") & (t.condition == "subject")]
    counts = events.layer.value_counts()
    for layer, count in counts[counts >= 0.1 * len(events)].items():
        survive = blocked[blocked.layer == layer].value.mean()
        assert f"Layer {layer} ({count} events): with last → subject blocked {pct(100 * survive)} [" in text
    heads = table(model, "extraction_heads")
    first = heads.iloc[0]
    assert f"layer {int(first.layer)} head {int(first['head'])} in {int(first.events)} events" in text


def test_04_counts_the_ledgers_verdicts():
    long = load_table("ledger", None, root=PROJECT_ROOT)
    if long is None:
        pytest.skip("no committed ledger")
    long["claim"] = long.claim.astype(str)
    text = conclusions.conclusion_04(long)
    for model, rows in long.groupby("model"):
        counts = rows.drop_duplicates("claim").verdict.value_counts()
        line = next(line for line in text.splitlines() if f"**{model}**" in line)
        for word in ("holds", "partly", "does not hold", "not measured"):
            assert f"{int(counts.get(word, 0))} {word}" in line


def test_00_counts_the_known_set():
    table_ = pd.DataFrame({"known": [True] * 60 + [False] * 30 + [False] * 2,
                           "skip_reason": [None] * 90 + ["subject not found"] * 2,
                           "attribute_rank": [0] * 60 + [3] * 10 + [50] * 20 + [0] * 2})
    text = conclusions.conclusion_00("gemma-3-270m", table_, "known_1000", root=PROJECT_ROOT)
    assert "**gemma-3-270m**: 60 known facts" in text and "60 of the 90 facts evaluated (66.7%)" in text
    assert "2 of 92 could not be evaluated" in text and "In the top 5: 77.8%" in text and "known_1000" in text
    small = conclusions.conclusion_00("gemma-3-270m", table_.iloc[30:], "small", root=PROJECT_ROOT)
    assert "small run" in small and "30 known facts" in small


def _slice_results(model: str, root, n_facts: int) -> None:
    """The committed tables of ``model`` restricted to their first ``n_facts`` facts, written
    (with the original metadata) under ``root``."""
    folder = root / "results" / model
    folder.mkdir(parents=True)
    for path in sorted((PROJECT_ROOT / "results" / model).glob("*.csv")):
        name = path.stem
        df = load_table(name, model, root=PROJECT_ROOT)
        if "known_id" in df.columns:
            df = df[df.known_id.isin(sorted(df.known_id.unique())[:n_facts])]
        meta = {k: v for k, v in json.loads(path.with_suffix(".meta.json").read_text()).items()
                if k not in ("table", "rows", "json_columns", "csv_sha256")}
        write_table(df, folder, name, meta)


@pytest.mark.parametrize("nb", sorted(BUILDERS))
def test_a_small_run_says_so_and_compares_nothing(tmp_path, nb):
    model = "gemma-3-270m"
    if not committed(model):
        pytest.skip(f"no committed results for {model}")
    _slice_results(model, tmp_path, 20)
    text = BUILDERS[nb](model, root=tmp_path)
    assert "small run" in text and f"**{model}**" in text
    assert "Against the paper" not in text and "Claim " not in text
    assert "no comparison with the paper" in text


REFERENCES = sorted((PROJECT_ROOT / "executed" / "reference").glob("0[0-4]_*.ipynb"))


@pytest.mark.parametrize("path", REFERENCES, ids=[p.stem for p in REFERENCES])
def test_each_executed_reference_ends_with_its_conclusion(path):
    nb = nbformat.read(path, as_version=4)
    if not any(c.cell_type == "markdown" and c.source.startswith("## Conclusion") for c in nb.cells):
        pytest.skip(f"{path.name} has no Conclusion cell yet: `make references` regenerates it")
    tagged = "".join(c.source for c in nb.cells
                     if {"parameters", "injected-parameters"} & set(c.metadata.get("tags", [])))
    model = re.findall(r'^model\s*=\s*"([^"]+)"', tagged, re.M)[-1]  # papermill's injected value comes last
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    shown = "".join(o.get("data", {}).get("text/markdown", "") or o.get("text", "") for o in last.outputs)
    assert model in shown, shown
    assert any(word in shown for word in VERDICT_WORDS), shown
