"""Batched interventions on a causal LM's forward pass.

Each row of a batch carries its own list of interventions, so many configurations of
one prompt (different layer windows, different blocked positions) run in one forward
pass. The interventions are the paper's:

* :class:`BlockAttention` - attention knockout: remove edges query -> key at chosen
  layers, for all heads, by merging the block into whatever mask the model built
  (None, boolean or additive; causal or sliding-window), through the model's attention
  access path (:mod:`utils.core.attention`), so it is the same operation under eager and sdpa.
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
:func:`utils.core.forward.run` runs them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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


def check_layers(layers: Iterable[int], n_layers: int) -> None:
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
                check_layers(iv.layers, n_layers)
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
                check_layers(iv.layers, n_layers)
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
                check_layers([iv.layer], lm.n_layers)
                _check_positions(iv.positions, n, "PatchHidden")
                mask, values = patches.setdefault(iv.layer, (
                    torch.zeros(batch, n, dtype=torch.bool, device=device),
                    torch.zeros(batch, n, lm.text_config.hidden_size, dtype=lm.dtype, device=device)))
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


def intervene(lm, rows: Sequence[Sequence[Intervention]], n_tokens: int, expand_at: int | None = None,
              pass_tokens: int | None = None) -> Hooks:
    """The hooks for a batch whose row ``b`` carries ``rows[b]``, over a prompt of
    ``n_tokens`` positions (``pass_tokens`` of which run in this pass: the last ones).

    ``expand_at``: when the input has one row, the layers before ``expand_at`` run once
    and their output is repeated for every row (all rows share that computation).
    """
    hooks = Hooks(lm, pass_tokens or n_tokens)
    batch = len(rows)
    if expand_at is not None:
        hooks.edit_input(lm.layers[expand_at], lambda h: h.expand(batch, *h.shape[1:]).contiguous())
    for kind in KINDS:
        chosen = [[iv for iv in row if isinstance(iv, kind)] for row in rows]
        if any(chosen):
            kind.install(lm, hooks, chosen, n_tokens)
    return hooks


__all__ = ["BlockAttention", "Intervention", "PatchHidden", "ZeroSublayer", "check_layers", "first_layer", "intervene",
           "window"]
