"""Batched interventions on a causal LM's forward pass.

Each row of a batch carries its own list of interventions, so many configurations of
one prompt (different layer windows, different blocked positions) run in one forward
pass. The interventions are the paper's:

* :class:`BlockAttention` - attention knockout: remove edges query -> key at chosen
  layers, for all heads, by merging the block into whatever mask the model built
  (None, boolean or additive; causal or sliding-window). It runs inside the attention
  function registered with transformers' ``AttentionInterface``, so it is the same
  operation under eager and sdpa attention; models whose attention does not use the
  interface (GPT-J) get the mask rewritten by a pre-hook instead.
* :class:`ZeroSublayer` - knock out the attention or MLP update of chosen layers,
  either zeroed (default) or the official code's variants (``variant="official"``):
  MLP coefficients zeroed so the output projection's bias remains, and attention made
  uniform over the visible positions (what adding ``finfo.min`` to every score does in
  fp32), implemented by zeroing the queries.
* :class:`PatchHidden` - overwrite the residual stream entering a layer at chosen
  positions.

:func:`run` also captures hidden states, sublayer updates, per-head outputs and
attention weights at chosen positions.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor


def _as_tuple(x) -> tuple[int, ...] | None:
    if x is None:
        return None
    if isinstance(x, int):
        return (x,)
    return tuple(int(i) for i in x)


@dataclass(frozen=True)
class BlockAttention:
    """Block attention edges from every query position to every key position, at the
    given layers and for all heads."""

    layers: tuple[int, ...]
    queries: tuple[int, ...]
    keys: tuple[int, ...]

    def __post_init__(self):
        for name in ("layers", "queries", "keys"):
            object.__setattr__(self, name, _as_tuple(getattr(self, name)))


@dataclass(frozen=True)
class ZeroSublayer:
    """Knock out the ``"attn"`` or ``"mlp"`` update at the given layers.

    ``positions=None`` means every position. ``variant="zero"`` removes the update;
    ``variant="official"`` reproduces the official code: the MLP's hidden units are set to
    0 (its output projection's bias remains), and attention becomes uniform over the
    positions each query may see.
    """

    sublayer: str
    layers: tuple[int, ...]
    positions: tuple[int, ...] | None = None
    variant: str = "zero"

    def __post_init__(self):
        if self.sublayer not in ("attn", "mlp"):
            raise ValueError("sublayer must be 'attn' or 'mlp'")
        if self.variant not in ("zero", "official"):
            raise ValueError("variant must be 'zero' or 'official'")
        object.__setattr__(self, "layers", _as_tuple(self.layers))
        object.__setattr__(self, "positions", _as_tuple(self.positions))


@dataclass(frozen=True, eq=False)
class PatchHidden:
    """Replace the residual stream entering layer ``layer`` (HF ``hidden_states[layer]``)
    at ``positions`` with ``vectors`` (one row per position)."""

    layer: int
    positions: tuple[int, ...]
    vectors: Tensor

    def __post_init__(self):
        object.__setattr__(self, "positions", _as_tuple(self.positions))
        if self.vectors.shape[0] != len(self.positions):
            raise ValueError("PatchHidden needs one vector per position")


Intervention = BlockAttention | ZeroSublayer | PatchHidden


def window(center: int, size: int, n_layers: int) -> tuple[int, ...]:
    """The official code's window of ``size`` layers around ``center`` (clipped to the
    model; asymmetric for even sizes: 10 around 20 is 15..24)."""
    return tuple(range(max(0, center - size // 2), min(n_layers, center - (-size // 2))))


def first_layer(interventions: Iterable[Intervention]) -> int | None:
    """The earliest layer an intervention touches (None for none)."""
    layers = [
        min(iv.layers) if not isinstance(iv, PatchHidden) else iv.layer
        for iv in interventions
        if isinstance(iv, PatchHidden) or iv.layers
    ]
    return min(layers) if layers else None


# --------------------------------------------------------------------------------------
# Attention functions registered with transformers


def merge_block_into_mask(
    mask: Tensor | None, blocked: Tensor, q_len: int, k_len: int, layer: int | None = None
) -> Tensor:
    """Remove the ``blocked`` edges (B, q, k; True = remove) from an attention mask.

    The mask may be None (plain causal), boolean (True = attend) or additive
    (0 = attend, large negative = drop); its padding and sliding-window structure is
    kept. A query row left with no key to attend to is an error: softmax over a fully
    masked row is uniform or NaN, not "no attention" - zero the update instead.
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
    emptied = before.any(-1) & ~after.any(-1)
    if emptied.any():
        row, _, query = (int(i) for i in emptied.nonzero()[0])
        raise ValueError(
            f"Attention knockout blocks every key of query position {query} (batch row {row}, "
            f"layer {layer}). Softmax over a fully masked row is uniform or NaN, not zero: to "
            "block all attention use ZeroSublayer('attn', ...)."
        )
    return merged


