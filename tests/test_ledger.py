"""The claims ledger: every verdict rule reaches each of its outcomes on constructed tables,
and the confidence intervals resample facts, not rows."""

import numpy as np
import pandas as pd
import pytest

from utils.paper import ledger, rules
from utils.paper.ledger import CLAIMS, ModelResults
from utils.paper.rules import VERDICTS

L = 10  # layers of the constructed model (depth of layer l: l / 9)
RNG = np.random.default_rng(0)


def noise(n, scale=1.0):
    return RNG.normal(0, scale, n)


def results(n_layers=L, **tables) -> ModelResults:
    return ModelResults("constructed", tables, n_layers)


# --------------------------------------------------------------------------------------
# table builders: each fact gets the given curve plus a little noise


def flow(curves: dict, n_facts=30, n_layers=L, scale=1.0) -> pd.DataFrame:
    rows = [{"known_id": f, "source": source, "layer": layer, "relative_change": value + e}
            for f in range(n_facts) for source, curve in curves.items()
            for layer, (value, e) in enumerate(zip(curve, noise(n_layers, scale)))]
    return pd.DataFrame(rows)


def dip(at, size=-50.0, n_layers=L, base=0.0):
    curve = np.full(n_layers, base)
    curve[at] = size
    return curve


def rates(subject_last, others=10.0, control=5.0, baseline=2.0, n_facts=30) -> pd.DataFrame:
    rows = []
    for f in range(n_facts):
        for layer in range(L):
            for position in ("subject last", "subject first", "input last"):
                value = subject_last[layer] if position == "subject last" else others
                rows.append({"known_id": f, "position": position, "layer": layer,
                             "attributes_rate": value + noise(1)[0], "control_rate": control + noise(1)[0]})
        rows.append({"known_id": f, "position": "static embedding", "layer": -1,
                     "attributes_rate": baseline + noise(1)[0], "control_rate": np.nan})
    return pd.DataFrame(rows)


def knockouts(none=40.0, mlp=10.0, attn=38.0, n_facts=30) -> pd.DataFrame:
    return pd.DataFrame([{"known_id": f, "sublayer": sub, "start": start, "attributes_rate": value + noise(1)[0]}
                         for f in range(n_facts) for start in range(9)
                         for sub, value in (("none", none), ("mlp", mlp if start < 3 else none),
                                            ("attn", attn if start < 3 else none))])


def extraction(attn_layers, mlp_layers=(), n_facts=40, every=1, **extra) -> pd.DataFrame:
    """Facts f with f % every == 0 extract with attention at ``attn_layers``, all with the MLP at ``mlp_layers``."""
    rows = [{"known_id": f, "projection": p, "layer": layer, "measure": sub, "condition": None, "variant": None,
             "head": -1, "value": int(layer in (attn_layers if sub == "attn" and f % every == 0 else
                                                mlp_layers if sub == "mlp" else ()))}
            for f in range(n_facts) for p in ("logit_lens", "paper") for sub in ("attn", "mlp") for layer in range(L)]
    for measure, values in extra.items():  # per-fact values of an event-level measure, at layer 8
        rows += [{"known_id": f, "projection": "logit_lens", "layer": 8, "measure": measure, "condition": c,
                  "variant": v, "head": -1, "value": value} for f, (c, v, value) in values]
    return pd.DataFrame(rows)


def blocked(still: list[int], non_subject: list[int] | None = None) -> list:
    """Per fact: still extracting (1) with last -> subject blocked, and with last -> non-subject
    blocked (default: always still extracting)."""
    non_subject = [1] * len(still) if non_subject is None else non_subject
    return [(f, (condition, variant, s)) for condition, values in (("subject", still), ("non-subject", non_subject))
            for f, s in enumerate(values) for variant in ("renormalised", "official")]


def patched(subject, non_subject, last, n_facts=40) -> pd.DataFrame:
    return pd.DataFrame([{"known_id": f, "positions": g, "source_layer": s, "extracted": int(rate[f] if isinstance(
        rate, list) else rate)} for f in range(n_facts) for g, rate in
                         (("subject", subject), ("non-subject", non_subject), ("last", last)) for s in (0, 1, 3)])


