"""Reading hidden vectors as distributions over the vocabulary.

Two modes:

* ``"paper"`` - what the official code does: multiply by the token embedding matrix,
  with no final norm and no bias (ranking only). We use the model's *output* embedding
  (unembedding) matrix: for GPT-2 and other tied models it is the same matrix, so this
  is exactly the official computation; for untied models (GPT-J's ``lm_head``,
  Pythia's ``embed_out``, many Llamas) it is the matrix that maps the residual stream
  to tokens, where the input embedding would not be. ``matrix="input"`` reproduces the
  official code literally for untied models.
* ``"logit_lens"`` - the final norm, then the output head (with its bias and any final
  logit soft-capping): the model's own readout applied to an intermediate state.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODES = ("paper", "logit_lens")


def project(lm, vectors: Tensor, mode: str = "paper", matrix: str = "output") -> Tensor:
    """Vocabulary scores (..., V) of vectors (..., d), in fp32."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "logit_lens":
        head = lm.unembedding
        x = lm.final_norm(vectors.to(head.weight.device, head.weight.dtype))
        logits = head(x).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits
    weight = (lm.model.get_input_embeddings() if matrix == "input" else lm.unembedding).weight
    return vectors.to(weight.device, weight.dtype).float() @ weight.float().T


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
    tokenizer = lm.tokenizer
    if getattr(tokenizer, "_dissect_vocab", None) is None:
        size = lm.unembedding.weight.shape[0]
        tokenizer._dissect_vocab = tuple(tokenizer.batch_decode([[i] for i in range(size)]))
    return tokenizer._dissect_vocab


def decode_ids(lm, ids) -> list:
    """Token strings for a (nested) list or tensor of ids."""
    vocab = vocabulary(lm)
    ids = ids.tolist() if isinstance(ids, Tensor) else ids
    if isinstance(ids, int):
        return vocab[ids]
    return [decode_ids(lm, i) for i in ids]
