"""Batched interventions on a causal LM's forward pass.

Each row of a batch carries its own list of interventions, so many configurations of
one prompt (different layer windows, different blocked positions) run in one forward
pass. The interventions are the paper's:

* :class:`BlockAttention` - attention knockout: remove edges query -> key at chosen
  layers, for all heads, by merging the block into whatever mask the model built
  (None, boolean or additive; causal or sliding-window), through the model's attention
  back-end (:mod:`utils.attention`), so it is the same operation under eager and sdpa.
* :class:`ZeroSublayer` - knock out the attention or MLP update of chosen layers,
  either zeroed (default) or the official code's variants (``variant="official"``):
  MLP coefficients zeroed so the output projection's bias remains, and attention made
  uniform over the visible positions (what adding ``finfo.min`` to every score does in
  fp32), implemented by zeroing the queries.
* :class:`PatchHidden` - overwrite the residual stream entering a layer at chosen
  positions.

Each kind installs itself for a whole batch (``install``): its masks are built once per
batch, on the model's device, from flat index lists, so a batch of hundreds of rows costs
a few tensor operations on the host and no device synchronisation per layer.
:func:`run` also captures hidden states, sublayer updates, per-head outputs and
attention weights at chosen positions.
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor

from .hooks import Hooks


def _as_tuple(x) -> tuple[int, ...] | None:
    if x is None:
        return None
    if isinstance(x, int):
        return (x,)
    return tuple(int(i) for i in x)


def _check_layers(layers: Iterable[int], n_layers: int) -> None:
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range for {n_layers} layers")


def _check_positions(positions: Iterable[int], n: int, what: str) -> None:
    for p in positions:
        if not 0 <= p < n:
            raise ValueError(f"{what} position {p} out of range for a prompt of {n} tokens")


@functools.lru_cache(maxsize=8192)
def _flat_pairs(queries: tuple[int, ...], keys: tuple[int, ...], n: int) -> tuple[int, ...]:
    _check_positions(queries, n, "query")
    _check_positions(keys, n, "key")
    return tuple(q * n + k for q in queries for k in keys)


def _flags(size: int, flat: list[int], device) -> Tensor:
    """A flat bool tensor with ``flat`` set, built with one host-to-device copy."""
    out = torch.zeros(size, dtype=torch.bool, device=device)
    if flat:
        out[torch.tensor(flat, device=device)] = True
    return out


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

    @staticmethod
    def install(lm, hooks: Hooks, rows: list[list[BlockAttention]], n: int) -> None:
        """Blocked-edge masks for every layer a row blocks: (B, n, n) per layer, made from a
        (terms, B, n, n) edge mask and a (terms, B, L) layer mask on the device."""
        batch, n_layers = len(rows), lm.n_layers
        terms = max(len(r) for r in rows)
        edges, layers, used = [], [], set()
        for b, row in enumerate(rows):
            for t, iv in enumerate(row):
                base = t * batch + b
                edges.extend(base * n * n + i for i in _flat_pairs(iv.queries, iv.keys, n))
                _check_layers(iv.layers, n_layers)
                layers.extend(base * n_layers + layer for layer in iv.layers)
                used.update(iv.layers)
        device = lm.device
        qk = _flags(terms * batch * n * n, edges, device).view(terms, batch, n, n)
        on = _flags(terms * batch * n_layers, layers, device).view(terms, batch, n_layers)
        for layer in sorted(used):
            blocked = (qk & on[:, :, layer, None, None]).any(0)
            edit = hooks.attention(layer)
            edit.blocked = blocked if edit.blocked is None else edit.blocked | blocked


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

    @staticmethod
    def install(lm, hooks: Hooks, rows: list[list[ZeroSublayer]], n: int) -> None:
        batch, n_layers, arch = len(rows), lm.n_layers, lm.arch
        kinds: dict[tuple[str, str], tuple[list[int], set[int]]] = {}
        for b, row in enumerate(rows):
            for iv in row:
                flat, used = kinds.setdefault((iv.sublayer, iv.variant), ([], set()))
                positions = range(n) if iv.positions is None else iv.positions
                _check_positions(positions, n, "ZeroSublayer")
                _check_layers(iv.layers, n_layers)
                for layer in iv.layers:
                    base = (b * n_layers + layer) * n
                    flat.extend(base + p for p in positions)
                used.update(iv.layers)
        for (sublayer, variant), (flat, used) in kinds.items():
            masks = _flags(batch * n_layers * n, flat, lm.device).view(batch, n_layers, n)
            for layer in sorted(used):
                mask = masks[:, layer]
                if variant == "zero":
                    path = arch.attn_update if sublayer == "attn" else arch.mlp_update
                    hooks.edit_output(lm.sub(layer, path), functools.partial(_zero_at, mask=mask))
                elif sublayer == "mlp":
                    if arch.mlp_out is None:
                        raise NotImplementedError(
                            f"{lm.config.model_type} has no single MLP output projection (registry field `mlp_out`): "
                            "the official MLP knockout (hidden units set to 0) does not apply; use variant='zero'.")
                    hooks.edit_first_arg(lm.sub(layer, arch.mlp_out), functools.partial(_zero_at, mask=mask))
                else:
                    edit = hooks.attention(layer)
                    edit.uniform = mask if edit.uniform is None else edit.uniform | mask


def _zero_at(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` (B, q, d) with the positions ``mask`` (B, n) marks set to 0 (the last q of them)."""
    return x.masked_fill(mask[:, -x.shape[1]:, None].to(x.device), 0)


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

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    @staticmethod
    def install(lm, hooks: Hooks, rows: list[list[PatchHidden]], n: int) -> None:
        batch, device = len(rows), lm.device
        patches: dict[int, tuple[Tensor, Tensor]] = {}
        for b, row in enumerate(rows):
            for iv in row:
                _check_layers([iv.layer], lm.n_layers)
                _check_positions(iv.positions, n, "PatchHidden")
                mask, values = patches.setdefault(iv.layer, (
                    torch.zeros(batch, n, dtype=torch.bool, device=device),
                    torch.zeros(batch, n, lm.config.hidden_size, dtype=lm.dtype, device=device)))
                index = torch.tensor(iv.positions, device=device)
                mask[b, index] = True
                values[b, index] = iv.vectors.to(device, lm.dtype)
        for layer, (mask, values) in patches.items():
            hooks.edit_input(lm.layers[layer], lambda h, mask=mask, values=values: torch.where(
                mask.to(h.device)[..., None], values.to(h.device, h.dtype), h))