def mappings(top10_share, control=0.0, n_facts=40) -> pd.DataFrame:
    hits = int(round(top10_share * n_facts))
    return pd.DataFrame([{"known_id": f, "layer": 8, "head": 2, "rank_best": 0 if f < hits else 500,
                          "control_top10": control} for f in range(n_facts)])


# --------------------------------------------------------------------------------------
# every rule, every outcome

CASES = {
    "1": {
        "holds": lambda: results(information_flow_prepend=flow({"non-subject": dip(2)})),
        "partly": lambda: results(information_flow_prepend=flow({"non-subject": dip(8)})),  # too deep in the model
        "does not hold": lambda: results(information_flow_prepend=flow({"non-subject": np.full(L, 5.0)})),
    },
    "2": {
        "holds": lambda: results(information_flow_prepend=flow({"subject": dip(7)})),
        "partly": lambda: results(information_flow_prepend=flow({"subject": dip(7, size=-8)})),  # too small
        "does not hold": lambda: results(information_flow_prepend=flow({"subject": np.full(L, 3.0)})),
    },
    "3": {
        "holds": lambda: results(information_flow_prepend=flow({"non-subject": dip(1), "subject": dip(7)})),
        "partly": lambda: results(20, information_flow_prepend=flow(  # one layer of 20 apart: 0.05 < 0.1
            {"non-subject": dip(9, n_layers=20), "subject": dip(10, n_layers=20)}, n_layers=20)),
        "does not hold": lambda: results(information_flow_prepend=flow({"non-subject": dip(7), "subject": dip(1)})),
    },
    "4": {
        "holds": lambda: results(information_flow_prepend=flow({"last": np.full(L, 2.0)})),
        "partly": lambda: results(information_flow_prepend=flow({"last": dip(5, size=-14)}, scale=8)),
        "does not hold": lambda: results(information_flow_prepend=flow({"last": dip(5, size=-40)})),
    },
    "5": {
        "holds": lambda: results(attributes_rate=rates(np.r_[0, 20, [40] * (L - 2)])),
        "partly": lambda: results(attributes_rate=rates(np.r_[0, 20, [40] * (L - 2)], others=60)),
        # the rate rises, but never above the static embedding's
        "does not hold": lambda: results(attributes_rate=rates(np.r_[0, [20] * (L - 1)], others=5, baseline=30)),
    },
    "5b": {
        "holds": lambda: results(attributes_rate=rates(np.r_[0, [40] * (L - 1)], control=5)),
        "partly": lambda: results(attributes_rate=rates(np.r_[0, [40] * (L - 1)], control=30)),
        "does not hold": lambda: results(attributes_rate=rates(np.r_[0, [40] * (L - 1)], control=40)),
    },
    "6": {
        "holds": lambda: results(sublayer_knockout_official=knockouts(mlp=10, attn=38)),
        "partly": lambda: results(sublayer_knockout_official=knockouts(mlp=10, attn=10)),  # attention as much
        "does not hold": lambda: results(sublayer_knockout_official=knockouts(mlp=45)),
    },
    "6b": {
        "holds": lambda: results(sublayer_knockout_zero=knockouts(mlp=10, attn=38)),
        "partly": lambda: results(sublayer_knockout_zero=knockouts(mlp=35, attn=38)),  # a 12% drop only
        "does not hold": lambda: results(sublayer_knockout_zero=knockouts(mlp=40, attn=40)),
    },
    "7": {
        "holds": lambda: results(extraction_layers=extraction(attn_layers=(7, 8), every=2)),
        "partly": lambda: results(extraction_layers=extraction(attn_layers=(1, 2), every=2)),  # lower layers
        "does not hold": lambda: results(extraction_layers=extraction(attn_layers=(8,), mlp_layers=(8,), every=2)),
    },
    "8": {
        "holds": lambda: results(extraction_layers=extraction((8,), blocked=blocked([0] * 40))),
        # most facts stop, but blocking the non-subject positions (with the last) stops as many
        "partly": lambda: results(extraction_layers=extraction((8,), blocked=blocked([0] * 40, [0] * 40))),
        "does not hold": lambda: results(extraction_layers=extraction((8,), blocked=blocked([1] * 40))),
    },
    "9": {
        "holds": lambda: results(extraction_layers=extraction((8,)), extraction_patched=patched(0, 1, 1)),
        "partly": lambda: results(extraction_layers=extraction((8,)), extraction_patched=patched(0, 1, 0)),
        "does not hold": lambda: results(extraction_layers=extraction((8,)), extraction_patched=patched(1, 1, 1)),
    },
    "10": {
        "holds": lambda: results(extraction_layers=extraction((8,), subject_rank=[(f, (None, None, 500))
                                                                                 for f in range(40)])),
        "partly": lambda: results(extraction_layers=extraction((8,), subject_rank=[  # 40% rank low
            (f, (None, None, 500 if f % 5 < 2 else 0)) for f in range(100)])),
        "does not hold": lambda: results(extraction_layers=extraction((8,), subject_rank=[(f, (None, None, 0))
                                                                                         for f in range(40)])),
    },
    "11": {
        "holds": lambda: results(extraction_head_mappings=mappings(0.9)),
        "partly": lambda: results(extraction_head_mappings=mappings(0.15)),
        "does not hold": lambda: results(extraction_head_mappings=mappings(0.0, control=0.1)),
    },
}


