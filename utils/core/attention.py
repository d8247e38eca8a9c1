"""The two ways this project reaches inside a model's attention, and how each model gets one.

The analyses need three things from an attention sublayer: remove query -> key edges before
the softmax (attention knockout), make a query's attention uniform over what it may see
(the official code's "block all attention", by zeroing the query), and read the attention
probabilities and value vectors. Two access paths provide them:

* :class:`InterfaceAccess` - the model's attention dispatches through transformers'
  ``AttentionInterface``. We register ``dissect_sdpa`` and ``dissect_eager``, which call the
  stock sdpa or eager function unchanged unless the current forward pass edits that module:
  then the block is merged into whatever mask the model built (None, boolean or additive;
  causal or sliding-window), queries are zeroed, and probabilities and values are read where
  the attention function receives them. The same operation under eager and sdpa attention.
  Runs of the last token over a cached prefix work here.
* :class:`MaskHookAccess` - attention classes that compute attention themselves (Bloom,
  Falcon, GPT-Neo). A pre-hook merges the block into the ``attention_mask`` they are called
  with; queries and values are read from the projection the registry names, split by its
  layout; probabilities from the module's own output (they run in eager mode).

Which one a model gets is decided by looking at the loaded model (:func:`probe_access`: run
two tokens and see which attention modules call our functions), never by a flag that can go
stale when a new transformers release moves a family onto the interface.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations import sdpa_attention
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from .hooks import ACTIVE, AttentionEdit, Hooks, layer_input

# --------------------------------------------------------------------------------------
# Editing the mask


def merge_block_into_mask(mask: Tensor | None, blocked: Tensor, q_len: int, k_len: int) -> tuple[Tensor, Tensor]:
    """Remove the ``blocked`` edges (B, q, k; True = remove) from an attention mask, and say
    which query rows that left with no key at all (B, 1, q).

    The mask may be None (plain causal), boolean (True = attend) or additive (0 = attend,
    large negative = drop); its padding and sliding-window structure is kept. A row left
    empty is not fixed here (softmax over it is uniform or NaN, not "no attention"): the
    caller reports it once the pass is over, without a device synchronisation per layer.
    """
    blocked = blocked[:, None, -q_len:, -k_len:]
    if mask is None:
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=blocked.device)
        mask = mask.tril(k_len - q_len)[None, None]
    mask = mask[..., -q_len:, :k_len].to(blocked.device)
    if mask.dtype == torch.bool:
        before, merged = mask, mask & ~blocked
        after = merged
    else:
        low = torch.finfo(mask.dtype).min
        merged = mask.masked_fill(blocked, low)
        before, after = mask > low / 2, merged > low / 2
    return merged, before.any(-1) & ~after.any(-1)


def _report_empty_rows(hooks: Hooks, layer: int, emptied: Tensor) -> None:
    def check():
        if bool(emptied.any()):  # one synchronisation, after the pass
            row, _, query = (int(i) for i in emptied.nonzero()[0])
            raise ValueError(
                f"Attention knockout blocks every key of query position {query} (batch row {row}, layer {layer}). "
                "Softmax over a fully masked row is uniform or NaN, not zero: to block all attention use "
                "ZeroSublayer('attn', ...).")

    hooks.checks.append(check)


def as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An additive float mask (what attention classes outside the interface add to their scores)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


# --------------------------------------------------------------------------------------
# Back-end 1: transformers' AttentionInterface


def _eager_for(module) -> callable:
    """The model's own eager attention (some families add softcapping or scaling)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise NotImplementedError(f"{type(module).__module__} defines no eager_attention_forward")
    return fn


def attention_probabilities(module, query, key, mask, kwargs) -> Tensor:
    """Attention probabilities for sdpa runs, computed as eager attention would."""
    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scaling = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
    scores = (query.float() @ key.float().transpose(-1, -2)) * scaling
    cap = kwargs.get("softcap") or getattr(getattr(module, "config", None), "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    if mask is None:
        q_len, k_len = scores.shape[-2:]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[..., : scores.shape[-1]], float("-inf"))
    else:
        scores = scores + mask[..., : scores.shape[-1]].float()
    return scores.softmax(-1).to(query.dtype)


_CALLED: set | None = None
"""While :func:`probe_access` runs: the attention modules that called our functions."""


