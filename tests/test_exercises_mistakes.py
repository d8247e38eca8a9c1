"""Three or more plausible wrong answers for the checkers that let a wrong answer through or
misdiagnosed it (01.5, 03.2, 03.3): each is rejected with a hint that names its mistake."""

import pytest
import torch
from exercise_mistakes import MISTAKES

from utils import BlockAttention, run, window
from utils.companion.exercises import EXERCISES
from utils.companion.exercises.common import ExerciseFailed
from utils.core.heads import head_contributions
from utils.core.projection import project


# ---------------------------------------------------------------------------------- 01.5
def _curve(lm, fact, k, keys, own_top=False, scale=100.0):
    last = fact["n_tokens"] - 1
    rows = [[]] + [[BlockAttention(window(c, k, lm.n_layers), [last], keys)] for c in range(lm.n_layers)]
    probs = run(lm, fact["input_ids"], rows).probs()
    target = int(probs[0].argmax())
    out = []
    for i in range(1, len(rows)):
        t = int(probs[i].argmax()) if own_top else target  # each knockout's own top-1 token
        out.append(scale * (probs[i, t].item() - probs[0, t].item()) / probs[0, t].item())
    return out


def flow_own_argmax(lm, fact, k, keys):
    return _curve(lm, fact, k, keys, own_top=True)


def flow_fraction(lm, fact, k, keys):
    return _curve(lm, fact, k, keys, scale=1.0)


def flow_sign(lm, fact, k, keys):
    return _curve(lm, fact, k, keys, scale=-100.0)


# ---------------------------------------------------------------------------------- 03.2
@torch.no_grad()
def event_top5(lm, update, target):
    return bool(target in project(lm, update, "logit_lens").topk(5).indices.tolist())


@torch.no_grad()
def event_rank(lm, update, target):
    scores = project(lm, update, "logit_lens")
    return int((scores > scores[target]).sum())  # the rank, not whether it is first


# ---------------------------------------------------------------------------------- 03.3
@torch.no_grad()
def shares_averaged(lm, layer, z):
    return head_contributions(lm, layer, z)[0] / lm.n_heads  # "each head's average share"


@torch.no_grad()
def shares_whole_update(lm, layer, z):
    shares, bias = head_contributions(lm, layer, z)
    return (shares.sum(0) + bias).expand_as(shares).clone()  # every head gets the whole update


WRONG = {
    "01.5": [(MISTAKES["01.5"][0], "window(centre"), (flow_own_argmax, "each knockout's own top-1"),
             (flow_fraction, "percent"), (flow_sign, "sign is flipped")],
    "03.2": [(MISTAKES["03.2"][0], "without the final norm"), (event_rank, "rank == 0"),
             (event_top5, "ranked FIRST")],
    "03.3": [(MISTAKES["03.3"][0], "*columns* of"), (shares_averaged, "times the expected"),
             (shares_whole_update, "whole update")],
}
CASES = [(ex, fn, phrase) for ex, answers in WRONG.items() for fn, phrase in answers]


@pytest.mark.parametrize("ex,wrong,phrase", CASES, ids=[f"{ex}-{fn.__name__}" for ex, fn, _ in CASES])
def test_wrong_answer_is_rejected_with_its_mistake_named(ex, wrong, phrase, smollm):
    with pytest.raises(ExerciseFailed) as failure:
        EXERCISES[ex][1](wrong, smollm)
    message = str(failure.value)
    assert message.startswith(ex) and phrase in message, message
    if wrong is event_top5:  # the old checker told this student to add the final norm
        assert "Your answers are those of the projection without the final norm" not in message, message
    if wrong is shares_averaged:  # ... and this one to slice the columns
        assert "columns" not in message, message
