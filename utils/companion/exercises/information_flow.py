"""Checkers of the exercises of §3 (notebook 01): knockout windows, position sets, knockout
probabilities, the flow curve."""

from __future__ import annotations

import math

import torch

from ...core.forward import Capture, run
from ...core.interventions import BlockAttention, window
from ...paper.facts import position_sets
from ...paper.information_flow import FlowSettings, default_window, flow_of_fact, knockout_probs
from .common import (ExerciseFailed, _as_tensor, _cached, _call, _close, _fail, _passed, _show, _tokens, model,
    small_facts, small_known_facts)


def check_window(fn, lm=None) -> None:
    """01.1 ``fn(center, size, n_layers) -> list[int]``: the official window of layers."""
    ex, n = "01.1 window", 0
    cases = [(48, 10, 20), (48, 9, 20)] + [(n_layers, size, center) for n_layers in (18, 28, 30, 48)
                                          for size in range(1, 13) for center in range(n_layers)]
    for n_layers, size, center in cases:
        if True:
            if True:
                expected = list(window(center, size, n_layers))
                got = _call(ex, fn, center, size, n_layers)
                got = [int(x) for x in got] if got is not None else got
                n += 1
                if got == expected:
                    continue
                symmetric = list(range(max(0, center - size // 2), min(n_layers, center + size // 2 + 1)))
                if got == symmetric:
                    hint = (f"a symmetric window holds {size + 1} layers when the size is even. The official code "
                            f"takes size // 2 layers below the centre and the rest above: 10 around 20 is 15..24.")
                elif got and (min(got) < 0 or max(got) >= n_layers):
                    hint = f"clip the window to the model: layers 0..{n_layers - 1}."
                else:
                    hint = "the window starts at center - size // 2 and holds size layers, clipped to the model."
                _fail(ex, f"window(center={center}, size={size}, n_layers={n_layers})", expected, got, hint)
    _passed(ex, f"{n} windows (sizes 1-12, depths 18, 28, 30 and 48 layers)")


def check_position_sets(fn, lm=None) -> None:
    """01.2 ``fn(fact) -> {"subject": [...], "non-subject": [...], "last": [...]}``."""
    ex, lm = "01.2 position_sets", model(lm)
    n = 0
    for sink in (True, None):
        for fact in small_facts(lm, sink):
            expected = {k: v for k, v in position_sets(fact).items()
                        if k in ("subject", "non-subject", "last")}
            got = _call(ex, fn, dict(fact))
            if not isinstance(got, dict):
                raise ExerciseFailed(f"{ex}: return a dict with keys 'subject', 'non-subject', 'last'; got {_show(got)}")
            got = {k: sorted(int(p) for p in got.get(k, [])) for k in expected}
            n += 1
            for name in expected:
                if got[name] == expected[name]:
                    continue
                hint = f"tokens: {list(enumerate(_tokens(lm, fact['input_ids'])))}. "
                if fact["has_sink"] and 0 in got[name]:
                    hint += ("position 0 is the sink token (an attention sink, not a word of the prompt): keep it "
                             "out of every set.")
                elif name == "non-subject" and fact["n_tokens"] - 1 in got[name]:
                    hint += "the last position has a set of its own ('last'); 'non-subject' stops before it."
                _fail(ex, f"set {name!r} of {fact['prompt']!r} (subject {fact['subject']!r})"
                      f"{' with the sink token' if sink else ''}", expected[name], got[name], hint)
    _passed(ex, f"{n} prompts, with and without the sink token")


def _attention_case(lm, fact, layer):
    """Real pre-softmax scores (up to a constant per row) of one layer, and the library's
    attention probabilities with the last position blocked from the subject there."""
    ids, last = fact["input_ids"], fact["n_tokens"] - 1
    keys = [p for p in fact["subject_positions"] if not (fact["has_sink"] and p == 0)]
    clean = run(lm, ids, capture=Capture(layers=[layer], attn_weights=True)).acts["attn_weights"][0, 0]  # (H, n, n)
    scores = clean.float().log()
    scores = torch.where(torch.ones_like(scores, dtype=torch.bool).tril(), scores, torch.zeros_like(scores))
    blocked = run(lm, ids, [[BlockAttention([layer], [last], keys)]],
                  capture=Capture(layers=[layer], attn_weights=True)).acts["attn_weights"][0, 0]
    return scores, last, keys, blocked.float()


def check_knockout_probs(fn, lm=None) -> None:
    """01.3 ``fn(scores, query, keys) -> probabilities``: attention with query -> keys removed."""
    ex, lm = "01.3 knockout_probs", model(lm)
    fact = small_known_facts(lm, True)[0]
    for layer in (3, 15, 27):
        scores, last, keys, expected = _attention_case(lm, fact, layer)
        got = _as_tensor(ex, _call(ex, fn, scores.clone(), last, list(keys)), expected.shape, "probabilities")
        if _close(got, expected, 1e-4):
            continue
        case = f"layer {layer} of {fact['prompt']!r}, query {last} blocked from keys {keys}"
        future = got.triu(1).abs().max().item()
        row = got[:, last].sum(-1)
        others = torch.cat([got[:, :last], got[:, last + 1:]], 1) - torch.cat([expected[:, :last], expected[:, last + 1:]], 1)
        if future > 1e-6:
            hint = ("some query attends to a later position (weight %.3f): keep the causal mask, scores of keys "
                    "after the query are -inf too." % future)
        elif (row - 1).abs().max() > 1e-4:
            hint = (f"the query's weights sum to {row.min():.3f}..{row.max():.3f}, not 1: setting probabilities to "
                    "zero after the softmax is not a knockout. Write -inf into the blocked *scores*, then softmax, "
                    "so the remaining weights renormalise.")
        elif others.abs().max() > 1e-4:
            hint = "only the query's row changes: every other query attends as in the clean run."
        elif got[:, last, last].abs().max() < 1e-6 < expected[:, last, last].abs().max():
            hint = "you removed the edge from the query to itself; only the edges to `keys` are removed."
        else:
            hint = "compare got[:, query] with expected[:, query] key by key."
        _fail(ex, case, [round(x, 4) for x in expected[0, last].tolist()], [round(x, 4) for x in got[0, last].tolist()],
              "(the first head's weights of the query shown) " + hint)
    _passed(ex, f"layers 3, 15, 27 of {fact['prompt']!r}: the same weights as the library's knockout")


def _flow_rows(lm, index: int) -> list[dict]:
    fact = small_known_facts(lm, True)[index]
    return _cached(("flow", id(lm), index),
                   lambda: flow_of_fact(lm, fact, FlowSettings(default_window(lm.n_layers), sets=("subject", "non-subject"))))


def check_relative_change(fn, lm=None) -> None:
    """01.4 ``fn(p_base, p_new) -> float``: the relative change of a probability, in percent."""
    ex, lm = "01.4 relative_change", model(lm)
    rows = _flow_rows(lm, 0)
    for row in rows:
        got = _call(ex, fn, row["p_base"], row["p_new"])
        expected = row["relative_change"]
        if got is None or not math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-6):
            ratio = float(got) / expected if got is not None and expected else float("nan")
            hint = "100 * (p_new - p_base) / p_base: a drop is negative."
            if math.isclose(ratio, 0.01, rel_tol=1e-4):
                hint = "the paper reports percent: multiply by 100."
            elif math.isclose(ratio, -1, rel_tol=1e-4):
                hint = "the sign is flipped: a drop in probability is a negative change."
            _fail(ex, f"p_base={row['p_base']:.6f}, p_new={row['p_new']:.6f}", expected, got, hint)
    _passed(ex, f"{len(rows)} knockouts of a real fact")


def _own_argmax_curves(lm, fact, k, keys) -> list[list[float]]:
    """The curves of a student who measures each knockout's own top-1 token instead of the clean
    run's prediction (two ways of writing it: the base probability of that token, or of the clean
    prediction), from the library's knockout probabilities."""
    last, n = fact["n_tokens"] - 1, lm.n_layers
    rows = [[]] + [[BlockAttention(window(c, k, n), [last], keys)] for c in range(n)]
    probs = knockout_probs(lm, fact["input_ids"], rows)
    clean, own = probs[0], probs[1:].argmax(-1)
    p_own = probs[1:].gather(-1, own[:, None])[:, 0]
    target = int(clean.argmax())
    return [(100 * (p_own - clean[own]) / clean[own]).tolist(), (100 * (p_own - clean[target]) / clean[target]).tolist()]


def _flow_cases(lm) -> list[tuple[dict, str]]:
    """(fact, source set) pairs to check, the first known fact's subject and non-subject curves
    and, so that an answer tracking each knockout's own top-1 token cannot pass, the first
    curves (any set, the last position's own included) where a knockout changes the top-1."""
    def compute():
        k, cases, changing = default_window(lm.n_layers), [], []
        facts = small_known_facts(lm, True)
        cases = [(facts[0], name) for name in ("subject", "non-subject")]
        for fact in facts[:6]:
            for name in ("subject", "non-subject", "last"):
                keys = position_sets(fact)[name]
                expected = [r["relative_change"] for r in flow_of_fact(lm, fact, FlowSettings(k, sets=(name,)))]
                if any(not _close(torch.tensor(c), torch.tensor(expected), 1e-3)
                       for c in _own_argmax_curves(lm, fact, k, keys)):
                    changing.append((fact, name))
            if len(changing) >= 2:
                break
        return cases + changing[:2]
    return _cached(("flow cases", id(lm)), compute)


def check_flow_curve(fn, lm=None) -> None:
    """01.5 ``fn(lm, fact, k, keys) -> list[float]``: the relative change per window centre."""
    ex, lm = "01.5 flow_curve", model(lm)
    k = default_window(lm.n_layers)
    cases = _flow_cases(lm)
    for fact, name in cases:
        keys = position_sets(fact)[name]
        expected = torch.tensor([r["relative_change"]
                                 for r in flow_of_fact(lm, fact, FlowSettings(k, sets=(name,)))])
        got = _call(ex, fn, lm, dict(fact), k, list(keys))
        got = _as_tensor(ex, got, (lm.n_layers,), f"one value per window centre ({lm.n_layers})")
        if _close(got, expected, 1e-3):
            continue
        worst = int((got - expected).abs().argmax())
        hint = (f"the largest difference is at centre {worst} (expected {expected[worst]:.2f}, got "
                f"{got[worst]:.2f}). Block the last position from `keys` at every layer of "
                f"window(centre, {k}, n_layers), and measure the probability of the clean run's top-1 token.")
        if any(_close(got, torch.tensor(c), 1e-3) for c in _own_argmax_curves(lm, fact, k, keys)):
            hint = ("you measure each knockout's own top-1 token; the paper follows ONE token, the clean run's "
                    "prediction, through every knockout (a knockout that changes the top-1 is a large drop of the "
                    "clean prediction, not a small change of another token).")
        elif _close(got, expected / 100, 1e-5):
            hint = "the paper reports percent: multiply the relative change by 100."
        elif _close(got, -expected, 1e-3):
            hint = "the sign is flipped: a drop of the probability is a negative change (p_new - p_base)."
        _fail(ex, f"{name} of {fact['prompt']!r}, k={k}", [round(x, 1) for x in expected.tolist()],
              [round(x, 1) for x in got.tolist()], hint)
    _passed(ex, f"{len(cases)} curves (subject and non-subject of {cases[0][0]['prompt']!r}, and curves where a "
                f"knockout changes the top-1 token; k = {k}) match the library's flow_of_fact")
