"""Section 5 per extracting layer (utils/paper/by_layer.py): on small hand-made tables whose
answers are known, and on the committed results of gemma-3-270m (the numbers issue 17 quotes)."""

import pandas as pd
import pytest

from utils.paper import by_layer as bl
from utils.paths import PROJECT_ROOT
from utils.paper.rules import HURTS


def _layers():
    """Fact 1 extracts at layer 2 (head 0 alone), facts 2 and 3 at layer 5 (head 1; fact 3 also head 0).
    Blocking the subject stops layer 2's event and one of layer 5's two."""
    rows = []
    for known_id, layer, heads, subject_survives, last_only_survives in (
            (1, 2, [0], 0, 0), (2, 5, [1], 1, 1), (3, 5, [0, 1], 0, 1)):
        rows.append({"known_id": known_id, "projection": "logit_lens", "layer": layer, "measure": "attn",
                     "condition": None, "variant": None, "head": -1, "value": 1})
        for condition, value in (("subject", subject_survives), ("all but last", last_only_survives), ("none", 1)):
            rows.append({"known_id": known_id, "projection": "logit_lens", "layer": layer, "measure": "blocked",
                         "condition": condition, "variant": "renormalised", "head": -1, "value": value})
        for head in range(2):
            rows.append({"known_id": known_id, "projection": "logit_lens", "layer": layer, "measure": "head",
                         "condition": None, "variant": None, "head": head, "value": int(head in heads)})
    return pd.DataFrame(rows)


def test_blocked_is_split_by_layer_and_pooled():
    b = bl.blocked_by_layer(_layers(), "logit_lens", n_boot=50).set_index(["layer", "head", "condition"])
    assert b.loc[(2, -1, "subject"), "surviving"] == 0.0
    assert b.loc[(5, -1, "subject"), "surviving"] == 0.5
    assert b.loc[(5, -1, "subject"), "events"] == 2
    assert b.loc[(-1, -1, "subject"), "surviving"] == pytest.approx(1 / 3)
    assert b.loc[(-1, -1, "none"), "surviving"] == 1.0
    # layer 5's dominant head is 1 (both events); layer 2's is head 0 (its one event)
    assert bl.dominant_heads(_layers(), "logit_lens") == {2: 0, 5: 1}
    assert b.loc[(5, 1, "subject"), "events"] == 2


def test_heads_by_layer_shares_are_of_the_layer():
    h = bl.heads_by_layer(_layers(), "logit_lens").set_index(["layer", "head"])
    assert h.loc[(5, 1), "share of the layer's events"] == 1.0
    assert h.loc[(5, 0), "share of the layer's events"] == 0.5
    assert not h.loc[(5, 0), "dominant"]  # half is not "most"


def _prepend(change_at_5):
    return pd.DataFrame([{"known_id": k, "source": "subject", "layer": c, "window": str([c - 1, c, c + 1]),
                          "p_base": 0.5, "p_new": 0.5, "relative_change": change_at_5 if c == 5 else 0.0}
                         for k in (1, 2, 3) for c in range(1, 8)])


def test_mechanism_uses_the_ledgers_hurts_threshold():
    hurt = bl.mechanism_by_layer(_layers(), _prepend(HURTS - 1), "logit_lens", n_boot=50).set_index("layer")
    assert hurt.loc[5, "inside a hurting window"] and hurt.loc[5, "their centres"] == "5"
    assert not hurt.loc[2, "inside a hurting window"]  # window [4, 5, 6] does not hold layer 2
    assert hurt.loc[2, "need the subject"] == 1.0 and hurt.loc[5, "need the subject"] == 0.5
    assert hurt.loc[5, "need only the last position"] == 1.0
    mild = bl.mechanism_by_layer(_layers(), _prepend(HURTS + 1), "logit_lens", n_boot=50).set_index("layer")
    assert not mild.loc[5, "inside a hurting window"]


@pytest.mark.parametrize("subject, attribute, copy", [
    ("Kingdom of Bulgaria", " Bulgarian", True), ("Vietnam", " Vietnamese", True), ("Young Canadians", "Canada", True),
    ("Kingdom of Afghanistan", " Kabul", False), ("France", " French", False), ("Abarth", " Fiat", False),
    ("Toyota Camry", " Toyota", True), ("iPad 4", " Apple", False)])
def test_string_overlap(subject, attribute, copy):
    assert bl.string_overlap(subject, attribute) is copy


def test_examples_are_not_copies():
    m = pd.DataFrame([{"known_id": i, "layer": 3, "head": 0, "subject": s, "attribute": f'" {a}"', "rank_best": r,
                       "rank_last": r, "control_median_rank": 100.0, "control_top10": 0.0, "top_tokens": "[]"}
                      for i, (s, a, r) in enumerate([("Vietnam", "Vietnamese", 0), ("Ireland", "Dublin", 5),
                                                     ("Norway", "Oslo", 9)])])
    examples = bl.mapping_examples(m, per_head=3)
    assert list(examples.subject) == ["Ireland", "Norway"]
    stats = bl.mapping_stats(m).set_index("facts")
    assert stats.loc["copies", "n"] == 1 and stats.loc["not copies", "n"] == 2
    assert stats.loc["copies", "top-10"] == 1.0 and stats.loc["not copies", "top-10"] == 1.0


GEMMA = PROJECT_ROOT / "results" / "gemma-3-270m"


@pytest.mark.skipif(not (GEMMA / "extraction_layers.csv").exists(), reason="no committed gemma-3-270m results")
def test_gemma_split_by_layer_matches_the_issue():
    """Issue 17's numbers: at layer 12 (33 events) blocking the subject leaves none; at layer 15
    (163 events) 81.0% [74.8, 86.5] survive it and 79% survive "all but last"."""
    layers = pd.read_csv(GEMMA / "extraction_layers.csv")
    b = bl.blocked_by_layer(layers, "logit_lens").set_index(["layer", "head", "condition"])
    assert b.loc[(12, -1, "subject"), "events"] == 33 and b.loc[(12, -1, "subject"), "surviving"] == 0
    row = b.loc[(15, -1, "subject")]
    assert row.events == 163
    assert (round(row.surviving, 3), round(row.ci_low, 3), round(row.ci_high, 3)) == (0.810, 0.748, 0.865)
    assert round(b.loc[(15, -1, "all but last"), "surviving"], 2) == 0.79


def test_no_event_gives_empty_tables_not_errors():
    """A small run may have no extraction event: every table is empty, with its columns."""
    layers = _layers()
    layers = layers[layers.measure == "mlp"]  # no attention event, no blocked row, no head
    patched = pd.DataFrame(columns=["known_id", "positions", "source_layer", "extracted", "n_layers", "n_positions"])
    assert bl.events_by_layer(layers, "logit_lens").layer.tolist() == [-1]
    assert bl.heads_by_layer(layers, "logit_lens").empty
    blocked = bl.blocked_by_layer(layers, "logit_lens", n_boot=10)
    assert blocked.empty and "surviving" in blocked.columns
    assert bl.patched_by_layer(patched, layers, "logit_lens").empty
    mechanism = bl.mechanism_by_layer(layers, _prepend(0.0), "logit_lens", n_boot=10)
    assert mechanism.empty and "layer" in mechanism.columns
