"""Checkers of the intervention exercises (notebook 04 of the exercises): blocked extraction
(the paper's E6), patching the subject from an early layer (E7) and the sublayer knockouts of
§4, each checked against the function of the library that notebooks 02 and 03 run."""

from __future__ import annotations

import torch

from ...core.forward import Capture, attention_update_again, hidden_after, run
from ...core.heads import reweight, update_from_weights
from ...core.interventions import BlockAttention, ZeroSublayer
from ...paper.enrichment import Settings
from ...paper.extraction import clean_run
from ...paper.facts import position_sets
from .attribute_extraction import _event_layer
from .common import ExerciseFailed, _as_tensor, _cached, _call, _close, _fail, _passed, model, small_known_facts


def _clean(lm, fact, attention=True):
    return _cached(("clean", id(lm), fact["known_id"], attention), lambda: clean_run(lm, fact, attention))


def _last_update(lm, fact, rows, layer) -> torch.Tensor:
    last = int(fact["n_tokens"]) - 1
    out = run(lm, fact["input_ids"], rows, capture=Capture(positions=[last], layers=[layer], attn=True))
    return out.acts["attn"][0, 0, 0]


# --------------------------------------------------------------------------------------
# 04.1 blocked extraction


def blocked_reference(lm, fact, layer: int, blocked, variant: str = "renormalised") -> torch.Tensor:
    """The library's blocked update (notebook 03's measure): the captured weights reweighted."""
    r = _clean(lm, fact)
    mask = torch.zeros(int(fact["n_tokens"]), dtype=torch.bool)
    mask[list(blocked)] = True
    weights = reweight(r.weights[layer], mask.to(r.weights.device), variant)
    return update_from_weights(lm, layer, weights, r.values[layer])


def check_blocked_update(fn, lm=None) -> None:
    """04.1 ``fn(lm, fact, layer, blocked) -> (d,)``: the last position's attention update at
    ``layer`` with its edges to ``blocked`` removed at that layer only (renormalised)."""
    ex, lm = "04.1 blocked_update", model(lm)
    for fact in small_known_facts(lm)[:2]:
        layer, sets = _event_layer(lm, fact), position_sets(fact)
        for name in ("subject", "non-subject"):
            blocked = sets[name]
            want = blocked_reference(lm, fact, layer, blocked)
            got = _as_tensor(ex, _call(ex, fn, lm, fact, layer, list(blocked)), want.shape, "the update (d,)")
            if _close(got, want):
                continue
            r = _clean(lm, fact)
            last = int(fact["n_tokens"]) - 1
            zeroed = r.weights[layer].float().clone()
            zeroed[:, blocked] = 0
            hint = ("take the last position's attention weights at this layer, set the blocked keys to 0, rescale "
                    "each head's row to sum to one, and recombine them with the values.")
            if _close(got, update_from_weights(lm, layer, zeroed, r.values[layer])):
                hint = ("the weights you kept no longer sum to one: rescale each head's surviving weights so they do "
                        "(the renormalised variant, which is what removing the edges before the softmax gives).")
            elif _close(got, blocked_reference(lm, fact, layer, blocked, "official")):
                hint = ("that is the official code's variant (-1e6 written into the probabilities, then softmax "
                        "again, which makes the rest nearly uniform); this exercise asks for the renormalised one.")
            elif _close(got, _last_update(lm, fact, [[BlockAttention(range(lm.n_layers), [last], blocked)]], layer)):
                hint = ("you blocked the edges at every layer, so the earlier layers' blocks change the residual "
                        "stream this layer reads; block at `layer` only (one layer at a time, as in §5).")
            elif _close(got, r.attn[layer]):
                hint = "that is the clean update: nothing was blocked (the blocked keys' weights must become 0)."
            _fail(ex, f"layer {layer} of {fact['prompt']!r}, {name} positions {list(blocked)} blocked", want, got, hint)
    _passed(ex, "2 facts at their extracting layer, the subject and the non-subject positions blocked")


# --------------------------------------------------------------------------------------
# 04.2 patching


def patched_reference(lm, fact, layer: int, positions, source: int) -> torch.Tensor:
    """The library's patched update (notebook 03's patching): the layer run again on a patched input."""
    r = _clean(lm, fact, attention=False)
    hidden = r.resid[layer].clone()[None]
    hidden[0, list(positions)] = r.resid[source, list(positions)]
    return attention_update_again(lm, r.calls[layer], layer, hidden)[0]


