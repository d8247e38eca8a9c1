"""Section 5 (attribute extraction) computations on tiny random models of every architecture."""

import pytest
import torch
from tiny_models import ARCHITECTURES, prompt, tiny_model

from utils.core.forward import Capture, attention_update_again, run
from utils.core.heads import head_contributions, reweight, update_from_weights, value_output
from utils.core.interventions import PatchHidden
from utils.core.readout import likely_top, ranked_first
from utils.paper.extraction import block_conditions, clean_run, scaled_layers

N = 10


def _fact(ids, subject=(2, 3, 4), has_sink=False):
    return {"known_id": 0, "input_ids": ids[0].tolist(), "n_tokens": ids.shape[1],
            "subject_positions": list(subject), "has_sink": has_sink}


def _clean(lm, ids, subject=(2, 3, 4)):
    fact = _fact(ids, subject)
    fact["pred_token_id"] = int(run(lm, ids).logits[0, -1].argmax())
    return clean_run(lm, fact)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_shares_sum_to_the_attention_update(arch):
    lm, ids = tiny_model(arch), prompt(N)
    acts = run(lm, ids, capture=Capture(positions=[N - 1], attn=True, heads=True)).acts
    for layer in range(lm.n_layers):
        z, update = acts["heads"][0, layer, 0].flatten(), acts["attn"][0, layer, 0]
        shares, rest = head_contributions(lm, layer, z)
        assert shares.shape == (lm.n_heads, lm.config.hidden_size)
        torch.testing.assert_close(shares.sum(0) + rest, update.float(), atol=1e-5, rtol=1e-4)
        # the rest is the output bias (or nothing), never a head's output
        assert rest.abs().max() < 0.5 * update.abs().max()
        assert all(shares[h].abs().max() > 1e-6 for h in range(lm.n_heads))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_renormalising_with_nothing_blocked_gives_the_update(arch):
    lm, ids = tiny_model(arch), prompt(N)
    r = _clean(lm, ids)
    nothing = torch.zeros(N, dtype=torch.bool)
    for layer in range(lm.n_layers):
        for variant in ("renormalised", "official"):
            rebuilt = update_from_weights(lm, layer, reweight(r.weights[layer], nothing, variant), r.values[layer])
            torch.testing.assert_close(rebuilt, r.attn[layer].float(), atol=1e-5, rtol=1e-4)
    # once anything is blocked, the official re-softmax flattens the surviving weights
    w, one = r.weights[1], torch.zeros(N, dtype=torch.bool)
    one[N - 1] = True
    official, renormalised = reweight(w, one, "official"), reweight(w, one, "renormalised")
    assert (official - renormalised).abs().max() > 1e-2
    assert official[:, :-1].std(-1).max() < renormalised[:, :-1].std(-1).max()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "gptj"])
def test_renormalised_blocking_equals_a_knockout_at_that_layer(arch):
    """Removing edges after the softmax and renormalising is what a pre-softmax knockout
    does: compare with the model run under BlockAttention at one layer."""
    from utils.core.interventions import BlockAttention

    lm, ids = tiny_model(arch), prompt(N)
    r = _clean(lm, ids)
    layer, keys = 2, [N - 4, N - 3]  # inside the sliding windows of the tiny models
    blocked = torch.zeros(N, dtype=torch.bool)
    blocked[keys] = True
    ours = update_from_weights(lm, layer, reweight(r.weights[layer], blocked, "renormalised"), r.values[layer])
    knocked = run(lm, ids, [[BlockAttention([layer], [N - 1], keys)]], capture=Capture(positions=[N - 1], attn=True))
    torch.testing.assert_close(ours, knocked.acts["attn"][0, layer, 0].float(), atol=1e-5, rtol=1e-4)
    assert (ours - r.attn[layer]).abs().max() > 1e-4


def test_reweight_variants():
    w = torch.tensor([[0.5, 0.3, 0.2]])
    blocked = torch.tensor([False, True, False])
    torch.testing.assert_close(reweight(w, blocked, "renormalised"), torch.tensor([[0.5 / 0.7, 0, 0.2 / 0.7]]))
    official = reweight(w, blocked, "official")
    expected = torch.tensor([0.5, 0.2]).exp() / torch.tensor([0.5, 0.2]).exp().sum()
    torch.testing.assert_close(official[0, [0, 2]], expected)
    assert official[0, 1] == 0
    everything = torch.ones(3, dtype=torch.bool)
    for variant in ("official", "renormalised"):
        assert reweight(w, everything, variant).abs().max() == 0