def test_every_claim_has_a_rule_and_cases():
    assert [r.claim for r in rules.RULES] == list(CLAIMS) == list(CASES)
    assert set(rules.rules_table().columns) >= {"claim", "holds", "partly", "does not hold"}


@pytest.mark.parametrize("claim,outcome", [(c, o) for c, cases in CASES.items() for o in cases])
def test_rule_reaches_outcome(claim, outcome):
    cell = CLAIMS[claim](CASES[claim][outcome](), n_boot=200)
    assert cell.verdict == outcome, (cell.verdict, [(m.name, m.value, m.ci_low, m.ci_high) for m in cell.measures])
    assert cell.n >= rules.MIN_FACTS and np.isfinite(cell.measures[0].value)


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_not_measured_without_tables_or_with_too_few_facts(claim):
    cell = CLAIMS[claim](results())
    assert cell.verdict == "not measured" and "missing" in cell.note
    holds = CASES[claim]["holds"]()
    for facts in (5, 0):  # too few facts, and tables with no rows at all
        few = {name: t[t.known_id < facts] for name, t in holds.tables.items()}
        cell = CLAIMS[claim](results(holds.n_layers, **few), n_boot=50)
        assert cell.verdict == "not measured" and ": only" in cell.note, cell.note


def test_most_means_more_than_half():
    """A third (or 45%) of the facts stopping is not "most": the interval must lie above 0.5."""
    for still in ([0, 1, 1] * 13 + [1], [0] * 18 + [1] * 22):
        cell = CLAIMS["8"](results(extraction_layers=extraction((8,), blocked=blocked(still, [1] * 40))), n_boot=200)
        assert cell.verdict == "does not hold", [(m.name, m.value, m.ci_low) for m in cell.measures]


def test_claim_5_needs_the_baseline_and_the_other_positions_in_the_band():
    """Above the baseline only at the top layers (past the early-to-middle band) is not claim 5."""
    late = np.r_[[1] * 7, [40] * (L - 7)]  # depth 7/9 = 0.78: above 0.6
    cell = CLAIMS["5"](results(attributes_rate=rates(late, others=0, baseline=10)), n_boot=200)
    assert cell.verdict == "does not hold"


def test_claim_8_split_by_layer_and_named_sets():
    """Two extracting layers that each carry >= 10% of the events get rows of their own."""
    base = extraction((8,), blocked=blocked([0] * 40, [1] * 40))
    layer3 = base[base.measure == "blocked"].assign(layer=3, value=1)  # at layer 3 nothing stops
    cell = CLAIMS["8"](results(extraction_layers=pd.concat([base, layer3])), n_boot=100)
    names = [m.name for m in cell.measures]
    assert any(n.endswith("at layer 3") for n in names) and any(n.endswith("at layer 8") for n in names)
    at3 = next(m for m in cell.measures if m.name.startswith("events whose extraction stops, last -> subject")
               and m.name.endswith("at layer 3"))
    assert at3.value == 0 and "the paper's set, with the last position" in " ".join(names)
    assert all(m.unit for m in cell.measures)


