"""Reading hidden vectors as distributions over the vocabulary.

Two modes:

* ``"paper"`` - what the official code does: multiply by the token embedding matrix,
  with no final norm and no bias (ranking only). We use the model's *output* embedding
  (unembedding) matrix: for GPT-2 and other tied models it is the same matrix, so this
  is exactly the official computation; for untied models (GPT-J's ``lm_head``,
  Pythia's ``embed_out``, many Llamas) it is the matrix that maps the residual stream
  to tokens, where the input embedding would not be. ``matrix="input"`` reproduces the
  official computation literally for untied models.
* ``"logit_lens"`` - the final norm, then the output head (with its bias, any final
  logit soft-capping and logit scale): the model's own readout applied to an
  intermediate state.

Scores are computed in float32 whatever the model's dtype, a slice of the vocabulary at a
time (a half-precision model's unembedding is never copied to float32 whole), from the
weights where they actually are: with accelerate's offload, through its own hooks.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
import torch.nn.functional as F
from accelerate.utils import align_module_device
from torch import Tensor

from .devices import execution_device

MODES = ("paper", "logit_lens")
CHUNK = 32768
"""Vocabulary rows converted to float32 at a time."""


@contextlib.contextmanager
def module_weights(module: torch.nn.Module):
    """``(weight, bias)`` of a linear or embedding module, on its execution device, for the
    duration of the block (accelerate loads offloaded weights and puts them back after)."""
    with align_module_device(module):
        yield module.weight, getattr(module, "bias", None)


def fp32_scores(vectors: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``vectors @ weight.T + bias`` in float32 (..., V), a slice of rows of ``weight`` at a time
    (for a float32 model, exactly the model's own ``F.linear``)."""
    x = vectors.to(weight.device).float()
    if weight.dtype == torch.float32:
        return F.linear(x, weight, bias)
    biases = bias.split(CHUNK) if bias is not None else itertools.repeat(None)
    parts = [F.linear(x, w.float(), None if b is None else b.float()) for w, b in zip(weight.split(CHUNK), biases)]
    return torch.cat(parts, dim=-1)


def _finish_logits(lm, logits: Tensor) -> Tensor:
    """What a family's head does after the matrix product (monotone: it never changes a ranking)."""
    config = lm.text_config
    scale = getattr(config, "logit_scale", None)
    if scale:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def final_logits(lm, hidden: Tensor) -> Tensor:
    """Next-token logits (..., V) in float32 from the input of the output head."""
    with module_weights(lm.unembedding) as (weight, bias):
        return _finish_logits(lm, fp32_scores(hidden, weight, bias))


def normed(lm, vectors: Tensor) -> Tensor:
    """The final norm applied to residual-stream vectors (in the model's dtype, on its device)."""
    norm = lm.final_norm
    return norm(vectors.to(execution_device(norm), lm.dtype))


def project(lm, vectors: Tensor, mode: str = "paper", matrix: str = "output") -> Tensor:
    """Vocabulary scores (..., V) of vectors (..., d), in fp32."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "logit_lens":
        return final_logits(lm, normed(lm, vectors))
    module = lm.model.get_input_embeddings() if matrix == "input" else lm.unembedding
    with module_weights(module) as (weight, _):  # the official product, no bias, no norm
        x = vectors.to(weight.device).float()
        if weight.dtype == torch.float32:
            return x @ weight.T
        return torch.cat([x @ part.float().T for part in weight.split(CHUNK)], dim=-1)


def top_tokens(lm, vectors: Tensor, k: int, mode: str = "paper") -> Tensor:
    """Ids of the ``k`` highest-scoring tokens (..., k), computed on the model's device."""
    return project(lm, vectors, mode).topk(k, dim=-1).indices


def token_ranks(scores: Tensor, token_ids: Tensor | int) -> Tensor:
    """0-based rank of ``token_ids`` in ``scores`` (..., V); 0 means top-1."""
    ids = torch.as_tensor(token_ids, device=scores.device)
    ids = ids.expand(scores.shape[:-1]) if ids.ndim == 0 else ids
    target = scores.gather(-1, ids[..., None])
    return (scores > target).sum(-1)


def vocabulary(lm) -> tuple[str, ...]:
    """Every token id decoded once (as a string with its leading space), for fast lookup."""
    if "vocab" not in lm.cache:
        size = lm.unembedding.weight.shape[0]
        lm.cache["vocab"] = tuple(lm.tokenizer.batch_decode([[i] for i in range(size)]))
    return lm.cache["vocab"]


def decode_ids(lm, ids) -> list:
    """Token strings for a (nested) list or tensor of ids."""
    vocab = vocabulary(lm)
    ids = ids.tolist() if isinstance(ids, Tensor) else ids
    if isinstance(ids, int):
        return vocab[ids]
    return [decode_ids(lm, i) for i in ids]
