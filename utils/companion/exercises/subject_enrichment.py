"""Checkers of the exercises of §4 (notebook 02): hidden states, clean tokens, the attributes
rate, knockout windows."""

from __future__ import annotations

import math

from ...core.forward import Capture, run
from ...core.projection import project, vocabulary
from ...paper.attributes import attribute_sets, keep_predicted_token, load_paragraphs, stopwords
from ...paper.enrichment import enrichment_rows, knockout_windows, mismatched, scaled_layer
from .common import _as_tensor, _cached, _call, _close, _fail, _passed, model, small_known_facts


def check_hidden_state(fn, lm=None) -> None:
    """02.1 ``fn(lm, input_ids, layer, position) -> (d,)``: the hidden state *at* layer l."""
    ex, lm = "02.1 hidden_state", model(lm)
    fact = small_known_facts(lm)[0]
    resid = run(lm, fact["input_ids"], capture=Capture(resid=True)).acts["resid"][0]  # (L+1, n, d)
    for layer in (0, 1, lm.n_layers // 2, lm.n_layers - 1):
        for position in (fact["subject_last"], fact["n_tokens"] - 1):
            expected = resid[layer, position]
            got = _as_tensor(ex, _call(ex, fn, lm, list(fact["input_ids"]), layer, position), expected.shape,
                             "one hidden vector")
            if _close(got, expected):
                continue
            hint = "use output_hidden_states=True: hidden_states[l] is the residual stream entering block l."
            if layer + 1 < len(resid) and _close(got, resid[layer + 1, position]):
                hint = (f"that is hidden_states[{layer + 1}], the *output* of block {layer}. The state at layer l is "
                        f"the input of block l, hidden_states[l] (layer 0 is the embeddings).")
            elif layer > 0 and _close(got, resid[layer - 1, position]):
                hint = f"that is hidden_states[{layer - 1}]: one layer too early."
            _fail(ex, f"layer {layer}, position {position} of {fact['prompt']!r}", expected, got, hint)
    _passed(ex, "4 layers x 2 positions")


def _top_tokens(lm, index: int, layer: int) -> list[str]:
    fact = small_known_facts(lm)[index]
    resid = run(lm, fact["input_ids"], capture=Capture(resid=True, positions=[fact["subject_last"]])).acts["resid"]
    vocab = vocabulary(lm)
    return [vocab[i] for i in project(lm, resid[0, layer, 0], "logit_lens").topk(500).indices.tolist()]


def check_clean_tokens(fn, lm=None) -> None:
    """02.2 ``fn(tokens, kept) -> list[str]``: the first ``kept`` tokens that survive the filter."""
    ex, lm = "02.2 clean_tokens", model(lm)
    n = 0
    for index in range(4):
        for layer in (lm.n_layers // 2, lm.n_layers - 1):
            tokens = _top_tokens(lm, index, layer)
            expected = [t for t in tokens if keep_predicted_token(t)][:50]
            got = _call(ex, fn, list(tokens), 50)
            n += 1
            if list(got) == expected:
                continue
            extra = [t for t in got if t not in expected]
            missing = [t for t in expected if t not in got]
            hint = "strip each token, drop it if its lower-cased form is an NLTK stopword or it has 2 characters or less."
            if extra and extra[0].strip().lower() in stopwords():
                hint = (f"{extra[0]!r} is a stopword once its leading space is stripped and it is lower-cased: "
                        "strip, then compare the lower-cased word with the list.")
            elif extra and len(extra[0].strip()) <= 2:
                hint = f"{extra[0]!r} has {len(extra[0].strip())} characters once stripped: drop tokens of 2 or less."
            elif missing and not extra:
                hint = f"you dropped {missing[0]!r}, which the official filter keeps."
            elif len(got) != len(expected):
                hint = f"keep the first {50} surviving tokens, in rank order."
            _fail(ex, f"the top 500 tokens at layer {layer} of fact {index}", expected, list(got), hint)
    _passed(ex, f"{n} real projections (top 500 tokens each)")


def check_attributes_rate(fn, lm=None) -> None:
    """02.3 ``fn(lm, hidden, attributes) -> float``: the attributes rate of a hidden state, in %."""
    ex, lm = "02.3 attributes_rate", model(lm)
    known = [f for f in small_known_facts(lm)]
    sets = _cached(("attributes", id(lm)),
                   lambda: attribute_sets(lm, load_paragraphs("wiki-vital", [f["subject"] for f in known])[0]))
    controls = mismatched(sets)
    chosen = [f for f in known if f["subject"] in sets][:3]
    vocab, n = vocabulary(lm), 0
    for fact in chosen:
        rows = enrichment_rows(lm, fact, sets[fact["subject"]], mode="logit_lens", control=controls[fact["subject"]])
        resid = run(lm, fact["input_ids"], capture=Capture(resid=True, positions=[fact["subject_last"]])).acts["resid"]
        for row in rows:
            if row["position"] != "subject last" or row["layer"] % 6 != 5:
                continue
            hidden = resid[0, row["layer"], 0]
            for which, attributes, expected in (("its own", sets[fact["subject"]], row["attributes_rate"]),
                                                ("another subject's", controls[fact["subject"]], row["control_rate"])):
                got = _call(ex, fn, lm, hidden.clone(), attributes)
                n += 1
                if got is not None and math.isclose(float(got), expected, abs_tol=1e-6):
                    continue
                top = [vocab[i] for i in project(lm, hidden, "logit_lens").topk(50).indices.tolist()]
                unfiltered = 100 * len(set(top) & attributes) / 50
                hint = ("project with the logit lens, take the top 500 tokens, clean them (exercise 02.2), keep the "
                        "first 50 and count the share in the attribute set, in percent.")
                if got is not None and math.isclose(float(got), unfiltered, abs_tol=1e-6):
                    hint = ("that is the rate of the top 50 tokens *before* cleaning: take the top 500, drop stopwords "
                            "and short tokens, then keep the first 50.")
                elif got is not None and math.isclose(100 * float(got), expected, abs_tol=1e-4):
                    hint = "the rate is a percentage: multiply by 100."
                _fail(ex, f"{fact['subject']!r}, last subject token at layer {row['layer']}, {which} attribute set",
                      expected, got, hint)
    _passed(ex, f"{n} rates of {len(chosen)} subjects (own and another subject's attribute set)")


def check_knockout_windows(fn, lm=None) -> None:
    """02.4 ``fn(repr_layer, window) -> list[list[int]]``: the official knockout windows."""
    ex, n = "02.4 knockout_windows", 0
    for n_layers in (18, 30, 48):
        repr_layer, size = scaled_layer(n_layers, 40), scaled_layer(n_layers, 10)
        expected = [list(w) for w in knockout_windows(repr_layer, size, True)]
        got = _call(ex, fn, repr_layer, size)
        got = [[int(x) for x in w] for w in got] if got is not None else got
        n += 1
        if got == expected:
            continue
        hint = "one window per start 0 .. repr_layer - 1, each range(start, min(start + window + 1, repr_layer))."
        if got == [list(w) for w in knockout_windows(repr_layer, size, False)]:
            hint = "the official code knocks out one layer more than the window: range(start, start + window + 1)."
        elif got and any(repr_layer in w for w in got):
            hint = f"a window never reaches the representation layer's own block ({repr_layer})."
        _fail(ex, f"repr_layer={repr_layer}, window={size} ({n_layers}-layer model)", expected, got, hint)
    _passed(ex, f"{n} depths (18, 30, 48 layers)")