def test_claim_3_says_why_its_interval_is_narrow():
    cell = CLAIMS["3"](CASES["3"]["holds"](), n_boot=100)
    assert "of the resamples" in cell.note and cell.measures[0].unit == "depth"


def test_every_row_has_a_unit_and_its_rule_in_words():
    for claim, cases in CASES.items():
        rows = ledger.judge(claim, cases["holds"](), n_boot=50).rows()
        assert all(row["unit"] for row in rows), claim
        assert all(row["rule"] == rules.rule_words(claim) and row["rule"].startswith("holds: ") for row in rows)


def test_cells_of_6_and_6b_show_both_drops():
    long = ledger.build([ModelResults("a", CASES["6"]["holds"]().tables, L)], n_boot=50)
    text = ledger.wide(long).iloc[list(CLAIMS).index("6"), 0]
    assert "attention knockouts" in text and "%" in text and "points" in text


def test_all_four_verdicts_are_reached_by_every_rule():
    for claim, cases in CASES.items():
        assert set(cases) | {"not measured"} == set(VERDICTS), claim


# --------------------------------------------------------------------------------------
# the bootstrap


def test_bootstrap_resamples_facts_not_rows():
    """Two facts with 50 rows each, one all 0, the other all 1: resampling facts puts the
    mean anywhere in [0, 1]; resampling rows would give a narrow interval around 0.5."""
    per_fact = np.array([np.zeros(50), np.ones(50)])
    value, lo, hi = ledger.bootstrap(2, lambda i: per_fact[i].mean(), n_boot=400)
    assert value == 0.5 and lo == 0.0 and hi == 1.0
    rows = per_fact.ravel()  # what a row bootstrap would see
    rng = np.random.default_rng(0)
    row_means = [rows[rng.integers(0, 100, 100)].mean() for _ in range(400)]
    assert np.percentile(row_means, 97.5) - np.percentile(row_means, 2.5) < 0.3


def test_claims_count_facts_and_a_facts_rows_travel_together():
    table = flow({"non-subject": dip(2)}, n_facts=12)
    cell = ledger.claim_1(results(information_flow_prepend=table), n_boot=300)
    assert cell.n == 12
    repeated = pd.concat([table] + [table[table.known_id == 0]] * 5)  # fact 0's rows five more times
    again = ledger.claim_1(results(information_flow_prepend=repeated), n_boot=300)
    assert again.n == 12
    assert (again.measures[0].value, again.measures[0].ci_low, again.measures[0].ci_high) == pytest.approx(
        (cell.measures[0].value, cell.measures[0].ci_low, cell.measures[0].ci_high))


def test_bootstrap_is_seeded():
    x = RNG.normal(size=30)
    assert ledger.bootstrap(30, lambda i: x[i].mean()) == ledger.bootstrap(30, lambda i: x[i].mean())
    assert ledger.bootstrap(30, lambda i: x[i].mean(), seed=1) != ledger.bootstrap(30, lambda i: x[i].mean())


# --------------------------------------------------------------------------------------
# the ledger as a table, and the paper's column


def test_long_and_wide_ledger():
    models = [ModelResults("a", CASES["1"]["holds"]().tables, L), ModelResults("b", {}, None)]
    long = ledger.build(models, n_boot=50)
    assert list(long.columns[:8]) == ["claim", "model", "measure", "value", "ci_low", "ci_high", "n", "verdict"]
    assert set(long.claim) == set(CLAIMS) and set(long.model) == {"a", "b"}
    assert (long[long.model == "b"].verdict == "not measured").all()
    table = ledger.wide(long)
    assert list(table.columns) == ["a", "b"] and len(table) == len(CLAIMS)
    assert table.iloc[0, 0].endswith("holds") and table.iloc[0, 1].startswith("not measured")


def test_paper_claims_invent_no_claim():
    """(What can be cited there: tests/test_paper_claims.py.)"""
    claims = ledger.paper_claims()
    assert set(claims.claim) <= set(CLAIMS)
    assert (claims.source.str.len() > 0).all() and (claims.tag.str.len() > 0).all()
