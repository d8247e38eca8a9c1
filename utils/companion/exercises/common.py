"""Checkers for the exercise notebooks in ``exercises/`` (one per exercise).

Each ``check_*`` runs a student's function against this library on real facts (the embedded
smollm2-135m and ``data/facts_small.json``) and either prints what passed or raises
:class:`ExerciseFailed` saying which input went wrong, what was expected, what came back and a
hint. An unsolved stub (``raise NotImplementedError``) gives :class:`NotImplementedYet`, a
failure of its own. The reference solutions are in ``exercises/solutions/``; the notebooks never
import them.
"""

from __future__ import annotations

import functools
import math

import torch

from .interventions import BlockAttention, Capture, PatchHidden, run, window
from .projection import project, vocabulary

MODEL = "smollm2-135m"


class ExerciseFailed(AssertionError):
    """The student's function gives a wrong answer (the message says where and why)."""


class NotImplementedYet(ExerciseFailed):
    """The exercise's stub still raises NotImplementedError."""


# --------------------------------------------------------------------------------------
# Shared helpers: the model, the facts, calling and reporting


@functools.cache
def _default_model():
    from .models import load_model

    return load_model(MODEL, device="cpu", dtype="float32")


def model(lm=None):
    """The model the checkers use: ``lm``, or smollm2-135m (loaded once per process)."""
    return lm if lm is not None else _default_model()


_CACHE: dict = {}


def _cached(key, compute):
    if key not in _CACHE:
        _CACHE[key] = compute()
    return _CACHE[key]


def facts(lm, prepend_sink: bool | None = None) -> list[dict]:
    """The small facts tokenized for ``lm`` (subject positions, sink flag), as dicts."""
    from .data import load_facts, tokenize_facts

    return _cached(("facts", id(lm), prepend_sink),
                   lambda: tokenize_facts(lm, load_facts("small"), prepend_sink)[0].to_dict("records"))


def known_facts(lm, prepend_sink: bool | None = None) -> list[dict]:
    """The small facts ``lm`` knows (its top-1 next token is the attribute's first token)."""
    from .data import build_known_set, load_facts

    def compute():
        table = build_known_set(lm, load_facts("small"), prepend_sink, progress=False)
        return table[table.known].to_dict("records")

    return _cached(("known", id(lm), prepend_sink), compute)


def _tokens(lm, ids) -> list[str]:
    return [lm.tokenizer.decode([int(i)]) for i in ids]


def _show(value, limit: int = 12) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= limit:
            return repr([round(x, 4) for x in value.flatten().tolist()])
        head = ", ".join(f"{x:.4f}" for x in value.flatten()[:4].tolist())
        return f"tensor of shape {tuple(value.shape)}: [{head}, ...], norm {value.float().norm():.4f}"
    if isinstance(value, (list, tuple)) and len(value) > limit:
        return f"{list(value[:limit])} ... ({len(value)} items)"
    return repr(value)