def check_patched_update(fn, lm=None) -> None:
    """04.2 ``fn(lm, fact, layer, positions, source) -> (d,)``: the last position's attention
    update at ``layer`` when the residual entering ``layer`` at ``positions`` is the same
    prompt's ``hidden_states[source]`` there."""
    ex, lm = "04.2 patched_update", model(lm)
    for fact in small_known_facts(lm)[:2]:
        layer, sets = _event_layer(lm, fact), position_sets(fact)
        for name, source in (("subject", 0), ("subject", 1), ("non-subject", 1)):
            positions = sets[name]
            want = patched_reference(lm, fact, layer, positions, source)
            got = _as_tensor(ex, _call(ex, fn, lm, fact, layer, list(positions), source), want.shape, "the update (d,)")
            if _close(got, want):
                continue
            r = _clean(lm, fact, attention=False)
            hint = ("replace the input of layer `layer` (hidden_states[layer]) at `positions` by hidden_states[source] "
                    "at the same positions, and read the attention update of layer `layer` at the last position.")
            if source + 1 < layer and _close(got, patched_reference(lm, fact, layer, positions, source + 1)):
                hint = ("your source is one layer late: hidden_states[s] is the *input* of layer s (s = 0 is the "
                        "embeddings), i.e. the output of layer s - 1.")
            elif _close(got, r.attn[layer]):
                hint = ("that is the clean update: the patch did not reach this layer's attention. Patch the residual "
                        "*entering* layer `layer`, not a later one.")
            elif _close(got, patched_reference(lm, fact, layer, list(positions) + [int(fact["n_tokens"]) - 1],
                                               source)):
                hint = "you patched the last position too: patch only `positions`; the last position stays clean."
            _fail(ex, f"layer {layer} of {fact['prompt']!r}, {name} positions from hidden_states[{source}]", want, got,
                  hint)
    _passed(ex, "2 facts at their extracting layer, the subject patched from the embeddings and from layer 1, "
                "the non-subject positions from layer 1")


# --------------------------------------------------------------------------------------
# 04.3 sublayer knockouts


def _stock_logits(lm):
    ids = torch.tensor([[lm.tokenizer.bos_token_id or 0, 42, 43]])
    with torch.no_grad():
        return lm.model(ids.to(lm.device)).logits[0, -1].float().cpu()


def check_knocked_out_state(fn, lm=None) -> None:
    """04.3 ``fn(lm, input_ids, sublayer, layers, repr_layer, position) -> (d,)``: the hidden
    state at ``position`` at the *output* of ``repr_layer`` with the ``sublayer`` ("mlp" or
    "attn") update removed at every position of ``layers``."""
    ex, lm = "04.3 knocked_out_state", model(lm)
    repr_layer, size, windows = Settings().knockout_layers(lm.n_layers)
    before = _stock_logits(lm)
    for fact in small_known_facts(lm)[:2]:
        ids, position = list(fact["input_ids"]), int(fact["subject_positions"][-1])
        for sublayer in ("mlp", "attn"):
            layers = list(windows[0])
            want = hidden_after(lm, ids, [[ZeroSublayer(sublayer, layers)]], repr_layer, position)[0]
            got = _as_tensor(ex, _call(ex, fn, lm, ids, sublayer, layers, repr_layer, position), want.shape,
                             "a hidden state (d,)")
            if not _close(_stock_logits(lm), before):
                raise ExerciseFailed(f"{ex}: after your function the model's own forward pass has changed: a hook is "
                                     "still installed. Remove every hook you register (handle.remove(), in a finally: "
                                     "block) before returning.")
            if _close(got, want):
                continue
            other = "attn" if sublayer == "mlp" else "mlp"
            hint = ("register a forward hook on each knocked-out sublayer (lm.sub(layer, lm.arch.mlp_update) or "
                    "lm.arch.attn_update) that returns a zero update, run the model, and read hidden_states[repr_layer "
                    "+ 1] (the output of repr_layer) at `position`.")
            subject = [int(p) for p in fact["subject_positions"]]
            if _close(got, hidden_after(lm, ids, [[ZeroSublayer(sublayer, layers)]], repr_layer - 1, position)[0]):
                hint = ("that is the *input* of repr_layer (hidden_states[repr_layer]); the measure reads its output, "
                        "hidden_states[repr_layer + 1].")
            elif _close(got, hidden_after(lm, ids, [[ZeroSublayer(sublayer, layers, subject)]], repr_layer,
                                          position)[0]):
                hint = ("you removed the update at the subject positions only; the paper's knockout removes the "
                        "sublayer at every position of the prompt (as the official code does).")
            elif _close(got, hidden_after(lm, ids, [[ZeroSublayer(other, layers)]], repr_layer, position)[0]):
                hint = f"you knocked out the {other} sublayer instead of the {sublayer} one."
            elif _close(got, hidden_after(lm, ids, [[]], repr_layer, position)[0]):
                hint = ("that is the clean state: nothing was knocked out (an attention module returns a tuple: "
                        "replace its first item).")
            _fail(ex, f"{sublayer} layers {layers} of {fact['prompt']!r}, layer {repr_layer}'s output at position "
                      f"{position}", want, got, hint)
    _passed(ex, f"2 facts, the first window ({size} layers) of MLP and of attention knocked out, read at layer "
                f"{repr_layer}; the model is left as it was")


__all__ = ["check_blocked_update", "check_patched_update", "check_knocked_out_state"]
