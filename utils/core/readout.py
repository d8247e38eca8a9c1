"""Whether a vector's vocabulary projection ranks a token first, fast and exact.

The paper's extraction test asks, for hundreds of vectors per fact, whether the projection to
the vocabulary (up to 262k tokens) ranks the model's prediction first. :func:`ranked_first`
answers exactly as float32 does, but settles most vectors from a shortlist of likely winners
and screens the rest in bfloat16 with a proven error bound.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import Tensor

from .projection import module_weights, normed


@functools.cache
def _bf16_is_fast(device_type: str) -> bool:
    """Whether a bf16 matrix product clearly beats float32 here: on GPUs, and on CPUs with
    bf16 units (elsewhere bf16 is emulated and slower). The answers of :func:`ranked_first`
    are the same either way; only its speed depends on this."""
    if device_type != "cpu":
        return True

    def best(a, b):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    # small enough to cost under a second where bf16 is emulated (about 1 GFLOP/s on such a CPU: the
    # former 128 x 1024 x 16384 probe took 40 s, once in every process that ranks anything)
    a, b = torch.randn(64, 512), torch.randn(512, 4096)
    return best(a.bfloat16(), b.bfloat16()) < 0.6 * best(a, b)


def _unembedding_bf16(lm, weight: Tensor) -> tuple[Tensor, float]:
    """The unembedding in bf16 and its largest row norm, kept in ``lm.cache`` while the
    weights are unchanged."""
    stamp = (weight.data_ptr(), weight._version)
    cached = lm.cache.get("unembedding_bf16")
    if cached is None or cached[0] != stamp:
        cached = (stamp, weight.detach().bfloat16(), float(weight.detach().float().norm(dim=-1).max()))
        lm.cache["unembedding_bf16"] = cached
    return cached[1], cached[2]


def readout(lm, vectors: Tensor, mode: str, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The vectors the vocabulary scores are a linear function of, and the output bias:
    ``"paper"`` scores ``E v`` (no final norm, as the official code); ``"logit_lens"``
    scores the model's own head on ``final_norm(v)`` (its final soft-capping or logit
    scale, if any, is monotone and changes no ranking). ``bias`` is the head's own."""
    if mode == "paper":
        return vectors.float(), None
    if mode != "logit_lens":
        raise ValueError("mode must be 'paper' or 'logit_lens'")
    return normed(lm, vectors).float(), None if bias is None else bias.float()


@torch.no_grad()
def ranked_first(lm, vectors: Tensor, targets, mode: str = "paper", shortlist=None, screen: bool | None = None,
                 chunk: int = 256) -> Tensor:
    """Whether each vector's vocabulary projection ranks its target token strictly above
    every other token (a zero vector ranks nothing first); ``mode`` as in
    :func:`utils.core.projection.project`.

    The analyses test hundreds of vectors per fact against vocabularies of up to 262k
    tokens, and most of them do not rank the target first. So the tokens of ``shortlist``
    (likely winners, e.g. the top tokens of related vectors) are scored first, and a vector
    that one of them beats is settled at once. The rest are screened over the vocabulary in
    bfloat16 (about 4x faster than float32 where the CPU has bf16 units), and every token
    whose bf16 score could be within the proven error bound of the target's is scored again
    in float32. Every answer is the float32 one. ``screen=None`` screens where bf16 is fast.
    """
    with module_weights(lm.unembedding) as (weight, head_bias):
        return _ranked_first(lm, weight, head_bias, vectors, targets, mode, shortlist, screen, chunk)


def _ranked_first(lm, weight, head_bias, vectors, targets, mode, shortlist, screen, chunk) -> Tensor:
    x, bias = readout(lm, vectors, mode, head_bias)
    x = x.to(weight.device)
    bias = None if bias is None else bias.to(weight.device)
    targets = torch.as_tensor(targets, device=weight.device).expand(x.shape[:-1]).reshape(-1)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros(len(flat), dtype=torch.bool, device=weight.device)
    todo = torch.arange(len(flat), device=weight.device)
    if shortlist is not None:
        listed = torch.as_tensor(shortlist, device=weight.device).unique()
        extra = 0 if bias is None else bias[listed]
        scores = flat @ weight[listed].float().T + extra
        target = (flat * weight[targets].float()).sum(-1) + (0 if bias is None else bias[targets])
        beaten = ((scores >= target[:, None]) & (listed[None] != targets[:, None])).any(-1)
        todo = todo[~beaten]
    if screen is None:
        screen = _bf16_is_fast(weight.device.type)
    test = _first_screened if screen else _first_exact
    for start in range(0, len(todo), chunk):
        rows = todo[start:start + chunk]
        out[rows] = test(lm, weight, flat[rows], targets[rows], bias)
    return out.view(x.shape[:-1])


@torch.no_grad()
def likely_top(lm, vectors: Tensor, mode: str = "paper", k: int = 64) -> Tensor:
    """The ``k`` top tokens of each vector's projection, approximately (from bf16 scores where
    bf16 is fast): a shortlist for :func:`ranked_first`, whose answers never depend on it."""
    with module_weights(lm.unembedding) as (weight, head_bias):
        x, bias = readout(lm, vectors, mode, head_bias)
        x = x.to(weight.device)
        if _bf16_is_fast(x.device.type):
            scores = x.bfloat16() @ _unembedding_bf16(lm, weight)[0].T
        else:
            scores = x @ weight.float().T
        if bias is not None:
            scores = scores.float() + bias.to(scores.device)
        return scores.topk(k, dim=-1).indices.flatten().unique()


def _first_exact(lm, weight: Tensor, v: Tensor, t: Tensor, bias) -> Tensor:
    scores = v @ weight.float().T
    if bias is not None:
        scores = scores + bias
    target = scores.gather(-1, t[:, None])
    return (scores.scatter(-1, t[:, None], float("-inf")) < target).all(-1) & (v.norm(dim=-1) > 0)


def _first_screened(lm, weight: Tensor, v: Tensor, t: Tensor, bias) -> Tensor:
    half, max_norm = _unembedding_bf16(lm, weight)
    target = (v * weight[t].float()).sum(-1)
    approx = v.bfloat16() @ half.T  # (N, V)
    if bias is not None:
        target, approx = target + bias[t], approx.float() + bias
    # bf16 keeps 8 significant bits of the inputs and of the output, so each approximate
    # score is within ~0.012 |u_j| |v| of the float32 one; 2^-6 max_j |u_j| |v| bounds it
    slack = 2.0 ** -6 * max_norm * v.norm(dim=-1)
    beaten = (approx.max(-1).values.float() - slack > target) | (slack == 0)  # a zero vector ranks nothing first
    candidate = approx >= (target - slack)[:, None]
    candidate[beaten] = False
    candidate[torch.arange(len(t)), t] = False
    rows, tokens = candidate.nonzero(as_tuple=True)
    wide = torch.bincount(rows, minlength=len(t)) > 4096  # near-ties everywhere: score those rows in full
    if wide.any():
        beaten[wide] = ~_first_exact(lm, weight, v[wide], t[wide], bias)
        rows, tokens = rows[~wide[rows]], tokens[~wide[rows]]
    exact = (v[rows] * weight[tokens].float()).sum(-1)
    if bias is not None:
        exact = exact + bias[tokens]
    beaten[rows[exact >= target[rows]]] = True
    return ~beaten


__all__ = ["likely_top", "ranked_first", "readout"]