def _call(exercise: str, fn, *args):
    """The student's ``fn(*args)``; a stub or a crash becomes the checker's own failure."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise NotImplementedYet(f"{exercise}: `{fn.__name__}` is not implemented yet. Write it in the cell "
                                "above (replace `raise NotImplementedError`), run that cell, then this one.") from None
    except Exception as err:
        raise ExerciseFailed(f"{exercise}: `{fn.__name__}` raised {type(err).__name__}: {err}\n"
                             "(the traceback above points to the line)") from err


def _fail(exercise: str, case: str, expected, got, hint: str = "") -> None:
    lines = [f"{exercise}: wrong answer for {case}", f"  expected: {_show(expected)}", f"  got:      {_show(got)}"]
    if hint:
        lines.append(f"  hint: {hint}")
    raise ExerciseFailed("\n".join(lines))


def _passed(exercise: str, what: str) -> None:
    print(f"PASSED {exercise}: {what}")


def _as_tensor(exercise: str, value, shape, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value).detach().float().cpu()
    except Exception:
        raise ExerciseFailed(f"{exercise}: expected {what} (a tensor), got {type(value).__name__}") from None
    if tuple(t.shape) != tuple(shape):
        raise ExerciseFailed(f"{exercise}: expected {what} of shape {tuple(shape)}, got shape {tuple(t.shape)}")
    return t


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    a, b = a.float().cpu(), b.float().cpu()
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol))


# --------------------------------------------------------------------------------------
# 00 · The model and the facts it knows


def check_subject_positions(fn, lm=None) -> None:
    """00.1 ``fn(spans, prompt, subject) -> list[int]``: the token positions of the subject."""
    from .data import subject_positions

    ex, lm = "00.1 subject_positions", model(lm)
    n = 0
    for sink in (None, True):
        for fact in facts(lm, sink):
            ids, spans = lm.encode(fact["prompt"], prepend_sink=sink, offsets=True)
            expected = subject_positions(spans, fact["prompt"], fact["subject"])
            got = _call(ex, fn, spans, fact["prompt"], fact["subject"])
            got = sorted(int(p) for p in got) if got is not None else got
            n += 1
            if got == expected:
                continue
            table = " | ".join(f"{i}:{t!r}{tuple(s)}" for i, (t, s) in enumerate(zip(_tokens(lm, ids), spans)))
            start = fact["prompt"].find(fact["subject"])
            hint = (f"the subject {fact['subject']!r} covers characters {start}..{start + len(fact['subject'])} "
                    f"of the prompt. Tokens (position:token(span)): {table}. ")
            if got and any(spans[p][0] == spans[p][1] for p in got if 0 <= p < len(spans)):
                hint += "A token with an empty span, like the sink token (0, 0), covers no character of the subject."
            elif got is not None and set(got) < set(expected):
                hint += ("A token's span can start at the space before the word (' Eiffel' starts one character "
                         "before 'Eiffel'): count every token whose span overlaps the subject's characters.")
            _fail(ex, f"subject {fact['subject']!r} in {fact['prompt']!r}"
                  f"{' (sink token prepended)' if sink else ''}", expected, got, hint)
    _passed(ex, f"{n} prompts, with and without the sink token")


def check_attribute_first_token(fn, lm=None) -> None:
    """00.2 ``fn(lm, prompt, attribute) -> int``: the attribute's first token after the prompt."""
    from .data import attribute_first_token

    ex, lm = "00.2 attribute_first_token", model(lm)
    cases = facts(lm)
    for fact in cases:
        expected = attribute_first_token(lm, fact["input_ids"], fact["prompt"], fact["attribute"])
        got = _call(ex, fn, lm, fact["prompt"], fact["attribute"])
        if got != expected:
            bare = lm.tokenizer(fact["attribute"], add_special_tokens=False)["input_ids"][0]
            hint = "decode both ids with lm.tokenizer.decode([id]) to compare them."
            if got == bare:
                hint = ("that is the attribute's first token at the start of a text, without the space before it. "
                        "After the prompt the model writes the attribute with its leading space.")
            _fail(ex, f"{fact['attribute']!r} after {fact['prompt']!r}",
                  f"{expected} ({lm.tokenizer.decode([expected])!r})",
                  f"{got} ({lm.tokenizer.decode([int(got)])!r})" if isinstance(got, int) else got, hint)
    _passed(ex, f"{len(cases)} facts")


def check_next_token(fn, lm=None) -> None:
    """00.3 ``fn(lm, input_ids) -> (token_id, probability)``: the model's top-1 next token."""
    ex, lm = "00.3 next_token", model(lm)
    cases = known_facts(lm)[:8]
    for fact in cases:
        got = _call(ex, fn, lm, list(fact["input_ids"]))
        try:
            token, prob = int(got[0]), float(got[1])
        except Exception:
            raise ExerciseFailed(f"{ex}: return a pair (token id, probability), got {_show(got)}") from None
        expected = (int(fact["pred_token_id"]), float(fact["pred_prob"]))
        if token != expected[0] or not math.isclose(prob, expected[1], rel_tol=1e-3, abs_tol=1e-5):
            hint = "the prediction is made at the *last* position: softmax over the vocabulary of logits[0, -1]."
            if token == expected[0]:
                hint = ("right token, wrong probability: apply softmax over the vocabulary (the last axis) to the "
                        "last position's logits, and report the probability, not the logit.")
            _fail(ex, f"{fact['prompt']!r}", (expected[0], round(expected[1], 4)),
                  (token, round(prob, 4)), hint)
    _passed(ex, f"{len(cases)} known facts: the same prediction and probability as the known set")


# --------------------------------------------------------------------------------------
# 01 · Information flow


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


