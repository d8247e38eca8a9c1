"""Attributes rate on hand-made inputs, and the knockout sweep's mechanics on tiny models."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from tiny_models import prompt, tiny_model

from utils import Capture, ZeroSublayer, project, run, token_ranks
from utils.core.forward import hidden_after
from utils.paper import enrichment as E

VOCAB = (" Apple", " the", " iPhone", "ab", " banana", " The", "Apple", " Cupertino")


def fake_lm():
    return SimpleNamespace(cache={"vocab": VOCAB})


def test_attributes_rate_is_exact_string_overlap_over_the_kept_tokens():
    attributes = frozenset({" Apple", " iPhone", " Cupertino"})
    assert E.attributes_rate([" Apple", " iPhone", " banana", " Cupertino"], attributes) == 75.0
    # case and the leading space matter, as in the official code's exact string match
    assert E.attributes_rate([" apple", "Apple", " APPLE", " iPhone"], attributes) == 25.0
    # the official code divides by the list's length and intersects sets
    assert E.attributes_rate([" Apple", " Apple", " banana", " pear"], attributes) == 25.0
    assert math.isnan(E.attributes_rate([" Apple"], None))  # subject without attributes: excluded
    assert math.isnan(E.attributes_rate([], attributes))


def test_mismatched_control_pairs_every_subject_with_another():
    attributes = {s: frozenset({f" {s}"}) for s in "ABCDE"}
    control = E.mismatched(attributes)
    assert set(control) == set(attributes)
    assert all(control[s] != attributes[s] for s in attributes)
    assert sorted(map(sorted, control.values())) == sorted(map(sorted, attributes.values()))  # a permutation
    assert E.mismatched({"A": frozenset()}) == {}


def test_clean_top_tokens_filters_then_keeps_the_first_ones():
    scores = torch.tensor([[8.0, 7, 6, 5, 4, 3, 2, 1],    # " Apple" " the" " iPhone" "ab" " banana" ...
                           [1.0, 2, 3, 4, 5, 6, 7, 8]])
    top = E.clean_top_tokens(fake_lm(), scores, top_k=6, kept=3)
    assert top[0] == [" Apple", " iPhone", " banana"]  # " the" and "ab" dropped
    assert top[1] == [" Cupertino", "Apple", " banana"]  # " The" is a stopword once lower-cased
    assert E.clean_top_tokens(fake_lm(), scores, top_k=2, kept=50)[0] == [" Apple"]  # only the top-k


def test_layers_and_windows_scale_from_the_paper():
    assert E.scaled_layer(48, 40) == 40 and E.scaled_layer(18, 40) == 15 and E.scaled_layer(30, 40) == 25
    assert E.scaled_layer(18, 10) == 4
    assert E.scaled_layer(2, 40) == 1 and E.scaled_layer(1, 40) == 0  # clamped to a block of a shallow model
    windows = E.knockout_windows(40, 10)
    assert len(windows) == 40 and windows[0] == tuple(range(0, 11))  # the code's 11 layers
    assert windows[35] == tuple(range(35, 40))  # clipped below the representation layer
    assert E.knockout_windows(40, 10, extra_layer=False)[0] == tuple(range(0, 10))


def test_positions_skip_the_sink():
    fact = {"has_sink": True, "subject_first": 1, "subject_last": 3, "n_tokens": 8}
    assert E.positions_of(fact) == {"input first": 1, "subject first": 1, "subject last": 3,
                                    "subject subseq.": 4, "input last": 7}
    assert E.positions_of({**fact, "has_sink": False})["input first"] == 0


def tiny_fact(lm, n=9):
    ids = prompt(n)[0].tolist()
    return {"known_id": 7, "subject": "S", "prompt": "", "input_ids": ids, "subject_first": 2, "subject_last": 4,
            "n_tokens": n, "has_sink": False, "pred_token_id": 5, "static_ids": ids[2:5]}


@pytest.fixture(params=["llama", "gemma3_text", "gpt2"])
def tiny(request):
    lm = tiny_model(request.param)
    lm.cache["vocab"] = tuple(f" tok{i}" for i in range(lm.config.vocab_size))
    return lm


def test_hidden_after_equals_the_captured_residual(tiny):
    fact = tiny_fact(tiny)
    rows = [[], [ZeroSublayer("mlp", (0, 1))], [ZeroSublayer("attn", (1, 2), variant="official")]]
    ours = hidden_after(tiny, fact["input_ids"], rows, layer=2, position=4)
    ref = run(tiny, fact["input_ids"], rows, capture=Capture(positions=[4], resid=True)).acts["resid"][:, 3, 0]
    torch.testing.assert_close(ours, ref)
    late = hidden_after(tiny, fact["input_ids"], [[ZeroSublayer("mlp", (2,))]], layer=2, position=4)
    ref = run(tiny, fact["input_ids"], [[ZeroSublayer("mlp", (2,))]], capture=Capture(positions=[4], resid=True))
    torch.testing.assert_close(late, ref.acts["resid"][:, 3, 0])  # shared prefix below layer 2


def test_knockout_rows_mechanics(tiny):
    fact = tiny_fact(tiny)
    repr_layer = tiny.n_layers - 1
    windows = E.knockout_windows(repr_layer, 1)
    settings = E.Settings(top_k=20, kept=5, representation_layer=repr_layer, knockout_window=1, knockout_chunks=1)
    assert settings.knockout_layers(tiny.n_layers) == (repr_layer, 1, windows)
    everything = frozenset(f" tok{i}" for i in range(tiny.config.vocab_size))
    rows = pd.DataFrame(E.knockout_rows(tiny, fact, everything, settings=settings))
    assert len(rows) == 3 * len(windows)
    assert (rows.groupby("sublayer").start.nunique() == len(windows)).all()
    assert (rows.attributes_rate == 100).all()  # every token is an "attribute" here
    none = rows[rows.sublayer == "none"]
    assert none.attribute_rank.nunique() == 1  # one clean row, repeated per start
    # the clean row's rank is the rank in the clean representation
    clean = hidden_after(tiny, fact["input_ids"], [[]], repr_layer, 4)
    assert none.attribute_rank.iat[0] == int(token_ranks(project(tiny, clean), 5)[0])
    # knocking out the MLPs changes the representation, and chunking changes nothing
    chunked = pd.DataFrame(E.knockout_rows(tiny, fact, None, settings=replace(settings, knockout_chunks=2)))
    assert chunked.attributes_rate.isna().all()
    pd.testing.assert_series_equal(chunked.attribute_rank, rows.attribute_rank)
    assert (rows[rows.sublayer == "mlp"].attribute_rank.values != none.attribute_rank.values).any()
    # more chunks than window starts (a shallow model): the same rows (was a ValueError on an empty chunk)
    many = pd.DataFrame(E.knockout_rows(tiny, fact, None, settings=replace(settings, knockout_chunks=len(windows) + 2)))
    pd.testing.assert_series_equal(many.attribute_rank, rows.attribute_rank)


def test_enrichment_rows_cover_every_layer_and_position(tiny):
    fact = tiny_fact(tiny)
    attributes = frozenset(f" tok{i}" for i in range(0, tiny.config.vocab_size, 2))
    rows = pd.DataFrame(E.enrichment_rows(tiny, fact, attributes, E.Settings(top_k=30, kept=10), mode="logit_lens",
                                          top_tokens=10))
    layered = rows[rows.layer >= 0]
    assert len(layered) == tiny.n_layers * len(E.POSITIONS)
    assert set(layered.layer) == set(range(tiny.n_layers)) and set(layered.position) == set(E.POSITIONS)
    assert rows[rows.layer < 0].position.tolist() == [E.BASELINE]
    # the rate is recomputable from the stored tokens
    for row in rows.itertuples():
        assert row.attributes_rate == pytest.approx(E.attributes_rate(row.top_tokens, attributes))
    # layer 0 at a position is the token's own embedding: its top token is itself (tied, paper mode)
    if tiny.describe()["tied_embeddings"]:
        paper = pd.DataFrame(E.enrichment_rows(tiny, fact, None, E.Settings(top_k=5, kept=5), top_tokens=1))
        first = paper[(paper.layer == 0) & (paper.position == "subject last")]
        assert first.top_tokens.iat[0] == [f" tok{fact['input_ids'][4]}"]


def test_knockout_summary_splits_window_starts_in_thirds():
    rows = [{"sublayer": kind, "start": s, "attributes_rate": rate, "control_rate": 1.0}
            for s in range(6) for kind, rate in (("none", 10.0), ("mlp", 2.0 if s < 2 else 9.0), ("attn", 8.0))]
    summary = E.knockout_summary(pd.DataFrame(rows))
    assert list(summary.index) == ["early", "middle", "late"]
    assert summary.loc["early", "mlp"] == 2.0 and summary.loc["middle", "mlp"] == 9.0
    assert (summary["none"] == 10.0).all() and (summary["attn (control)"] == 1.0).all()
    assert summary.first_start.tolist() == [0, 2, 4] and summary.last_start.tolist() == [1, 3, 5]


def test_peak_summary_counts_layers_from_0():
    rows = [{"position": p, "layer": layer, "attributes_rate": (layer if p == "subject last" else 1.0),
             "control_rate": 0.5} for p in E.POSITIONS for layer in range(4)]
    peaks = E.peak_summary(pd.DataFrame(rows))
    assert peaks.loc["subject last", "peak_layer"] == 3 and peaks.loc["subject last", "peak_rate"] == 3.0
    assert peaks.loc["input last", "rate_at_subject_last_peak"] == 1.0
    assert (peaks.control_at_peak == 0.5).all()
