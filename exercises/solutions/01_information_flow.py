"""Reference solutions for exercises/01_information_flow_exercises.ipynb (never imported by it)."""

import torch

from utils import BlockAttention, run
from utils import window as library_window


def window(center, size, n_layers):
    """01.1 The official window: size // 2 layers below the centre, the rest above, clipped."""
    first = center - size // 2
    return [layer for layer in range(first, first + size) if 0 <= layer < n_layers]


def position_sets(fact):
    """01.2 The subject, non-subject and last positions; a sink token at position 0 in none of them."""
    last = fact["n_tokens"] - 1
    skip = {0} if fact["has_sink"] else set()
    subject = [p for p in fact["subject_positions"] if p not in skip]
    non_subject = [p for p in range(last) if p not in subject and p not in skip]
    return {"subject": subject, "non-subject": non_subject, "last": [last]}


def knockout_probs(scores, query, keys):
    """01.3 Attention probabilities (H, n, n) with the causal mask and the edges query -> keys removed
    before the softmax."""
    n = scores.shape[-1]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()  # causal: query i sees keys 0..i
    allowed[query, keys] = False  # the knockout
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def relative_change(p_base, p_new):
    """01.4 The change of the prediction's probability, in percent of the clean probability."""
    return 100 * (p_new - p_base) / p_base


def flow_curve(lm, fact, k, keys):
    """01.5 The relative change per window centre when the last position cannot see ``keys``."""
    ids, last = fact["input_ids"], fact["n_tokens"] - 1
    rows = [[]] + [[BlockAttention(library_window(c, k, lm.n_layers), [last], keys)] for c in range(lm.n_layers)]
    probs = run(lm, ids, rows).probs()  # one row per configuration, the first one clean
    target = int(probs[0].argmax())  # the model's own prediction
    return [relative_change(probs[0, target].item(), p) for p in probs[1:, target].tolist()]