def check_source_sets(fn, lm=None) -> None:
    """01.2 ``fn(fact) -> {"subject": [...], "non-subject": [...], "last": [...]}``."""
    from .information_flow import source_sets

    ex, lm = "01.2 source_sets", model(lm)
    n = 0
    for sink in (True, None):
        for fact in facts(lm, sink):
            expected = {k: v for k, v in source_sets(fact, exclude_sink=True).items()
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
    fact = known_facts(lm, True)[0]
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
    from .information_flow import default_window, flow_of_fact

    fact = known_facts(lm, True)[index]
    return _cached(("flow", id(lm), index),
                   lambda: flow_of_fact(lm, fact, default_window(lm.n_layers), sets=("subject", "non-subject")))


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


def check_flow_curve(fn, lm=None) -> None:
    """01.5 ``fn(lm, fact, k, keys) -> list[float]``: the relative change per window centre."""
    from .information_flow import default_window, source_sets

    ex, lm = "01.5 flow_curve", model(lm)
    k = default_window(lm.n_layers)
    for index in (0,):
        fact = known_facts(lm, True)[index]
        for name in ("subject", "non-subject"):
            keys = source_sets(fact)[name]
            expected = [r["relative_change"] for r in _flow_rows(lm, index) if r["source"] == name]
            got = _call(ex, fn, lm, dict(fact), k, list(keys))
            got = _as_tensor(ex, got, (lm.n_layers,), f"one value per window centre ({lm.n_layers})")
            if _close(got, torch.tensor(expected), 1e-3):
                continue
            worst = int((got - torch.tensor(expected)).abs().argmax())
            hint = (f"the largest difference is at centre {worst} (expected {expected[worst]:.2f}, got "
                    f"{got[worst]:.2f}). Block the last position from `keys` at every layer of "
                    f"window(centre, {k}, n_layers), and measure the probability of the clean run's top-1 token.")
            _fail(ex, f"{name} of {fact['prompt']!r}, k={k}", [round(x, 1) for x in expected],
                  [round(x, 1) for x in got.tolist()], hint)
    _passed(ex, f"subject and non-subject curves of {fact['prompt']!r} (k = {k}) match the library's flow_of_fact")


# --------------------------------------------------------------------------------------
# 02 · Subject enrichment


def check_hidden_state(fn, lm=None) -> None:
    """02.1 ``fn(lm, input_ids, layer, position) -> (d,)``: the hidden state *at* layer l."""
    ex, lm = "02.1 hidden_state", model(lm)
    fact = known_facts(lm)[0]
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
    fact = known_facts(lm)[index]
    resid = run(lm, fact["input_ids"], capture=Capture(resid=True, positions=[fact["subject_last"]])).acts["resid"]
    vocab = vocabulary(lm)
    return [vocab[i] for i in project(lm, resid[0, layer, 0], "logit_lens").topk(500).indices.tolist()]


def check_clean_tokens(fn, lm=None) -> None:
    """02.2 ``fn(tokens, kept) -> list[str]``: the first ``kept`` tokens that survive the filter."""
    from .attributes import keep_predicted_token, stopwords

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
    from .attributes import attribute_sets, load_paragraphs
    from .enrichment import enrichment_rows, mismatched

    ex, lm = "02.3 attributes_rate", model(lm)
    known = [f for f in known_facts(lm)]
    sets = _cached(("attributes", id(lm)),
                   lambda: attribute_sets(lm, load_paragraphs("wiki-vital", [f["subject"] for f in known])[0]))
    controls = mismatched(sets)
    chosen = [f for f in known if f["subject"] in sets][:3]
    vocab, n = vocabulary(lm), 0
    for fact in chosen:
        rows = enrichment_rows(lm, fact, sets[fact["subject"]], 500, 50, "logit_lens", control=controls[fact["subject"]])
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
    from .enrichment import knockout_windows, scaled_layer

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


# --------------------------------------------------------------------------------------
# 03 · Attribute extraction


def _updates(lm, fact):
    acts = run(lm, fact["input_ids"], capture=Capture(positions=[fact["n_tokens"] - 1], attn=True, mlp=True,
                                                      resid=True)).acts
    return acts["attn"][0, :, 0], acts["mlp"][0, :, 0], acts["resid"][0, :, 0]


def check_sublayer_updates(fn, lm=None) -> None:
    """03.1 ``fn(lm, input_ids) -> (attn, mlp)``: each layer's updates at the last position."""
    ex, lm = "03.1 sublayer_updates", model(lm)
    for fact in known_facts(lm)[:2]:
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
    update that the projection without the final norm judges differently, and a spread of
    non-events: (fact, sublayer, layer, update, event)."""
    from .extraction import ranked_first

    def compute():
        cases, others = [], []
        for fact in known_facts(lm):
            attn, mlp, _ = _updates(lm, fact)
            vectors, target = torch.cat([attn, mlp]), int(fact["pred_token_id"])
            lens = ranked_first(lm, vectors, target, "logit_lens").tolist()
            paper = ranked_first(lm, vectors, target, "paper").tolist()
            for i, (vector, event, plain) in enumerate(zip(vectors, lens, paper)):
                case = (fact, "attention" if i < lm.n_layers else "MLP", i % lm.n_layers, vector, event)
                (cases if event or plain else others).append(case)
        return cases + others[:: max(1, len(others) // 40)]

    return _cached(("events", id(lm)), compute)


def check_extraction_event(fn, lm=None) -> None:
    """03.2 ``fn(lm, update, target) -> bool``: does the update rank the target first (logit lens)?"""
    ex, lm = "03.2 extraction_event", model(lm)
    cases = _event_cases(lm)
    for fact, sub, layer, vector, want in cases:
        target = int(fact["pred_token_id"])
        got = _call(ex, fn, lm, vector.clone(), target)
        if got is not None and bool(got) == want:
            continue
        scores = project(lm, vector, "logit_lens")
        rank = int((scores > scores[target]).sum())
        hint = (f"under the logit lens the target {lm.tokenizer.decode([target])!r} has rank {rank} "
                f"(0 = first); top tokens: {_tokens(lm, scores.topk(3).indices.tolist())}.")
        plain = project(lm, vector, "paper")
        if bool(got) == bool((plain > plain[target]).sum() == 0):
            hint += (" Your answer is the one without the final norm: project with the logit lens "
                     "(the final norm, then the unembedding).")
        _fail(ex, f"the {sub} update of layer {layer} of {fact['prompt']!r}", want, got, hint)
    events = sum(case[-1] for case in cases)
    _passed(ex, f"{len(cases)} updates of {len(known_facts(lm))} known facts ({events} extraction events, and the "
                "updates the projection without the final norm gets wrong)")


def _event_layer(lm, fact) -> int:
    from .extraction import ranked_first

    attn, _, _ = _updates(lm, fact)
    events = ranked_first(lm, attn, int(fact["pred_token_id"]), "logit_lens").nonzero().flatten().tolist()
    return events[-1] if events else lm.n_layers - 2


def check_head_shares(fn, lm=None) -> None:
    """03.3 ``fn(lm, layer, z) -> (n_heads, d)``: each head's share of the attention update."""
    from .extraction import clean_run, head_contributions

    ex, lm = "03.3 head_shares", model(lm)
    for fact in known_facts(lm)[:2]:
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
            if _close(got.sum(0), expected.sum(0) + bias):
                hint = ("your shares add up to the update but are split between the heads wrongly: " + hint)
            _fail(ex, f"head {head} of layer {layer}, {fact['prompt']!r}", expected[head], got[head], hint)
    _passed(ex, "2 facts, an extracting layer and an early one: shares match and add up to the update")


def check_head_mapping(fn, lm=None) -> None:
    """03.4 ``fn(lm, layer, head, token_id) -> (V,)``: a head's W_V W_O mapping of a token."""
    from .extraction import token_embeddings, value_output

    ex, lm = "03.4 head_mapping", model(lm)
    fact = known_facts(lm)[0]
    tokens = [int(fact["input_ids"][p]) for p in fact["subject_positions"]]
    layer = _event_layer(lm, fact)
    embeddings = token_embeddings(lm, tokens)
    mapped = value_output(lm, layer, embeddings)  # (T, H, d)
    group = lm.n_heads // lm.config.num_key_value_heads
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
            wrong_group = head % lm.config.num_key_value_heads
            slice_ = w_o[:, head * lm.head_dim:(head + 1) * lm.head_dim]
            if wrong_group != head // group and _close(got, project(lm, slice_ @ values[wrong_group, t].float(),
                                                                   "logit_lens"), 1e-3):
                hint = (f"grouped-query attention: {lm.n_heads} query heads share {lm.config.num_key_value_heads} "
                        f"key-value heads in blocks of {group}, so head h reads value head h // {group}, not "
                        f"h % {lm.config.num_key_value_heads}.")
            _fail(ex, f"head {head} of layer {layer}, token {lm.tokenizer.decode([token])!r}",
                  _tokens(lm, expected.topk(5).indices.tolist()), _tokens(lm, got.topk(5).indices.tolist()),
                  "(top 5 tokens shown) " + hint)
    _passed(ex, f"3 heads of layer {layer} on the subject tokens of {fact['subject']!r}")


EXERCISES = {
    "00.1": ("subject_positions", check_subject_positions),
    "00.2": ("attribute_first_token", check_attribute_first_token),
    "00.3": ("next_token", check_next_token),
    "01.1": ("window", check_window),
    "01.2": ("source_sets", check_source_sets),
    "01.3": ("knockout_probs", check_knockout_probs),
    "01.4": ("relative_change", check_relative_change),
    "01.5": ("flow_curve", check_flow_curve),
    "02.1": ("hidden_state", check_hidden_state),
    "02.2": ("clean_tokens", check_clean_tokens),
    "02.3": ("attributes_rate", check_attributes_rate),
    "02.4": ("knockout_windows", check_knockout_windows),
    "03.1": ("sublayer_updates", check_sublayer_updates),
    "03.2": ("extraction_event", check_extraction_event),
    "03.3": ("head_shares", check_head_shares),
    "03.4": ("head_mapping", check_head_mapping),
}
"""Exercise id -> (the function the student writes, its checker)."""