def test_block_conditions_follow_the_official_sets():
    groups = {"subject": [1, 2], "non-subject": [3, 4], "last": [5]}
    c = block_conditions(groups, 6)
    assert c["subject-last + last"] == [2, 5] and c["non-subject"] == [3, 4, 5]
    assert c["all but subject-last"] == [0, 1, 3, 4, 5] and c["all but first"] == [1, 2, 3, 4, 5]
    assert c["all"] == list(range(6)) and c["none"] == []


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patching_with_the_models_own_states_changes_nothing(arch):
    lm, ids = tiny_model(arch), prompt(N)
    r = _clean(lm, ids)
    for layer in range(lm.n_layers):
        again = attention_update_again(lm, r.calls[layer], layer, r.resid[layer][None].expand(3, -1, -1))
        torch.testing.assert_close(again, r.attn[layer].float().expand(3, -1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "gptj"])
def test_running_one_layer_again_equals_a_patched_forward_pass(arch):
    lm, ids = tiny_model(arch), prompt(N)
    r = _clean(lm, ids)
    layer, positions = 2, [N - 4, N - 3]  # inside the sliding windows of the tiny models
    patched = r.resid[layer].clone()
    patched[positions] = r.resid[0, positions]
    ours = attention_update_again(lm, r.calls[layer], layer, patched[None])
    full = run(lm, ids, [[PatchHidden(layer, positions, r.resid[0, positions])]],
               capture=Capture(positions=[N - 1], attn=True)).acts["attn"][0, layer, 0]
    torch.testing.assert_close(ours[0], full.float(), atol=1e-5, rtol=1e-4)
    assert (ours[0] - r.attn[layer]).abs().max() > 1e-4


