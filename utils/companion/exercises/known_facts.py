"""Checkers of the exercises of §2 (notebook 00): subject tokens, the attribute's first token,
the next-token prediction."""

from __future__ import annotations

import math

from ...paper.facts import attribute_first_token, subject_positions
from .common import ExerciseFailed, _call, _fail, _passed, _show, _tokens, model, small_facts, small_known_facts


def check_subject_positions(fn, lm=None) -> None:
    """00.1 ``fn(spans, prompt, subject) -> list[int]``: the token positions of the subject."""
    ex, lm = "00.1 subject_positions", model(lm)
    n = 0
    for sink in (None, True):
        for fact in small_facts(lm, sink):
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
    ex, lm = "00.2 attribute_first_token", model(lm)
    cases = small_facts(lm)
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
    cases = small_known_facts(lm)[:8]
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

