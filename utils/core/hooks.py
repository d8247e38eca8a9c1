"""The one hook layer every analysis uses.

In the spirit of baukit's ``Trace``/``TraceDict``: a context manager that reads or edits a
module's input or output, or stops the forward pass after a module, and removes everything
it installed on exit. Interventions (:mod:`utils.core.interventions`) and the attention access paths
(:mod:`utils.core.attention`) install themselves through it; no analysis registers a hook of
its own. State that one forward pass needs (the edits of each attention module) lives on the
:class:`Hooks` object, never on transformers' objects, and what a pass reads comes back in a
:class:`Read` holder the caller keeps.

Two things make hooks on real models subtle, and are handled here once:

* Modules return a tensor or a tuple whose first element is the tensor (versions and
  families differ), and some families call a sublayer on a flattened ``(B * n, d)`` tensor
  (OPT's MLP): :meth:`Hooks.edit_output` hands ``fn`` a ``(B, n, d)`` view either way.
* Weights offloaded by accelerate (CPU or disk offload) are loaded when a module runs and
  put back afterwards by accelerate's own hooks. A forward pass stopped early skips that
  step for the modules it interrupted; :meth:`Hooks.forward` puts their weights back.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


class StopForward(Exception):
    """Raised after the module given to :meth:`Hooks.stop_after`: the rest of the model never runs."""


@dataclass
class Read:
    """What a read hook saw during the last pass: ``value`` is None until the module has run.
    A module that runs several times in one pass (a shared block) keeps its last value."""

    value: object = None


@dataclass
class AttentionRead:
    """The attention probabilities (B, H, q, k) and value vectors (B, H_kv, k, head_dim) one
    attention module saw in a pass, as the access path of the model found them."""

    weights: Tensor | None = None
    values: Tensor | None = None


@dataclass
class AttentionEdit:
    """What one forward pass does to one attention module."""

    blocked: Tensor | None = None
    """(B, n, n) True = the edge query -> key is removed."""
    uniform: Tensor | None = None
    """(B, n) True = this query attends uniformly (its query vector is zeroed)."""
    read: AttentionRead | None = None
    """Where the probabilities and values are put, when someone asked for them."""
    record_empty: object = None
    """Set by the access path: takes the (B, 1, q) rows a block left without any key."""


ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("dissect_active_attention", default=None)
"""The attention edits of the forward pass being run: ``{attention module: AttentionEdit}``,
read by the attention functions registered with transformers (:mod:`utils.core.attention`)."""


def first_output(output):
    """A module's main output, whether it returns a tensor or a tuple (versions differ)."""
    return output[0] if isinstance(output, tuple) else output


def replace_first_output(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def layer_input(args, kwargs):
    """The hidden states a module was called with (positionally or by keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def with_layer_input(args, kwargs, new):
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def put_back_offloaded(model: torch.nn.Module) -> None:
    """Return the weights of every offloaded module left loaded by an interrupted forward pass
    to accelerate's offload (what its post-forward step would have done)."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "offload", False) and any(
                t.device.type != "meta" for t in module.parameters(recurse=False)):
            hook.post_forward(module, None)


def _as_bnd(x: Tensor, n_tokens: int | None) -> tuple[Tensor, tuple | None]:
    """``x`` as (B, n, d): a flattened (B * n, d) tensor is viewed back (and its shape kept)."""
    if x.ndim == 2 and n_tokens:
        return x.view(-1, n_tokens, x.shape[-1]), x.shape
    return x, None