def _eager_for(module) -> callable:
    """The model's own eager attention (some families add softcapping or scaling)."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise NotImplementedError(f"{type(module).__module__} defines no eager_attention_forward")
    return fn


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """An additive float mask (what non-interface attention classes add to their scores)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _attention_weights(module, query, key, mask, kwargs) -> Tensor:
    """Attention probabilities for sdpa runs, computed as eager attention would."""
    from transformers.integrations.sdpa_attention import repeat_kv

    key = repeat_kv(key, query.shape[1] // key.shape[1])
    scaling = kwargs.get("scaling") or getattr(module, "scaling", query.shape[-1] ** -0.5)
    scores = (query @ key.transpose(-1, -2)).float() * scaling
    cap = kwargs.get("softcap") or getattr(module.config, "attn_logit_softcapping", None)
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


def _make_attention_function(backend: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        state = getattr(module, "_dissect", None)
        if state is not None and state.blocked is not None:
            attention_mask = merge_block_into_mask(  # (with device_map="auto" layers sit on several GPUs)
                attention_mask, state.blocked.to(query.device), query.shape[-2], key.shape[-2], module.layer_idx
            )
        if backend == "sdpa":
            from transformers.integrations.sdpa_attention import sdpa_attention_forward as base
        else:
            base = _eager_for(module)
        out, weights = base(module, query, key, value, attention_mask, **kwargs)
        if state is not None and state.record is not None:
            if weights is None:
                weights = _attention_weights(module, query, key, attention_mask, kwargs)
            state.record(weights=weights, values=value)
        return out, weights

    attention.__name__ = f"dissect_{backend}"
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
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

    for backend, mask_fn in (("sdpa", sdpa_mask), ("eager", eager_mask)):
        AttentionInterface.register(f"dissect_{backend}", _make_attention_function(backend))
        AttentionMaskInterface.register(f"dissect_{backend}", mask_fn)
    _REGISTERED = True


@dataclass
class _AttentionState:
    blocked: Tensor | None = None
    record: callable | None = None


# --------------------------------------------------------------------------------------
# Building one batch's hooks


@dataclass
class Capture:
    """What :func:`run` records, at ``positions`` (None = all) and ``layers`` (None = all).

    * ``resid``: the residual stream entering each layer, plus the last layer's output
      (HF ``hidden_states`` indexing, but the last entry is *before* the final norm):
      shape (B, L+1, P, d).
    * ``attn`` / ``mlp``: the update each sublayer adds to the residual stream (B, L, P, d).
    * ``heads``: the input of the attention output projection, split by head
      (B, L, P, H, head_dim).
    * ``attn_weights``: attention probabilities of the query positions (B, L, H, P, n).
    * ``values``: per-head value vectors of every position (B, L, H_kv, n, head_dim).
    """

    positions: Sequence[int] | None = None
    layers: Sequence[int] | None = None
    resid: bool = False
    attn: bool = False
    mlp: bool = False
    heads: bool = False
    attn_weights: bool = False
    values: bool = False


@dataclass
class RunOutput:
    logits: Tensor
    """(B, logits_to_keep, V) next-token logits of the last positions."""
    acts: dict[str, Tensor] = field(default_factory=dict)

    def probs(self) -> Tensor:
        """Next-token probabilities at the last position (B, V), in fp32."""
        return self.logits[:, -1].float().softmax(-1)


def _positions_mask(batch: int, n: int, rows, select, device) -> dict[int, Tensor]:
    """layer -> (B, n) bool, from each row's interventions chosen by ``select``."""
    out: dict[int, Tensor] = {}
    for b, row in enumerate(rows):
        for iv in row:
            chosen = select(iv)
            if chosen is None:
                continue
            positions = list(range(n)) if chosen is True else list(chosen)
            for layer in iv.layers:
                mask = out.setdefault(layer, torch.zeros(batch, n, dtype=torch.bool))
                mask[b, positions] = True
    return {k: v.to(device) for k, v in out.items()}


def first_output(output):
    """A module's main output, whether it returns a tensor or a tuple (versions differ)."""
    return output[0] if isinstance(output, tuple) else output


def replace_first_output(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def layer_input(args, kwargs):
    """The hidden states a decoder layer was called with (positionally or by keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def with_layer_input(args, kwargs, new):
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


class _Hooks:
    """Installs and removes the hooks and attention state of one forward pass."""

    def __init__(self, lm):
        self.lm = lm
        self.handles = []
        self.states: list[torch.nn.Module] = []

    def add(self, module, hook, kind="forward"):
        if kind == "forward":
            self.handles.append(module.register_forward_hook(hook))
        else:
            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def state(self, layer: int) -> _AttentionState:
        module = self.lm.sub(layer, self.lm.arch.attention)
        if getattr(module, "_dissect", None) is None:
            module._dissect = _AttentionState()
            self.states.append(module)
        return module._dissect

    def close(self):
        for h in self.handles:
            h.remove()
        for module in self.states:
            module._dissect = None


def _zero_query(layout: str, hidden: int, head_dim: int):
    def edit(q: Tensor, mask: Tensor) -> Tensor:
        keep = (~mask)[..., None].to(q.dtype)
        if layout == "plain":
            return q * keep
        if layout == "fused_qkv":
            return torch.cat([q[..., :hidden] * keep, q[..., hidden:]], dim=-1)
        if layout == "neox_qkv":
            shaped = q.view(*q.shape[:-1], -1, 3 * head_dim)
            first = shaped[..., :head_dim] * keep[..., None]
            return torch.cat([first, shaped[..., head_dim:]], dim=-1).view_as(q)
        raise ValueError(f"unknown query layout {layout!r}")

    return edit


@contextlib.contextmanager
def intervene(lm, rows: Sequence[Sequence[Intervention]], n_tokens: int, expand_at: int | None = None):
    """Install the hooks for a batch whose row ``b`` carries ``rows[b]``.

    ``expand_at``: when the input has one row, the layers before ``expand_at`` run once
    and their output is repeated for every row (all rows share that computation).
    """
    arch, batch, device = lm.arch, len(rows), lm.device
    hooks = _Hooks(lm)
    try:
        if expand_at is not None:
            def expand(module, args, kwargs):
                h = layer_input(args, kwargs)
                return with_layer_input(args, kwargs, h.expand(batch, *h.shape[1:]).contiguous())

            hooks.add(lm.layers[expand_at], expand, "pre")

        # residual-stream patches (pre-hooks on the layer they enter)
        patches: dict[int, tuple[Tensor, Tensor]] = {}
        for b, row in enumerate(rows):
            for iv in row:
                if isinstance(iv, PatchHidden):
                    if not 0 <= iv.layer < lm.n_layers:
                        raise ValueError(f"PatchHidden.layer must be in [0, {lm.n_layers})")
                    mask, values = patches.setdefault(
                        iv.layer,
                        (torch.zeros(batch, n_tokens, dtype=torch.bool),
                         torch.zeros(batch, n_tokens, lm.config.hidden_size, dtype=lm.dtype)),
                    )
                    mask[b, list(iv.positions)] = True
                    values[b, list(iv.positions)] = iv.vectors.to(values.dtype).cpu()
        for layer, (mask, values) in patches.items():
            def patch(module, args, kwargs, mask=mask, values=values):
                h = layer_input(args, kwargs)
                new = torch.where(mask.to(h.device)[..., None], values.to(h.device, h.dtype), h)
                return with_layer_input(args, kwargs, new)

            hooks.add(lm.layers[layer], patch, "pre")

        # attention knockout
        blocked: dict[int, Tensor] = {}
        for b, row in enumerate(rows):
            for iv in row:
                if isinstance(iv, BlockAttention):
                    for layer in iv.layers:
                        m = blocked.setdefault(layer, torch.zeros(batch, n_tokens, n_tokens, dtype=torch.bool))
                        m[b][torch.tensor(iv.queries)[:, None], torch.tensor(iv.keys)[None, :]] = True
        for layer, m in blocked.items():
            if not 0 <= layer < lm.n_layers:
                raise ValueError(f"layer {layer} out of range for {lm.n_layers} layers")
            m = m.to(device)
            if arch.attention_interface:
                hooks.state(layer).blocked = m
            else:
                def rewrite_mask(module, args, kwargs, m=m, layer=layer):
                    h = layer_input(args, kwargs)
                    mask = merge_block_into_mask(kwargs.get("attention_mask"), m.to(h.device), h.shape[1], h.shape[1], layer)
                    return args, {**kwargs, "attention_mask": _as_additive(mask, h.dtype)}

                hooks.add(lm.sub(layer, arch.attention), rewrite_mask, "pre")

        # sublayer knockouts
        def select(sublayer, variant):
            def chosen(iv):
                if isinstance(iv, ZeroSublayer) and iv.sublayer == sublayer and iv.variant == variant:
                    return True if iv.positions is None else iv.positions
                return None
            return chosen

        def zero_output(module, args, output, mask):
            h = first_output(output)
            return replace_first_output(output, h.masked_fill(mask.to(h.device)[..., None], 0))

        for layer, mask in _positions_mask(batch, n_tokens, rows, select("attn", "zero"), device).items():
            hooks.add(lm.sub(layer, arch.attn_update), lambda m, a, o, mask=mask: zero_output(m, a, o, mask))
        for layer, mask in _positions_mask(batch, n_tokens, rows, select("mlp", "zero"), device).items():
            hooks.add(lm.sub(layer, arch.mlp_update), lambda m, a, o, mask=mask: zero_output(m, a, o, mask))
        for layer, mask in _positions_mask(batch, n_tokens, rows, select("mlp", "official"), device).items():
            def zero_coefficients(module, args, kwargs, mask=mask):
                h = args[0]
                return (h.masked_fill(mask.to(h.device)[..., None], 0), *args[1:]), kwargs

            hooks.add(lm.sub(layer, arch.mlp_out), zero_coefficients, "pre")
        edit_query = _zero_query(arch.query_layout, lm.config.hidden_size, lm.head_dim)
        for layer, mask in _positions_mask(batch, n_tokens, rows, select("attn", "official"), device).items():
            hooks.add(
                lm.sub(layer, arch.query),
                lambda m, a, o, mask=mask: replace_first_output(o, edit_query(first_output(o), mask.to(first_output(o).device))),
            )
        yield hooks
    finally:
        hooks.close()


def _install_capture(lm, hooks: _Hooks, capture: Capture, store: dict):
    arch = lm.arch
    layers = list(range(lm.n_layers)) if capture.layers is None else list(capture.layers)
    pos = capture.positions

    def take(x: Tensor) -> Tensor:
        x = x.detach()
        return x if pos is None else x[:, list(pos)]

    def put(name, layer, value):
        store.setdefault(name, {})[layer] = value.to(lm.device)

    for layer in layers:
        if capture.resid:
            hooks.add(lm.layers[layer],
                      lambda m, a, k, layer=layer: put("resid", layer, take(layer_input(a, k))), "pre")
            if layer == lm.n_layers - 1:
                hooks.add(lm.layers[layer],
                          lambda m, a, o, layer=layer: put("resid", layer + 1, take(first_output(o))))
        if capture.attn:
            hooks.add(lm.sub(layer, arch.attn_update), lambda m, a, o, layer=layer: put("attn", layer, take(first_output(o))))
        if capture.mlp:
            hooks.add(lm.sub(layer, arch.mlp_update), lambda m, a, o, layer=layer: put("mlp", layer, take(first_output(o))))
        if capture.heads:
            def heads(m, args, kwargs, layer=layer):
                z = take(args[0])
                put("heads", layer, z.view(*z.shape[:-1], lm.n_heads, -1))

            hooks.add(lm.sub(layer, arch.attn_out), heads, "pre")
        if capture.attn_weights or capture.values:
            def record(weights=None, values=None, layer=layer):
                if capture.attn_weights and weights is not None:
                    w = weights.detach()
                    put("attn_weights", layer, w if pos is None else w[:, :, list(pos)])
                if capture.values and values is not None:
                    put("values", layer, values.detach())

            if arch.attention_interface:
                hooks.state(layer).record = record
            elif capture.values and arch.value is None:
                raise NotImplementedError(
                    f"capturing values of {lm.config.model_type} needs its value projection in the registry")
            else:  # the model's own eager attention returns its probabilities; values come from v_proj
                if capture.attn_weights:
                    hooks.add(lm.sub(layer, arch.attention), lambda m, a, o, record=record: record(weights=o[1]))
                if capture.values:
                    def split_heads(m, a, o, record=record):  # (B, n, H*hd) -> (B, H, n, hd)
                        record(values=o.unflatten(-1, (lm.n_heads, -1)).transpose(1, 2))

                    hooks.add(lm.sub(layer, arch.value), split_heads)


def _stack(parts: dict[int, Tensor], batch: int) -> Tensor:
    tensors = [parts[k] for k in sorted(parts)]
    return torch.stack([t.expand(batch, *t.shape[1:]) for t in tensors], dim=1)


@torch.no_grad()
def run(
    lm,
    input_ids: Tensor | Sequence[int],
    rows: Sequence[Sequence[Intervention]] | None = None,
    capture: Capture | None = None,
    logits_to_keep: int = 1,
    share_prefix: bool = True,
) -> RunOutput:
    """One forward pass with per-row interventions.

    ``input_ids`` is one prompt (1, n) - every row then runs that prompt - or a batch
    (B, n) of equal-length prompts with one row of ``rows`` each. ``rows=None`` is one
    clean row. With one prompt and ``share_prefix``, the layers before the first
    intervened layer run once for the whole batch.
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.ndim == 1:
        ids = ids[None]
    rows = [[]] * ids.shape[0] if rows is None else [list(r) for r in rows]
    if ids.shape[0] not in (1, len(rows)):
        raise ValueError(f"{ids.shape[0]} prompts for {len(rows)} rows of interventions")
    expand_at = None
    if ids.shape[0] == 1 and len(rows) > 1:
        starts = [first_layer(r) for r in rows]
        start = 0 if (not share_prefix or None in starts) else min(starts)
        expand_at = start
    store: dict[str, dict[int, Tensor]] = {}
    with intervene(lm, rows, ids.shape[1], expand_at) as hooks:
        if capture is not None:
            _install_capture(lm, hooks, capture, store)
        out = lm.model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=logits_to_keep)
    acts = {name: _stack(parts, len(rows)) for name, parts in store.items()}
    return RunOutput(logits=out.logits.expand(len(rows), *out.logits.shape[1:]), acts=acts)


# --------------------------------------------------------------------------------------
# Interventions that only change the last position


@dataclass
class Prefix:
    """The clean keys and values of a prompt's positions before the last one (see
    :func:`clean_prefix`)."""

    input_ids: Tensor
    """(1, n) the whole prompt."""
    cache: object
    """transformers' cache after running positions 0..n-2."""


@torch.no_grad()
def clean_prefix(lm, input_ids: Tensor | Sequence[int]) -> Prefix:
    """Run every position but the last once, keeping their keys and values."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    if ids.shape[1] < 2:
        raise ValueError("a prompt needs at least two tokens to have a prefix")
    out = lm.model(input_ids=ids[:, :-1].to(lm.device), use_cache=True, logits_to_keep=1)
    return Prefix(ids, out.past_key_values)


def _only_last_query(rows, last: int) -> bool:
    return all(isinstance(iv, BlockAttention) and set(iv.queries) == {last} for row in rows for iv in row)


def _cache_for(prefix: Prefix, batch: int, expand_at: int):
    """A copy of the prefix cache whose layers from ``expand_at`` on hold ``batch`` rows.

    Each cache layer is copied shallowly: running the last token rebinds its tensors (it
    concatenates), so the prefix stays untouched for the next batch.
    """
    cache = copy.copy(prefix.cache)
    cache.layers = []
    for i, layer in enumerate(prefix.cache.layers):
        layer = copy.copy(layer)
        if i >= expand_at and layer.keys is not None:
            layer.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            layer.values = layer.values.expand(batch, *layer.values.shape[1:])
        cache.layers.append(layer)
    return cache


@torch.no_grad()
def run_last_position(
    lm,
    input_ids: Tensor | Sequence[int] | Prefix,
    rows: Sequence[Sequence[BlockAttention]],
    share_prefix: bool = True,
) -> RunOutput:
    """:func:`run` for attention knockouts whose only query is the last position.

    Blocking edges *from* the last position leaves every earlier position as in the clean
    run (causal attention: they never see the last one). So the earlier positions run once
    (:func:`clean_prefix`, reusable across calls by passing the :class:`Prefix`), and each
    row computes one token instead of n. A row with no intervention is the clean run.
    With ``share_prefix``, the last token also runs once through the layers before the
    earliest knocked-out layer. Same numbers as :func:`run` up to float rounding.
    Models whose attention does not use transformers' AttentionInterface (GPT-J) fall back
    to :func:`run`.
    """
    prefix = input_ids if isinstance(input_ids, Prefix) else None
    ids = prefix.input_ids if prefix else torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    rows = [list(r) for r in rows]
    n = ids.shape[1]
    if not _only_last_query(rows, n - 1):
        raise ValueError("run_last_position takes only BlockAttention whose queries are the last position")
    if not lm.arch.attention_interface or n < 2:
        return run(lm, ids, rows, share_prefix=share_prefix)
    prefix = prefix or clean_prefix(lm, ids)
    starts = [first_layer(r) for r in rows]
    start = min((s for s in starts if s is not None), default=lm.n_layers) if share_prefix else 0
    expand_at = start if len(rows) > 1 and start < lm.n_layers else None
    cache = _cache_for(prefix, len(rows), lm.n_layers if expand_at is None else expand_at)
    with intervene(lm, rows, n, expand_at):
        out = lm.model(input_ids=ids[:, -1:].to(lm.device), past_key_values=cache, use_cache=True,
                       logits_to_keep=1)
    return RunOutput(logits=out.logits.expand(len(rows), *out.logits.shape[1:]))
