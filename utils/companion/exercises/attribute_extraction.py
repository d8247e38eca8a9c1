"""Checkers of the exercises of §5 (notebook 03): sublayer updates, extraction events, head
shares, head mappings."""

from __future__ import annotations

import torch

from ...core.forward import Capture, run
from ...core.heads import head_contributions, token_embeddings, value_output
from ...core.interventions import PatchHidden
from ...core.projection import project
from ...core.readout import ranked_first
from ...paper.extraction import clean_run
from .common import (ExerciseFailed, _as_tensor, _cached, _call, _close, _fail, _passed, _show, _tokens, model,
    small_known_facts)


def _updates(lm, fact):
    acts = run(lm, fact["input_ids"], capture=Capture(positions=[fact["n_tokens"] - 1], attn=True, mlp=True,
                                                      resid=True)).acts
    return acts["attn"][0, :, 0], acts["mlp"][0, :, 0], acts["resid"][0, :, 0]


def check_sublayer_updates(fn, lm=None) -> None:
    """03.1 ``fn(lm, input_ids) -> (attn, mlp)``: each layer's updates at the last position."""
    ex, lm = "03.1 sublayer_updates", model(lm)
    for fact in small_known_facts(lm)[:2]:
        attn, mlp, resid = _updates(lm, fact)
        got = _call(ex, fn, lm, list(fact["input_ids"]))
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseFailed(f"{ex}: return a pair (attention updates, MLP updates), got {_show(got)}")
        got_attn = _as_tensor(ex, got[0], attn.shape, "the attention updates (n_layers, d)")
        got_mlp = _as_tensor(ex, got[1], mlp.shape, "the MLP updates (n_layers, d)")
        for name, g, e in (("attention", got_attn, attn), ("MLP", got_mlp, mlp)):
            if _close(g, e):
                continue
            layer = next(i for i in range(len(e)) if not _close(g[i], e[i]))
            hint = ("hook the module whose output is added to the residual stream: lm.sub(layer, lm.arch.attn_update) "
                    "and lm.sub(layer, lm.arch.mlp_update), and keep the last position.")
            if _close(g[:-1], (attn + mlp)[:-1]):
                hint = ("that is hidden_states[l + 1] - hidden_states[l], which holds *both* sublayers' updates. "
                        "Read each sublayer's output with a forward hook instead.")
            elif _close(g, mlp if name == "attention" else attn):
                hint = "attention and MLP are swapped."
            _fail(ex, f"the {name} update of layer {layer} of {fact['prompt']!r}", e[layer], g[layer], hint)
    _passed(ex, "2 facts, every layer, both sublayers")


