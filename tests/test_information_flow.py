"""Information flow by attention knockout: the batched sweep computes what the per-example
loop of the official code computes, on tiny models of every architecture."""

import pandas as pd
import pytest
import torch
from tiny_models import ARCHITECTURES, prompt, tiny_model

from utils.core.forward import clean_prefix, run, run_last_position
from utils.core.interventions import BlockAttention, window
from utils.paper.facts import position_sets
from utils.paper.information_flow import (
    PAPER_SETS,
    SOURCE_SETS,
    FlowSettings,
    default_window,
    fact_flags,
    flow_of_fact,
    flow_of_fact_unbatched,
    information_flow,
    knockout_probs,
    position_heatmap,
    summarize,
)

N = 10


def tiny_fact(n=N, subject=(2, 3, 4), has_sink=True, known_id=7, seed=1):
    ids = prompt(n, seed)[0].tolist()
    if has_sink:
        ids[0] = 1  # the tiny models' BOS
    return {"known_id": known_id, "input_ids": ids, "n_tokens": n, "subject_positions": list(subject),
            "subject_first": subject[0], "has_sink": has_sink}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_last_position_run_equals_full_run(arch):
    """Only the last token is recomputed, from cached keys and values of the others."""
    lm, ids = tiny_model(arch), prompt(N)
    rows = [[]] + [[BlockAttention(window(c, 3, lm.n_layers), [N - 1], keys)]
                   for keys in ([0], [2, 3, 4], [N - 1], [N - 2]) for c in range(lm.n_layers)]
    full = run(lm, ids, rows).logits
    fast = run_last_position(lm, ids, rows).logits
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    # a prefix is reusable across calls, and a one-row call matches too
    prefix = clean_prefix(lm, ids)
    chunked = torch.cat([run_last_position(lm, prefix, rows[i:i + 5]).logits for i in range(0, len(rows), 5)])
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run_last_position(lm, prefix, rows[3:4]).logits, full[3:4], atol=1e-5, rtol=1e-5)
    assert (full - full[0]).abs().max() > 1e-2, "the knockouts should change the prediction"


def test_last_position_run_refuses_other_queries():
    lm, ids = tiny_model("llama"), prompt(N)
    with pytest.raises(ValueError, match="last position"):
        run_last_position(lm, ids, [[BlockAttention([1], [N - 2], [0])]])


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_window_covering_no_layer_is_the_clean_run(arch):
    lm, ids = tiny_model(arch), prompt(N)
    empty = window(lm.n_layers + 3, 3, lm.n_layers)
    assert empty == ()
    probs = knockout_probs(lm, ids[0].tolist(), [[BlockAttention(empty, [N - 1], [1, 2, 3])], []])
    clean = run(lm, ids).probs()[0]
    torch.testing.assert_close(probs[0], clean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs[0], probs[1], atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "gptj"])
def test_worked_example_heatmap_equals_direct_computation(arch):
    lm, ids = tiny_model(arch), prompt(N)[0].tolist()
    k = 3
    heat = position_heatmap(lm, ids, k, batch_size=7)
    assert heat.shape == (N, lm.n_layers)
    base = run(lm, ids).probs()[0]
    target = int(base.argmax())
    for pos in (0, 4, N - 1):
        for centre in range(lm.n_layers):
            p = run(lm, ids, [[BlockAttention(window(centre, k, lm.n_layers), [N - 1], [pos])]]).probs()[0, target]
            expected = 100 * (p - base[target]) / base[target]
            assert heat.loc[pos, centre] == pytest.approx(expected.item(), abs=1e-3)
    assert heat.abs().max().max() > 0.1


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("sink", ["prepend", "official"])
def test_batched_sweep_equals_per_example_loop(arch, sink):
    lm = tiny_model(arch)
    fact = tiny_fact()
    k = 3
    batched = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(k, sink, SOURCE_SETS, batch_size=16)))
    loop = pd.DataFrame(flow_of_fact_unbatched(lm, fact, FlowSettings(k, sink, SOURCE_SETS)))
    assert len(batched) == len(loop) == len(SOURCE_SETS) * lm.n_layers
    assert (batched[["source", "layer"]] == loop[["source", "layer"]]).all().all()
    assert (batched.p_new - loop.p_new).abs().max() < 1e-5
    assert (batched.p_base - loop.p_base).abs().max() < 1e-6
    assert batched.relative_change.abs().max() > 0.1