def _direct_value_output(lm, arch, layer, x):
    """W_O^h W_V^h norm(x), from the weight matrices."""
    block = lm.layers[layer]
    if arch == "gpt2":
        d = lm.config.hidden_size
        v = block.ln_1(x) @ block.attn.c_attn.weight[:, 2 * d:] + block.attn.c_attn.bias[2 * d:]
        w_o = block.attn.c_proj.weight.T  # Conv1D stores (in, out)
    elif arch == "gptj":
        v, w_o = block.attn.v_proj(block.ln_1(x)), block.attn.out_proj.weight
    else:
        v = block.self_attn.v_proj(block.input_layernorm(x))
        w_o = block.self_attn.o_proj.weight
    hd, rep = lm.head_dim, lm.n_heads // (v.shape[-1] // lm.head_dim)
    out = torch.stack([v[:, (h // rep) * hd:(h // rep + 1) * hd] @ w_o[:, h * hd:(h + 1) * hd].T
                       for h in range(lm.n_heads)], dim=1)
    if arch == "gemma3_text":
        out = block.post_attention_layernorm(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "gptj"])
def test_value_output_circuit_matches_the_weights(arch):
    lm = tiny_model(arch)
    x = torch.randn(7, lm.config.hidden_size, generator=torch.Generator().manual_seed(3))
    for layer in (0, 2):
        torch.testing.assert_close(value_output(lm, layer, x, chunk=3), _direct_value_output(lm, arch, layer, x),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("screen", [True, False])
def test_ranked_first_equals_a_full_projection(screen):
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    weight = lm.unembedding.weight
    v = torch.randn(300, weight.shape[1], generator=g)
    v[:100] += 3 * weight[5]  # some vectors that do rank token 5 first, some near ties
    v[100:110] = 0
    targets = torch.full((300,), 5)
    targets[200:] = (v[200:] @ weight.T).argmax(-1)  # exactly their top tokens
    scores = v @ weight.T
    expected = (scores.scatter(-1, targets[:, None], float("-inf")) < scores.gather(-1, targets[:, None])).all(-1)
    assert expected[:100].any() and not expected[100:110].any() and expected[200:].all()
    torch.testing.assert_close(ranked_first(lm, v, targets, screen=screen, chunk=64), expected)
    # a shortlist only settles vectors early: the answers stay the same, whatever it holds
    for shortlist in ([5], [0, 1, 2, 5, 7], likely_top(lm, v[:20], k=8), torch.arange(weight.shape[0])):
        torch.testing.assert_close(ranked_first(lm, v, targets, shortlist=shortlist, screen=screen), expected)


def test_scaled_layers():
    assert scaled_layers(48) == [0, 1, 5, 10, 20]
    assert scaled_layers(18) == [0, 1, 2, 4, 8]
    assert scaled_layers(30) == [0, 1, 3, 6, 12]


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2", "gptj"])
def test_ranked_first_under_the_logit_lens(arch):
    """The final norm and the output bias (GPT-J's head has one) are part of the readout."""
    from utils.core.projection import project

    lm = tiny_model(arch)
    if arch == "gptj":
        torch.nn.init.normal_(lm.unembedding.bias, std=1.0)
    v = torch.randn(200, lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    scores = project(lm, v, "logit_lens")
    targets = torch.where(torch.arange(200) % 2 == 0, scores.argmax(-1), torch.tensor(7))
    expected = (scores.scatter(-1, targets[:, None], float("-inf")) < scores.gather(-1, targets[:, None])).all(-1)
    for screen in (True, False):
        torch.testing.assert_close(ranked_first(lm, v, targets, "logit_lens", screen=screen), expected)
        shortlist = likely_top(lm, v[:50], "logit_lens", k=4)
        torch.testing.assert_close(ranked_first(lm, v, targets, "logit_lens", shortlist, screen), expected)


def test_head_mapping_rows_rank_the_mapped_tokens():
    from utils.core.heads import token_embeddings
    from utils.core.projection import project, token_ranks
    from utils.paper.extraction import head_mapping_rows

    lm = tiny_model("llama")
    facts = [{"known_id": i, "input_ids": [5 + i, 6 + i, 7 + i, 8], "n_tokens": 4, "subject_positions": [0, 1],
              "subject": f"s{i}", "pred_token_id": 20 + i, "has_sink": False} for i in range(3)]
    lm.tokenizer = type("T", (), {"batch_decode": staticmethod(lambda ids: [str(i[0]) for i in ids])})()
    rows = head_mapping_rows(lm, 1, [0, 3], facts, pool=[20, 21, 22, 30, 31], k=4)
    assert len(rows) == 6 and {r["head"] for r in rows} == {0, 3}
    r = rows[4]  # head 3, fact 1
    scores = project(lm, value_output(lm, 1, token_embeddings(lm, [6, 7]))[:, 3])
    ranks = token_ranks(scores, 21)
    assert r["rank_best"] == int(ranks.min()) and r["rank_last"] == int(ranks[1])
    others = torch.stack([token_ranks(scores, t).min() for t in (20, 22, 30, 31)]).float()
    assert r["control_median_rank"] == float(others.median())
    assert r["control_top10"] == float((others < 10).float().mean())
    assert len(r["top_tokens"]) == 4


@pytest.mark.parametrize("arch, seed", [("llama", 5), ("gemma3_text", 3)])  # prompts where patching makes events
def test_patching_rows_equal_patched_forward_passes(arch, seed):
    from utils.paper.extraction import patching_rows
    from utils.paper.facts import position_sets

    lm, ids = tiny_model(arch), prompt(N, seed=seed)
    fact = {**_fact(ids, subject=(5, 6, 7)), "pred_token_id": int(run(lm, ids).logits[0, -1].argmax())}
    rows = patching_rows(lm, fact, [0, 1], screen=False)
    groups = position_sets(fact)
    assert [(r["positions"], r["source_layer"]) for r in rows] == [(g, s) for g in ("subject", "non-subject", "last") for s in (0, 1)]
    assert sum(r["n_layers"] for r in rows) > 0
    resid = run(lm, ids, capture=Capture(resid=True)).acts["resid"][0]
    for row in rows:
        positions = groups[row["positions"]]
        updates = torch.stack([
            run(lm, ids, [[PatchHidden(layer, positions, resid[row["source_layer"], positions])]],
                capture=Capture(positions=[N - 1], attn=True)).acts["attn"][0, layer, 0]
            for layer in range(lm.n_layers)])
        events = ranked_first(lm, updates, fact["pred_token_id"], screen=False)
        assert row["n_layers"] == int(events.sum()) and row["extracted"] == int(events.any())


@pytest.mark.parametrize("arch, seed", [("gemma3_text", 3), ("gptj", 9)])  # prompts with attention events
def test_extraction_rows_are_consistent(arch, seed):
    import pandas as pd

    from utils.paper.extraction import extraction_rows

    lm, ids = tiny_model(arch), prompt(N, seed=seed)
    fact = {**_fact(ids, subject=(5, 6, 7)), "pred_token_id": int(run(lm, ids).logits[0, -1].argmax())}
    rows = pd.DataFrame(extraction_rows(lm, fact, "paper", screen=False))
    r = clean_run(lm, fact)
    events = ranked_first(lm, r.attn, r.target, screen=False)
    attn = rows[(rows.measure == "attn") & (rows.projection == "paper")].sort_values("layer")
    assert attn.value.tolist() == events.int().tolist() and events.any()
    extracting = attn[attn.value == 1].layer.tolist()
    blocked = rows[rows.measure == "blocked"]
    assert sorted(blocked.layer.unique()) == extracting
    assert (blocked[blocked.condition == "none"].value == 1).all()  # nothing blocked: still extracts, both variants
    assert (blocked[blocked.condition == "all"].value == 0).all()  # zero weights: the update is 0 (no bias)
    assert len(rows[rows.measure == "head"]) == lm.n_heads * len(extracting)
    assert len(rows[rows.measure == "subject_rank"]) == len(extracting)
    # the official aggregation: blocking at one layer at a time, does any layer still extract?
    any_layer = rows[rows.measure == "blocked_any"].set_index(["condition", "variant"]).value
    assert len(any_layer) == 2 * 12 and (rows[rows.measure == "blocked_any"].layer == -1).all()
    assert (any_layer.loc["none"] == 1).all() and (any_layer.loc["all"] == 0).all()
    for (condition, variant), still in any_layer.items():
        at_events = blocked[(blocked.condition == condition) & (blocked.variant == variant)].value
        assert still >= at_events.max()  # an event that survives at its own layer is an event at some layer