def _event_cases(lm) -> list[tuple]:
    """Updates of the known facts to test 03.2 on: every extraction event (logit lens), every
    update that the projection without the final norm judges differently, every near miss (the
    target second to tenth under the logit lens: they tell "ranked first" from "in the top few"),
    and a spread of non-events: (fact, sublayer, layer, update, event)."""
    def compute():
        cases, others = [], []
        for fact in small_known_facts(lm):
            attn, mlp, _ = _updates(lm, fact)
            vectors, target = torch.cat([attn, mlp]), int(fact["pred_token_id"])
            lens = ranked_first(lm, vectors, target, "logit_lens").tolist()
            paper = ranked_first(lm, vectors, target, "paper").tolist()
            scores = project(lm, vectors, "logit_lens")
            near = ((scores > scores[:, target : target + 1]).sum(-1) < 10).tolist()
            for i, (vector, event, plain, close) in enumerate(zip(vectors, lens, paper, near)):
                case = (fact, "attention" if i < lm.n_layers else "MLP", i % lm.n_layers, vector, event)
                (cases if event or plain or close else others).append(case)
        return cases + others[:: max(1, len(others) // 40)]

    return _cached(("events", id(lm)), compute)


def _event_diagnosis(lm, cases, answers) -> str:
    """Which wrong rule the answers follow on every case, said in words ("" when none)."""
    lens, plain = [], []
    for (fact, _, _, vector, _), got in zip(cases, answers):
        target = int(fact["pred_token_id"])
        for mode, ranks in (("logit_lens", lens), ("paper", plain)):
            scores = project(lm, vector, mode)
            ranks.append(int((scores > scores[target]).sum()))
    if all(a == (r == 0) for a, r in zip(answers, plain)):
        return ("Your answers are those of the projection without the final norm: project with the logit lens "
                "(the final norm, then the unembedding).")
    for top in range(2, 11):
        if all(a == (r < top) for a, r in zip(answers, lens)):
            return (f"Your answers are 'the target is in the top {top}': an extraction event needs the target "
                    "ranked FIRST (rank 0, above every other token), not among the top few.")
        if all(a == (r < top) for a, r in zip(answers, plain)):
            return (f"Your answers are 'in the top {top}, without the final norm': an event needs rank 0, under the "
                    "logit lens (the final norm, then the unembedding).")
    return ""


def check_extraction_event(fn, lm=None) -> None:
    """03.2 ``fn(lm, update, target) -> bool``: does the update rank the target first (logit lens)?"""
    ex, lm = "03.2 extraction_event", model(lm)
    cases = _event_cases(lm)
    raw = [_call(ex, fn, lm, vector.clone(), int(fact["pred_token_id"])) for fact, _, _, vector, _ in cases]
    for got in raw:
        if "bool" not in type(got).__name__ and getattr(got, "dtype", None) != torch.bool:
            kind = type(got).__name__
            raise ExerciseFailed(f"{ex}: return True or False (is the target ranked first?), not a {kind} "
                                 f"({_show(got)}); if you computed the rank, the event is rank == 0")
    answers = [bool(got) for got in raw]
    for (fact, sub, layer, vector, want), got in zip(cases, answers):
        if got == want:
            continue
        target = int(fact["pred_token_id"])
        scores = project(lm, vector, "logit_lens")
        rank = int((scores > scores[target]).sum())
        hint = (f"under the logit lens the target {lm.tokenizer.decode([target])!r} has rank {rank} "
                f"(0 = first); top tokens: {_tokens(lm, scores.topk(3).indices.tolist())}. ")
        hint += _event_diagnosis(lm, cases, answers)
        _fail(ex, f"the {sub} update of layer {layer} of {fact['prompt']!r}", want, got, hint)
    events = sum(case[-1] for case in cases)
    _passed(ex, f"{len(cases)} updates of {len(small_known_facts(lm))} known facts ({events} extraction events, and the "
                "updates the projection without the final norm gets wrong)")


def _event_layer(lm, fact) -> int:
    attn, _, _ = _updates(lm, fact)
    events = ranked_first(lm, attn, int(fact["pred_token_id"]), "logit_lens").nonzero().flatten().tolist()
    return events[-1] if events else lm.n_layers - 2


def check_head_shares(fn, lm=None) -> None:
    """03.3 ``fn(lm, layer, z) -> (n_heads, d)``: each head's share of the attention update."""
    ex, lm = "03.3 head_shares", model(lm)
    for fact in small_known_facts(lm)[:2]:
        r = clean_run(lm, fact, attention=False)
        for layer in sorted({_event_layer(lm, fact), 2}):
            z = r.heads[layer]
            expected, bias = head_contributions(lm, layer, z)
            got = _as_tensor(ex, _call(ex, fn, lm, layer, z.clone()), expected.shape, "one vector per head (H, d)")
            if _close(got, expected):
                continue
            head = int((got - expected).norm(dim=-1).argmax())
            hint = ("head h's share is W_O[:, h*head_dim:(h+1)*head_dim] @ z_h: slice the *columns* of "
                    "o_proj.weight (nn.Linear stores (out, in); the heads' outputs are concatenated along its input), "
                    "not its rows.")
            scale = float((got * expected).sum() / (expected * expected).sum().clamp_min(1e-30))
            update = expected.sum(0) + bias
            if abs(scale - 1) > 1e-3 and _close(got, scale * expected):
                hint = (f"your shares point the right way but are {scale:.4g} times the expected ones: the split "
                        "between the heads is right; drop the extra scale (no division by the number of heads, no "
                        "attention scale; with a post-attention norm, multiply by N(o) / o, the norm's own gain).")
            elif _close(got, update.expand_as(got)):
                hint = ("every head got the whole update: head h's share uses only its own slice z_h = "
                        "z[h*head_dim:(h+1)*head_dim] and the matching columns of the output projection.")
            elif _close(got.sum(0), update):
                hint = ("your shares add up to the update but are split between the heads wrongly: " + hint)
            _fail(ex, f"head {head} of layer {layer}, {fact['prompt']!r}", expected[head], got[head], hint)
    _passed(ex, "2 facts, an extracting layer and an early one: shares match and add up to the update")


def check_head_mapping(fn, lm=None) -> None:
    """03.4 ``fn(lm, layer, head, token_id) -> (V,)``: a head's W_V W_O mapping of a token."""
    ex, lm = "03.4 head_mapping", model(lm)
    fact = small_known_facts(lm)[0]
    tokens = [int(fact["input_ids"][p]) for p in fact["subject_positions"]]
    layer = _event_layer(lm, fact)
    embeddings = token_embeddings(lm, tokens)
    mapped = value_output(lm, layer, embeddings)  # (T, H, d)
    group = lm.n_heads // lm.n_kv_heads
    values = run(lm, torch.zeros(1, len(tokens), dtype=torch.long), [[PatchHidden(layer, range(len(tokens)), embeddings)]],
                 capture=Capture(layers=[layer], values=True)).acts["values"][0, 0]  # (H_kv, T, head_dim)
    w_o = lm.sub(layer, lm.arch.attn_out).weight.float()
    for head in sorted({0, group, lm.n_heads - 1}):
        for t, token in enumerate(tokens):
            expected = project(lm, mapped[t, head], "logit_lens")
            got = _as_tensor(ex, _call(ex, fn, lm, layer, head, token), expected.shape, "vocabulary scores (V,)")
            if _close(got, expected, 1e-3):
                continue
            hint = ("norm the token's embedding with the layer's input norm, apply the value projection of the head's "
                    "key-value group, then the head's slice of the output projection, then the logit lens.")
            wrong_group = head % lm.n_kv_heads
            slice_ = w_o[:, head * lm.head_dim:(head + 1) * lm.head_dim]
            if wrong_group != head // group and _close(got, project(lm, slice_ @ values[wrong_group, t].float(),
                                                                   "logit_lens"), 1e-3):
                hint = (f"grouped-query attention: {lm.n_heads} query heads share {lm.n_kv_heads} "
                        f"key-value heads in blocks of {group}, so head h reads value head h // {group}, not "
                        f"h % {lm.n_kv_heads}.")
            _fail(ex, f"head {head} of layer {layer}, token {lm.tokenizer.decode([token])!r}",
                  _tokens(lm, expected.topk(5).indices.tolist()), _tokens(lm, got.topk(5).indices.tolist()),
                  "(top 5 tokens shown) " + hint)
    _passed(ex, f"3 heads of layer {layer} on the subject tokens of {fact['subject']!r}")