class Hooks:
    """Hooks for one forward pass of ``lm``; a context manager that removes them on exit.

    ``n_tokens`` is the sequence length of the pass (to unflatten (B * n, d) tensors).
    What ``read_*`` returns holds a clone, so a model that later changes the tensor in place
    (Falcon adds its attention output into its MLP output) cannot change what was read.
    """

    def __init__(self, lm, n_tokens: int | None = None):
        self.lm = lm
        self.n_tokens = n_tokens
        self.handles: list = []
        self.attention_edits: dict[int, AttentionEdit] = {}
        """layer -> its :class:`AttentionEdit`, installed by the model's attention access path
        when the pass starts."""
        self.checks: list[Callable[[], None]] = []
        """Run after the pass (e.g. a knockout that emptied a query row is reported once, with a
        single device synchronisation, instead of once per layer)."""
        self._token = None

    # ---- reading and editing ------------------------------------------------------------

    def on_input(self, module, fn: Callable) -> None:
        """``fn(module, args, kwargs)`` before ``module`` runs; may return new ``(args, kwargs)``."""
        self.handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def on_output(self, module, fn: Callable) -> None:
        """``fn(module, args, output)`` after ``module`` runs; may return a new output."""
        self.handles.append(module.register_forward_hook(fn))

    def edit_input(self, module, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace the hidden states ``module`` is called with by ``fn(hidden)``."""
        self.on_input(module, lambda m, args, kwargs: with_layer_input(args, kwargs, fn(layer_input(args, kwargs))))

    def edit_first_arg(self, module, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace the first positional input of ``module`` (a (B, n, d) view) by ``fn(x)``."""
        def hook(m, args, kwargs):
            x, flat = _as_bnd(args[0], self.n_tokens)
            new = fn(x)
            return (new.reshape(flat) if flat else new, *args[1:]), kwargs

        self.on_input(module, hook)

    def edit_output(self, module, fn: Callable[[Tensor], Tensor]) -> None:
        """Replace ``module``'s main output by ``fn(output)`` (a (B, n, d) view)."""
        def hook(m, args, output):
            x, flat = _as_bnd(first_output(output), self.n_tokens)
            new = fn(x)
            return replace_first_output(output, new.reshape(flat) if flat else new)

        self.on_output(module, hook)

    def read_input(self, module) -> Read:
        """The hidden states ``module`` is called with, as (B, n, d), cloned."""
        return self._read(module, lambda args, kwargs: layer_input(args, kwargs), before=True)

    def read_first_arg(self, module) -> Read:
        """The first positional input of ``module``, as (B, n, d), cloned."""
        return self._read(module, lambda args, kwargs: args[0], before=True)

    def read_output(self, module) -> Read:
        """``module``'s main output, as (B, n, d), cloned."""
        return self._read(module, lambda args, output: first_output(output), before=False)

    def read_call(self, module) -> Read:
        """The ``(args, kwargs)`` ``module`` is called with (to call it again later)."""
        found = Read()

        def keep(m, args, kwargs):
            found.value = (args, kwargs)

        self.on_input(module, keep)
        return found

    def _read(self, module, pick, before: bool) -> Read:
        found = Read()

        def keep(m, args, second):
            found.value = _as_bnd(pick(args, second), self.n_tokens)[0].detach().clone()

        if before:
            self.on_input(module, keep)
        else:
            self.on_output(module, keep)
        return found

    def read_attention(self, layer: int) -> AttentionRead:
        """The attention probabilities and values of layer ``layer`` in this pass."""
        edit = self.attention(layer)
        if edit.read is None:
            edit.read = AttentionRead()
        return edit.read

    def stop_after(self, module) -> None:
        """End the forward pass once ``module`` has run."""
        def stop(m, args, output):
            raise StopForward

        self.on_output(module, stop)

    def attention(self, layer: int):
        """The edit of layer ``layer``'s attention for this pass (created on first use)."""
        if layer not in self.attention_edits:
            if not 0 <= layer < self.lm.n_layers:
                raise ValueError(f"layer {layer} out of range for {self.lm.n_layers} layers")
            self.attention_edits[layer] = AttentionEdit()
        return self.attention_edits[layer]

    # ---- running ------------------------------------------------------------------------

    def forward(self, **inputs):
        """Run the model; returns its output, or None when a :meth:`stop_after` ended the pass."""
        return self.call(self.lm.model, **inputs)

    def call(self, module, *args, **kwargs):
        """Run ``module`` (the model, or one of its layers) with these hooks."""
        access = self.lm.attention_access
        active = {}
        for layer, edit in self.attention_edits.items():
            access.install(self.lm, self, layer, edit, active)
        self._token = ACTIVE.set(active)
        try:
            out = module(*args, **kwargs)
        except StopForward:
            put_back_offloaded(self.lm.model)
            out = None
        finally:
            ACTIVE.reset(self._token)
            self._token = None
        for check in self.checks:
            check()
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


__all__ = [
    "ACTIVE", "AttentionEdit", "AttentionRead", "Hooks", "Read", "StopForward", "first_output", "layer_input",
    "put_back_offloaded", "replace_first_output", "with_layer_input",
]