def test_source_sets_keep_the_sink_out_by_default():
    fact = tiny_fact(n=8, subject=(1, 2, 3), has_sink=True)
    ours = position_sets(fact)
    assert ours == {"subject": [1, 2, 3], "non-subject": [4, 5, 6], "last": [7],
                    "subject-last": [3], "subject-other": [1, 2]}
    official = position_sets(fact, include_sink=True)
    assert official["non-subject"] == [0, 4, 5, 6] and official["subject"] == [1, 2, 3]
    # no sink, subject at position 0: the official sets put position 0 in the subject
    plain = tiny_fact(n=6, subject=(0, 1), has_sink=False)
    assert position_sets(plain) == position_sets(plain, include_sink=True)
    assert position_sets(plain)["subject"] == [0, 1] and position_sets(plain)["non-subject"] == [2, 3, 4]


def test_empty_source_sets_make_no_rows():
    lm = tiny_model("llama")
    fact = tiny_fact(subject=(3,))  # one subject token: no "subject-other"
    rows = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(3)))
    assert set(rows.source) == set(SOURCE_SETS) - {"subject-other"}
    subject = rows[rows.source == "subject"].reset_index(drop=True)
    last = rows[rows.source == "subject-last"].reset_index(drop=True)
    assert (subject.p_new == last.p_new).all()


def test_default_window():
    assert default_window(48) == 9 and default_window(28) == 5  # the paper's
    assert default_window(30) == 5 and default_window(18) == 3 and default_window(2) == 1


def test_summary_finds_the_deepest_drop_and_its_half_range():
    curve = {"subject": [0, -10, -30, -60, -40, -20, 0], "last": [0, 1, -1, 0, 2, 0, 0]}
    table = pd.DataFrame([{"known_id": i, "source": s, "layer": layer, "relative_change": v + (i - 1)}
                          for s, values in curve.items() for layer, v in enumerate(values) for i in range(3)])
    summary = summarize(table).set_index("source")
    assert summary.loc["subject", "deepest_mean_change"] == pytest.approx(-60)
    assert summary.loc["subject", "at_layer"] == 3  # layers counted from 0
    assert (summary.loc["subject", "half_drop_from"], summary.loc["subject", "half_drop_to"]) == (2, 4)
    assert summary.loc["subject", "facts"] == 3
    assert summary.loc["last", "at_layer"] == summary.loc["last", "half_drop_from"] == 2


def test_sweep_writes_a_tidy_table_with_flags(tmp_path):
    lm = tiny_model("gemma3_text")
    facts = pd.DataFrame([tiny_fact(known_id=1), tiny_fact(subject=(1, 2), known_id=2, seed=3)])
    table = information_flow(lm, facts, FlowSettings(3, sets=PAPER_SETS), dataset="tiny", progress=False)
    assert len(table) == 2 * len(PAPER_SETS) * lm.n_layers
    assert set(table.columns) >= {"known_id", "source", "layer", "p_base", "p_new", "relative_change",
                                  "subject_at_start", "subject_at_zero", "sink"}
    flags = fact_flags(facts).set_index("known_id")
    assert not flags.loc[1, "subject_at_start"] and flags.loc[2, "subject_at_start"]
    again = information_flow(lm, facts, FlowSettings(3, sets=PAPER_SETS), dataset="tiny", progress=False)  # from the journal
    pd.testing.assert_frame_equal(table, again)


def test_real_model_batched_equals_loop(smollm):
    """SmolLM2 in fp32: the fast path agrees with the per-example loop to 1e-5."""
    prompt_text, subject = "The Eiffel Tower is located in the city of", "The Eiffel Tower"
    ids, spans = smollm.encode(prompt_text, prepend_sink=True, offsets=True)
    from utils.paper.facts import subject_positions

    positions = subject_positions(spans, prompt_text, subject)
    fact = {"known_id": 0, "input_ids": ids, "n_tokens": len(ids), "subject_positions": positions,
            "subject_first": positions[0], "has_sink": True}
    batched = pd.DataFrame(flow_of_fact(smollm, fact, FlowSettings(5, sets=("subject",))))
    loop = pd.DataFrame(flow_of_fact_unbatched(smollm, fact, FlowSettings(5, sets=("subject",))))
    assert (batched.p_new - loop.p_new).abs().max() < 1e-5
    assert batched.relative_change.min() < -10, "blocking the subject should hurt the prediction somewhere"
