"""An attention update taken apart by head, and rebuilt from its parts.

The paper's extraction analysis reads the attention update at the last position as a sum of
per-head contributions, rebuilds it from captured weights and values with some edges removed,
and reads each head's value-output circuit W_V W_O in vocabulary space (Dar et al., 2023).
These functions do that for every registered family, including models with a norm after the
attention output (Gemma 2/3, OLMo 2) and grouped-query attention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .devices import execution_device
from .forward import Capture, run
from .interventions import PatchHidden


def _post_norm(lm, layer):
    """The norm applied to the attention output before it joins the residual (Gemma), or None."""
    return None if lm.arch.attn_post_norm is None else lm.sub(layer, lm.arch.attn_post_norm)


def _call(lm, module, x: Tensor) -> Tensor:
    """``module(x)`` with ``x`` where the module computes, in the model's dtype."""
    return module(x.to(execution_device(module), lm.dtype))


def update_from_heads(lm, layer: int, z: Tensor) -> Tensor:
    """The attention update for per-head outputs ``z`` (..., H * head_dim): the output
    projection, then the post-attention norm where the model has one."""
    out = _call(lm, lm.sub(layer, lm.arch.attn_out), z)
    norm = _post_norm(lm, layer)
    return (_call(lm, norm, out) if norm is not None else out).float()


def update_from_weights(lm, layer: int, weights: Tensor, values: Tensor) -> Tensor:
    """The attention update of one query for attention ``weights`` (..., H, n) over
    ``values`` (H_kv, n, head_dim); with grouped-query attention each key-value head
    serves ``H / H_kv`` consecutive query heads, as in the model."""
    values = values.float().repeat_interleave(lm.n_heads // values.shape[0], dim=0)
    z = torch.einsum("...hn,hnd->...hd", weights.float(), values)
    return update_from_heads(lm, layer, z.flatten(-2))


def head_contributions(lm, layer: int, z: Tensor) -> tuple[Tensor, Tensor]:
    """Each head's share of the attention update (..., H, d), and the rest (..., d): the
    output projection's bias, which belongs to no head. Shares plus rest equal the update.

    The output projection is affine, so head h contributes W_O^h z_h. With a
    post-attention RMSNorm (Gemma) the update is N(o) = g * o / rms(o), which is linear in
    o once the scale rms(o) of the whole output is fixed: N(o) = (N(o) / o) * o,
    elementwise. Each head's share is then (N(o) / o) * W_O^h z_h, and the shares still add
    up to the update.
    """
    proj = lm.sub(layer, lm.arch.attn_out)
    z = z.to(execution_device(proj), lm.dtype)
    heads = z.unflatten(-1, (lm.n_heads, -1))
    alone = heads[..., None, :, :] * torch.eye(lm.n_heads, dtype=z.dtype, device=z.device)[:, :, None]
    bias = proj(torch.zeros_like(z)).float()
    shares = proj(alone.flatten(-2)).float() - bias[..., None, :]
    norm = _post_norm(lm, layer)
    if norm is not None:
        out = proj(z)
        gain = torch.where(out != 0, _call(lm, norm, out).float().to(out.device) / out.float(), 0.0)
        shares, bias = shares * gain[..., None, :], bias * gain
    return shares, bias


def reweight(weights: Tensor, blocked: Tensor, variant: str) -> Tensor:
    """Attention weights (..., n) of the last position with the ``blocked`` keys removed.

    ``"renormalised"``: the surviving weights rescaled to sum to one, which is exactly
    what removing those edges before the softmax gives. ``"official"``: the official
    code's computation, which writes -1e6 into the *probabilities* and applies
    softmax again, so the surviving weights become proportional to exp(p), nearly uniform
    (with nothing blocked it keeps the weights, as its "MHSA*" row does). Blocking every
    key leaves zero weights in both (the official "block all").
    """
    weights, blocked = torch.broadcast_tensors(weights, blocked)
    if variant == "official":
        resoftmaxed = weights.float().masked_fill(blocked, -1e6).softmax(-1)
        out = torch.where(blocked.any(-1, keepdim=True), resoftmaxed, weights.float())
    elif variant == "renormalised":
        kept = weights.float().masked_fill(blocked, 0)
        out = kept / kept.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    else:
        raise ValueError("variant must be 'official' or 'renormalised'")
    return out.masked_fill(blocked.all(-1, keepdim=True), 0)


@torch.no_grad()
def value_output(lm, layer: int, vectors: Tensor, chunk: int = 128) -> Tensor:
    """What each head of ``layer`` would add to the residual stream if it attended only to
    a position whose residual is ``x``: W_O^h W_V^h norm(x) for each row of ``vectors``
    (T, d) -> (T, H, d). This is Dar et al.'s value-output circuit W_VO read through the
    layer's own input norm and, where the model has one, its post-attention norm (applied
    to each head's vector alone: that changes its length, not its ranking of tokens).

    The values come from the model itself (a forward pass whose residual entering
    ``layer`` is ``vectors``), so fused or grouped value projections need no special case;
    values carry no position information in any supported family.
    """
    values = []
    for start in range(0, len(vectors), chunk):
        part = vectors[start:start + chunk]
        ids = torch.zeros(1, len(part), dtype=torch.long)
        out = run(lm, ids, [[PatchHidden(layer, range(len(part)), part)]],
                  capture=Capture(layers=[layer], values=True))
        values.append(out.acts["values"][0, 0])  # (H_kv, T, head_dim)
    values = torch.cat(values, dim=1).repeat_interleave(lm.n_heads // values[0].shape[0], dim=0)  # (H, T, hd)
    z = torch.zeros(len(vectors), lm.n_heads, lm.n_heads, values.shape[-1], dtype=values.dtype, device=values.device)
    for h in range(lm.n_heads):
        z[:, h, h] = values[h]
    proj = lm.sub(layer, lm.arch.attn_out)
    flat = z.flatten(-2)
    out = _call(lm, proj, flat) - _call(lm, proj, torch.zeros_like(flat[:1]))
    norm = _post_norm(lm, layer)
    return (_call(lm, norm, out) if norm is not None else out).float()


def token_embeddings(lm, token_ids) -> Tensor:
    """Input embeddings of tokens as the model feeds them to its first layer (with any
    embedding scale, e.g. Gemma's sqrt(d))."""
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=lm.device)
    with torch.no_grad():
        return lm.model.get_input_embeddings()(ids)


__all__ = ["head_contributions", "reweight", "token_embeddings", "update_from_heads", "update_from_weights",
           "value_output"]
