"""Forward passes with per-row interventions, and what they capture.

:func:`run` runs one prompt (or a batch of equal-length prompts) once, each row of the batch
with its own interventions (:mod:`utils.core.interventions`), and captures hidden states,
sublayer updates, per-head outputs and attention weights at chosen positions.
:func:`run_last_position` is the fast path for knockouts whose only query is the last
position: the earlier positions run once and each row computes one token.
:func:`hidden_after` and :func:`attention_update_again` stop a pass as soon as what they
need is known.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .devices import execution_device
from .hooks import AttentionRead, Hooks, Read, with_layer_input
from .interventions import BlockAttention, Intervention, check_layers, first_layer, intervene
from .projection import final_logits

# --------------------------------------------------------------------------------------
# Capture and one pass


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
    calls: bool = False
    """Also keep, per layer, the (args, kwargs) the model called it with (to run it again)."""

    def install(self, lm, hooks: Hooks) -> Captured:
        """The hooks that read what was asked; the :class:`Captured` holds them until the pass is over."""
        arch = lm.arch
        layers = list(range(lm.n_layers)) if self.layers is None else list(self.layers)
        check_layers(layers, lm.n_layers)
        found = Captured(positions=None if self.positions is None else list(self.positions))
        for layer in layers:
            if self.calls:
                found.calls[layer] = hooks.read_call(lm.layers[layer])
            if self.resid:
                found.reads.setdefault("resid", {})[layer] = hooks.read_input(lm.layers[layer])
                if layer == lm.n_layers - 1:
                    found.reads["resid"][layer + 1] = hooks.read_output(lm.layers[layer])
            if self.attn:
                found.reads.setdefault("attn", {})[layer] = hooks.read_output(lm.sub(layer, arch.attn_update))
            if self.mlp:
                found.reads.setdefault("mlp", {})[layer] = hooks.read_output(lm.sub(layer, arch.mlp_update))
            if self.heads:
                found.reads.setdefault("heads", {})[layer] = hooks.read_first_arg(lm.sub(layer, arch.attn_out))
            if self.attn_weights or self.values:
                found.attention[layer] = hooks.read_attention(layer)
        found.n_heads, found.want_weights, found.want_values = lm.n_heads, self.attn_weights, self.values
        return found


@dataclass
class Captured:
    """The reads of one :class:`Capture`, turned into stacked tensors once the pass is over."""

    positions: list[int] | None
    reads: dict[str, dict[int, Read]] = field(default_factory=dict)
    attention: dict[int, AttentionRead] = field(default_factory=dict)
    calls: dict[int, Read] = field(default_factory=dict)
    n_heads: int = 0
    want_weights: bool = False
    want_values: bool = False

    def tensors(self, batch: int) -> dict[str, Tensor]:
        pos = self.positions
        parts: dict[str, dict[int, Tensor]] = {}
        for name, per_layer in self.reads.items():
            for layer, read in per_layer.items():
                x = read.value
                if name == "heads":
                    x = x.unflatten(-1, (self.n_heads, -1))
                parts.setdefault(name, {})[layer] = x if pos is None else x[:, pos]
        for layer, read in self.attention.items():
            if self.want_weights:
                parts.setdefault("attn_weights", {})[layer] = read.weights if pos is None else read.weights[:, :, pos]
            if self.want_values:
                parts.setdefault("values", {})[layer] = read.values
        return {name: _stack(per_layer, batch) for name, per_layer in parts.items()}


@dataclass
class RunOutput:
    logits: Tensor
    """(B, logits_to_keep, V) next-token logits of the last positions, as the model computed them."""
    acts: dict[str, Tensor] = field(default_factory=dict)
    final_hidden: Tensor | None = None
    """(B, d) the input of the output head at the last position, kept for models that do not
    run in float32 (see :meth:`probs`)."""
    lm: object = None
    calls: dict | None = None
    """With ``Capture(calls=True)``: layer -> the (args, kwargs) it was called with."""

    def probs(self) -> Tensor:
        """Next-token probabilities at the last position (B, V), in fp32.

        For a half-precision model they are computed in fp32 from the last hidden state (the
        head's weights in fp32): the model's own bf16 logits are rounded to 8 significant
        bits, which moves each probability by several percent and would make small relative
        changes rounding noise.
        """
        if self.final_hidden is None:
            return self.logits[:, -1].float().softmax(-1)
        return final_logits(self.lm, self.final_hidden).softmax(-1)


def _stack(parts: dict[int, Tensor], batch: int) -> Tensor:
    """Parts captured layer by layer (on each layer's device) as one (B, layers, ...) tensor."""
    tensors = [parts[k] for k in sorted(parts)]
    device = tensors[0].device
    return torch.stack([t.to(device).expand(batch, *t.shape[1:]) for t in tensors], dim=1)


def _final_hidden(lm, hooks: Hooks) -> Read | None:
    """The input of the output head, read for models that do not run in float32 (see
    :meth:`RunOutput.probs`)."""
    return hooks.read_first_arg(lm.unembedding) if lm.dtype != torch.float32 else None


def _output(lm, out, rows: int, final: Read | None, captured: Captured | None = None) -> RunOutput:
    hidden = None if final is None else final.value[:, -1].expand(rows, -1)
    return RunOutput(logits=out.logits.expand(rows, *out.logits.shape[1:]),
                     acts={} if captured is None else captured.tensors(rows), final_hidden=hidden, lm=lm,
                     calls=None if captured is None or not captured.calls else
                     {layer: read.value for layer, read in captured.calls.items()})


def max_positions(lm) -> int | None:
    """How many positions the model has (``max_position_embeddings`` / ``n_positions``), if it says."""
    if getattr(lm, "model", None) is None:  # a tokenizer-only LoadedModel (the data tests) has no config
        return None
    config = lm.text_config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_length(lm, n: int, what: str = "prompt") -> None:
    """A prompt longer than the model's positions, said as such (learned position embeddings
    otherwise fail with "IndexError: index out of range in self"; rotary ones go on silently
    outside what the model was trained on)."""
    limit = max_positions(lm)
    if limit is not None and n > limit:
        raise ValueError(f"The {what} has {n} tokens, more than the {limit} positions of {lm.name} "
                         f"(config.max_position_embeddings): shorten it or use a model with more positions.")


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
    check_length(lm, ids.shape[1])
    rows = [[]] * ids.shape[0] if rows is None else [list(r) for r in rows]
    if ids.shape[0] not in (1, len(rows)):
        raise ValueError(f"{ids.shape[0]} prompts for {len(rows)} rows of interventions")
    expand_at = None
    if ids.shape[0] == 1 and len(rows) > 1:
        if not lm.attention_access.prefix_cache:  # e.g. Bloom's ALiBi is built per batch row before layer 0
            ids = ids.expand(len(rows), -1)
        else:
            starts = [first_layer(r) for r in rows]
            expand_at = 0 if (not share_prefix or None in starts) else min(starts)
    with intervene(lm, rows, ids.shape[1], expand_at) as hooks:
        captured = None if capture is None else capture.install(lm, hooks)
        final = _final_hidden(lm, hooks)
        out = hooks.forward(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=logits_to_keep)
    return _output(lm, out, len(rows), final, captured)


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
def clean_prefix(lm, input_ids: Tensor | Sequence[int]) -> Prefix | Tensor:
    """Run every position but the last once, keeping their keys and values (for models
    whose attention access path supports a cached prefix; otherwise the prompt itself)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    check_length(lm, ids.shape[1])
    if not lm.attention_access.prefix_cache:
        return ids
    if ids.shape[1] < 2:
        raise ValueError("a prompt needs at least two tokens to have a prefix")
    out = lm.model(input_ids=ids[:, :-1].to(lm.device), use_cache=True, logits_to_keep=1)
    return Prefix(ids, out.cache)


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
    Models whose attention access path has no cached prefix (:class:`utils.core.attention.MaskHookAccess`)
    fall back to :func:`run`.
    """
    prefix = input_ids if isinstance(input_ids, Prefix) else None
    ids = prefix.input_ids if prefix else torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    rows = [list(r) for r in rows]
    n = ids.shape[1]
    if not _only_last_query(rows, n - 1):
        raise ValueError("run_last_position takes only BlockAttention whose queries are the last position")
    if not lm.attention_access.prefix_cache or n < 2:
        return run(lm, ids, rows, share_prefix=share_prefix)
    prefix = prefix or clean_prefix(lm, ids)
    starts = [first_layer(r) for r in rows]
    start = min((s for s in starts if s is not None), default=lm.n_layers) if share_prefix else 0
    expand_at = start if len(rows) > 1 and start < lm.n_layers else None
    cache = _cache_for(prefix, len(rows), lm.n_layers if expand_at is None else expand_at)
    with intervene(lm, rows, n, expand_at, pass_tokens=1) as hooks:
        final = _final_hidden(lm, hooks)
        out = hooks.forward(input_ids=ids[:, -1:].to(lm.device), cache=cache, use_cache=True, logits_to_keep=1)
    return _output(lm, out, len(rows), final)


# --------------------------------------------------------------------------------------
# Passes stopped once the answer is known


@torch.no_grad()
def hidden_after(lm, input_ids, rows, layer: int, position: int) -> Tensor:
    """``hidden_states[layer + 1]`` (the output of block ``layer``) at ``position`` for every
    row of interventions (B, d). Layers after ``layer`` and the head are never run, and the
    layers before the first intervened one run once for all rows."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    starts = [first_layer(r) for r in rows]
    expand_at = 0 if None in starts else min(starts)
    with intervene(lm, rows, ids.shape[1], expand_at=expand_at) as hooks:
        out = hooks.read_output(lm.layers[layer])
        hooks.stop_after(lm.layers[layer])
        hooks.forward(input_ids=ids.to(lm.device), use_cache=False)
    return out.value[:, position]


def attention_update_again(lm, call: tuple, layer: int, hidden: Tensor) -> Tensor:
    """The attention update at the last position when layer ``layer`` receives ``hidden``
    (B, n, d) instead of its clean input: the layer alone is called again with the
    arguments ``call`` the model gave it in a clean pass (``RunOutput.calls[layer]``), and
    stopped once the update is known, so a patch at layer l costs one attention sublayer,
    not a forward pass."""
    if not lm.attention_access.prefix_cache and hidden.shape[0] > 1:
        # such families build batch-shaped inputs of their layers once per pass (Bloom's ALiBi): one row at a time
        return torch.cat([attention_update_again(lm, call, layer, h[None]) for h in hidden])
    args, kwargs = call
    block, update = lm.layers[layer], lm.sub(layer, lm.arch.attn_update)
    args, kwargs = with_layer_input(args, kwargs, hidden.to(execution_device(block), lm.dtype))
    with Hooks(lm, hidden.shape[1]) as hooks:
        found = hooks.read_output(update)
        hooks.stop_after(update)
        hooks.call(block, *args, **kwargs)
    return found.value[:, -1].float()


__all__ = ["Capture", "Captured", "Prefix", "RunOutput", "attention_update_again", "check_length", "clean_prefix",
           "hidden_after", "max_positions", "run", "run_last_position"]