def _make_attention_function(implementation: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        if _CALLED is not None:
            _CALLED.add(module)
        edits = ACTIVE.get()
        edit = edits.get(module) if edits else None
        if edit is not None:
            if edit.uniform is not None:  # zero queries: every score 0, softmax uniform over the visible keys
                keep = ~edit.uniform[:, None, -query.shape[-2]:, None].to(query.device)
                query = query * keep.to(query.dtype)
            if edit.blocked is not None:
                attention_mask, emptied = merge_block_into_mask(
                    attention_mask, edit.blocked.to(query.device), query.shape[-2], key.shape[-2])
                edit.record_empty(emptied)
        base = sdpa_attention.sdpa_attention_forward if implementation == "sdpa" else _eager_for(module)
        out, weights = base(module, query, key, value, attention_mask, **kwargs)
        if edit is not None and edit.read is not None:
            edit.read.weights = (weights if weights is not None else attention_probabilities(
                module, query, key, attention_mask, kwargs)).detach()
            edit.read.values = value.detach()
        return out, weights

    attention.__name__ = f"dissect_{implementation}"
    return attention


_REGISTERED = False


def register_attention_functions() -> None:
    """Register ``dissect_sdpa`` and ``dissect_eager`` with transformers (idempotent).

    Each needs a mask function too: without one, transformers builds no mask at all and
    silently drops causal masking. They reuse the stock sdpa and eager mask builders.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    for implementation, mask_fn in (("sdpa", sdpa_mask), ("eager", eager_mask)):
        AttentionInterface.register(f"dissect_{implementation}", _make_attention_function(implementation))
        AttentionMaskInterface.register(f"dissect_{implementation}", mask_fn)
    _REGISTERED = True


class InterfaceAccess:
    """Edits applied inside our registered attention functions."""

    name = "interface"
    prefix_cache = True
    """Runs of the last token over a cached prefix are supported."""

    def install(self, lm, hooks: Hooks, layer: int, edit: AttentionEdit, active: dict) -> None:
        edit.record_empty = lambda emptied: _report_empty_rows(hooks, layer, emptied)
        active[lm.sub(layer, lm.arch.attention)] = edit


# --------------------------------------------------------------------------------------
# Back-end 2: a pre-hook on the attention module's mask, projections read by layout


def split_qkv(x: Tensor, layout: str, part: str, n_heads: int, n_kv: int, head_dim: int) -> Tensor:
    """The ``part`` ("q" or "v") of a projection output (..., width) as (..., heads, head_dim).

    Layouts: ``separate`` (the module outputs that part alone), ``concat`` ([q | k | v],
    GPT-2's c_attn, Phi-3, Falcon multi-query), ``per_head`` (per head [q | k | v]: GPT-NeoX,
    Bloom, Falcon's first architecture), ``grouped`` (per key-value group [q ... q | k | v]:
    Falcon's new decoder architecture).
    """
    lead = x.shape[:-1]
    if layout == "separate":
        return x.unflatten(-1, (-1, head_dim))
    if layout == "concat":
        q, v0 = n_heads * head_dim, n_heads * head_dim + n_kv * head_dim
        part_x = x[..., :q] if part == "q" else x[..., v0:v0 + n_kv * head_dim]
        return part_x.unflatten(-1, (-1, head_dim))
    if layout == "per_head":
        shaped = x.view(*lead, n_heads, 3, head_dim)
        return shaped[..., 0, :] if part == "q" else shaped[..., 2, :]
    if layout == "grouped":
        per = n_heads // n_kv
        shaped = x.view(*lead, n_kv, per + 2, head_dim)
        return shaped[..., :per, :].flatten(-3, -2) if part == "q" else shaped[..., per + 1, :]
    raise ValueError(f"unknown qkv layout {layout!r}")


def query_columns(layout: str, width: int, n_heads: int, n_kv: int, head_dim: int) -> Tensor:
    """A (width,) bool mask of the projection's output columns that hold queries.

    Read by applying :func:`split_qkv` to the column indices, so that it holds for every
    layout; editing ``split_qkv``'s result in place would not, since for the ``grouped``
    layout with several key-value heads it is a copy (a knockout that silently did nothing).
    """
    columns = torch.arange(width)
    mask = torch.zeros(width, dtype=torch.bool)
    mask[split_qkv(columns, layout, "q", n_heads, n_kv, head_dim).flatten()] = True
    return mask


def _zero_queries(x: Tensor, layout: str, uniform: Tensor, n_heads: int, n_kv: int, head_dim: int) -> Tensor:
    """``x`` (B, n, width) with the query part zeroed at the positions ``uniform`` (B, n) marks."""
    if layout == "separate":
        q = split_qkv(x, layout, "q", n_heads, n_kv, head_dim)
        return (q * (~uniform)[..., None, None].to(x.dtype)).flatten(-2)
    is_query = query_columns(layout, x.shape[-1], n_heads, n_kv, head_dim).to(x.device)
    return x.masked_fill(uniform[..., None] & is_query, 0)


class MaskHookAccess:
    """Edits applied by hooks around attention classes that do not use the interface."""

    name = "mask-hook"
    prefix_cache = False

    def install(self, lm, hooks: Hooks, layer: int, edit: AttentionEdit, active: dict) -> None:
        arch, module = lm.arch, lm.sub(layer, lm.arch.attention)
        shape = dict(n_heads=lm.n_heads, n_kv=lm.n_kv_heads, head_dim=lm.head_dim)
        if edit.blocked is not None:
            def rewrite_mask(m, args, kwargs, blocked=edit.blocked):
                h = layer_input(args, kwargs)
                mask, emptied = merge_block_into_mask(kwargs.get("attention_mask"), blocked.to(h.device),
                                                      h.shape[1], h.shape[1])
                _report_empty_rows(hooks, layer, emptied)
                return args, {**kwargs, "attention_mask": as_additive(mask, h.dtype)}

            hooks.on_input(module, rewrite_mask)
        if edit.uniform is not None:
            if arch.query is None:
                raise NotImplementedError(
                    f"uniform attention (ZeroSublayer('attn', variant='official')) on {lm.config.model_type} needs "
                    "the registry field `query` (the module whose output holds the queries) and `qkv_layout`"
                    + (f"; registry notes: {arch.notes}" if arch.notes else "") + ". variant='zero' works.")
            hooks.edit_output(lm.sub(layer, arch.query), lambda x, u=edit.uniform: _zero_queries(
                x, arch.qkv_layout, u.to(x.device), **shape))
        if edit.read is not None:
            if arch.value is None:
                raise NotImplementedError(
                    f"reading attention values of {lm.config.model_type} needs the registry fields `value` (the "
                    "module whose output holds the values) and `qkv_layout`.")
            projected, read = hooks.read_output(lm.sub(layer, arch.value)), edit.read

            def read_weights(m, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise NotImplementedError(
                        f"{type(m).__name__} returned no attention probabilities; load the model with "
                        "attn_implementation='eager'.")
                read.weights = weights.detach()  # values (B, n, H_kv, d) -> (B, H_kv, n, d)
                read.values = split_qkv(projected.value, arch.qkv_layout, "v", **shape).transpose(1, 2)

            hooks.on_output(module, read_weights)


# --------------------------------------------------------------------------------------
# Choosing the access path of a loaded model


@torch.no_grad()
def probe_access(lm):
    """The access path for ``lm``, from which of its attention modules call our attention
    functions on a two-token pass: all -> the interface; none -> the mask hook; some ->
    an error (a mixed model is not something either path handles)."""
    global _CALLED
    _CALLED = set()
    try:
        ids = torch.tensor([[1, 2]], device=lm.device)
        lm.model(input_ids=ids, use_cache=False)
        called = _CALLED
    finally:
        _CALLED = None
    modules = [lm.sub(i, lm.arch.attention) for i in range(lm.n_layers)]
    through = [m in called for m in modules]
    if all(through):
        return InterfaceAccess()
    if not any(through):
        return MaskHookAccess()
    raise NotImplementedError(
        f"only layers {[i for i, t in enumerate(through) if t]} of {lm.config.model_type} call transformers' attention "
        "interface: check the registry field `attention`.")


__all__ = [
    "InterfaceAccess", "MaskHookAccess", "as_additive", "attention_probabilities",
    "merge_block_into_mask", "probe_access", "register_attention_functions", "split_qkv",
]
