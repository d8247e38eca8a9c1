"""Reference solutions for exercises/04_interventions_exercises.ipynb (never imported by it)."""

import torch

from utils import Capture, PatchHidden, run
from utils.core.heads import update_from_weights
from utils.paper.extraction import clean_run


@torch.no_grad()
def blocked_update(lm, fact, layer, blocked):
    """04.1 The last position's attention update at ``layer`` with its edges to ``blocked``
    removed at that layer only: the captured weights, blocked keys set to 0, rows rescaled."""
    r = clean_run(lm, fact)
    weights = r.weights[layer].float().clone()  # (H, n): the last query's attention probabilities
    weights[:, blocked] = 0
    weights = weights / weights.sum(-1, keepdim=True)
    return update_from_weights(lm, layer, weights, r.values[layer])


@torch.no_grad()
def patched_update(lm, fact, layer, positions, source):
    """04.2 The last position's attention update at ``layer`` when the residual entering it at
    ``positions`` is the same prompt's ``hidden_states[source]``."""
    ids, last = fact["input_ids"], fact["n_tokens"] - 1
    hidden = run(lm, ids, capture=Capture(resid=True)).acts["resid"][0]  # (L+1, n, d), hidden_states indexing
    patch = PatchHidden(layer, positions, hidden[source, positions])
    out = run(lm, ids, [[patch]], capture=Capture(positions=[last], layers=[layer], attn=True))
    return out.acts["attn"][0, 0, 0]


@torch.no_grad()
def knocked_out_state(lm, input_ids, sublayer, layers, repr_layer, position):
    """04.3 The hidden state at ``position`` at the output of ``repr_layer`` with the
    ``sublayer`` update removed at every position of ``layers``, with plain forward hooks."""
    path = lm.arch.mlp_update if sublayer == "mlp" else lm.arch.attn_update

    def zero(module, args, output):
        if isinstance(output, tuple):  # an attention module returns (update, weights, ...)
            return (torch.zeros_like(output[0]),) + tuple(output[1:])
        return torch.zeros_like(output)

    handles = [lm.sub(layer, path).register_forward_hook(zero) for layer in layers]
    try:
        out = lm.model(torch.tensor([input_ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out.hidden_states[repr_layer + 1][0, position].float()