Intervention = BlockAttention | ZeroSublayer | PatchHidden
KINDS = (PatchHidden, BlockAttention, ZeroSublayer)


def window(center: int, size: int, n_layers: int) -> tuple[int, ...]:
    """The official code's window of ``size`` layers around ``center`` (clipped to the
    model; asymmetric for even sizes: 10 around 20 is 15..24)."""
    return tuple(range(max(0, center - size // 2), min(n_layers, center - (-size // 2))))


def first_layer(interventions: Iterable[Intervention]) -> int | None:
    """The earliest layer an intervention touches (None for none)."""
    layers = [min(iv.layers) for iv in interventions if iv.layers]
    return min(layers) if layers else None


HOST_SECONDS = [0.0]
"""Time spent building interventions on the host (installing them for a batch), summed
over the process; :mod:`utils.bench` reports its share of a sweep."""


def intervene(lm, rows: Sequence[Sequence[Intervention]], n_tokens: int, expand_at: int | None = None,
              pass_tokens: int | None = None) -> Hooks:
    """The hooks for a batch whose row ``b`` carries ``rows[b]``, over a prompt of
    ``n_tokens`` positions (``pass_tokens`` of which run in this pass: the last ones).

    ``expand_at``: when the input has one row, the layers before ``expand_at`` run once
    and their output is repeated for every row (all rows share that computation).
    """
    started = time.perf_counter()
    hooks = Hooks(lm, pass_tokens or n_tokens)
    batch = len(rows)
    if expand_at is not None:
        hooks.edit_input(lm.layers[expand_at], lambda h: h.expand(batch, *h.shape[1:]).contiguous())
    for kind in KINDS:
        chosen = [[iv for iv in row if isinstance(iv, kind)] for row in rows]
        if any(chosen):
            kind.install(lm, hooks, chosen, n_tokens)
    HOST_SECONDS[0] += time.perf_counter() - started
    return hooks


# --------------------------------------------------------------------------------------
# Capture


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

    def install(self, lm, hooks: Hooks, store: dict) -> None:
        arch = lm.arch
        layers = list(range(lm.n_layers)) if self.layers is None else list(self.layers)
        _check_layers(layers, lm.n_layers)
        pos = None if self.positions is None else list(self.positions)

        def put(name, layer):
            def keep(x: Tensor) -> None:
                store.setdefault(name, {})[layer] = x if pos is None else x[:, pos]
            return keep

        for layer in layers:
            if self.calls:
                hooks.on_input(lm.layers[layer], lambda m, args, kwargs, layer=layer: store.setdefault(
                    "calls", {}).__setitem__(layer, (args, kwargs)))
            if self.resid:
                hooks.read_input(lm.layers[layer], put("resid", layer))
                if layer == lm.n_layers - 1:
                    hooks.read_output(lm.layers[layer], put("resid", layer + 1))
            if self.attn:
                hooks.read_output(lm.sub(layer, arch.attn_update), put("attn", layer))
            if self.mlp:
                hooks.read_output(lm.sub(layer, arch.mlp_update), put("mlp", layer))
            if self.heads:
                heads = put("heads", layer)
                hooks.read_first_arg(lm.sub(layer, arch.attn_out), lambda z, heads=heads: heads(
                    z.unflatten(-1, (lm.n_heads, -1))))
            if self.attn_weights or self.values:
                def record(weights=None, values=None, layer=layer):
                    if self.attn_weights:
                        w = weights.detach()
                        store.setdefault("attn_weights", {})[layer] = w if pos is None else w[:, :, pos]
                    if self.values:
                        store.setdefault("values", {})[layer] = values.detach()

                hooks.attention(layer).record.append(record)


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
        from .projection import final_logits

        return final_logits(self.lm, self.final_hidden).softmax(-1)


def _stack(parts: dict[int, Tensor], batch: int) -> Tensor:
    """Parts captured layer by layer (on each layer's device) as one (B, layers, ...) tensor."""
    tensors = [parts[k] for k in sorted(parts)]
    device = tensors[0].device
    return torch.stack([t.to(device).expand(batch, *t.shape[1:]) for t in tensors], dim=1)


def _read_final_hidden(lm, hooks: Hooks, store: dict) -> None:
    if lm.dtype != torch.float32:
        hooks.read_first_arg(lm.unembedding, lambda h: store.__setitem__("final", h[:, -1]))


def _output(lm, out, rows: int, store: dict) -> RunOutput:
    final, calls = store.pop("final", None), store.pop("calls", None)
    acts = {name: _stack(parts, rows) for name, parts in store.items()}
    return RunOutput(logits=out.logits.expand(rows, *out.logits.shape[1:]), acts=acts,
                     final_hidden=None if final is None else final.expand(rows, -1), lm=lm, calls=calls)


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
        if not lm.attention_backend.prefix_cache:  # e.g. Bloom's ALiBi is built per batch row before layer 0
            ids = ids.expand(len(rows), -1)
        else:
            starts = [first_layer(r) for r in rows]
            expand_at = 0 if (not share_prefix or None in starts) else min(starts)
    store: dict = {}
    with intervene(lm, rows, ids.shape[1], expand_at) as hooks:
        if capture is not None:
            capture.install(lm, hooks, store)
        _read_final_hidden(lm, hooks, store)
        out = hooks.forward(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=logits_to_keep)
    return _output(lm, out, len(rows), store)


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
    whose attention back-end supports a cached prefix; otherwise the prompt itself)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    if not lm.attention_backend.prefix_cache:
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
    Models whose attention back-end has no cached prefix (:class:`utils.attention.MaskHookBackend`)
    fall back to :func:`run`.
    """
    prefix = input_ids if isinstance(input_ids, Prefix) else None
    ids = prefix.input_ids if prefix else torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    rows = [list(r) for r in rows]
    n = ids.shape[1]
    if not _only_last_query(rows, n - 1):
        raise ValueError("run_last_position takes only BlockAttention whose queries are the last position")
    if not lm.attention_backend.prefix_cache or n < 2:
        return run(lm, ids, rows, share_prefix=share_prefix)
    prefix = prefix or clean_prefix(lm, ids)
    starts = [first_layer(r) for r in rows]
    start = min((s for s in starts if s is not None), default=lm.n_layers) if share_prefix else 0
    expand_at = start if len(rows) > 1 and start < lm.n_layers else None
    cache = _cache_for(prefix, len(rows), lm.n_layers if expand_at is None else expand_at)
    store: dict = {}
    with intervene(lm, rows, n, expand_at, pass_tokens=1) as hooks:
        _read_final_hidden(lm, hooks, store)
        out = hooks.forward(input_ids=ids[:, -1:].to(lm.device), cache=cache, use_cache=True, logits_to_keep=1)
    return _output(lm, out, len(rows), store)


__all__ = [
    "BlockAttention", "Capture", "HOST_SECONDS", "Intervention", "PatchHidden", "Prefix", "RunOutput", "ZeroSublayer",
    "clean_prefix", "first_layer", "intervene", "run", "run_last_position", "window",
]
