"""Attribute extraction at the last position (section 5 of the paper).

The last step of factual recall in the paper: at the last position, attention reads the
attribute out of the enriched subject. The computations behind notebook 03:

* E5 - an *extraction event* at layer l: the attention (or MLP) update at the last
  position, projected to the vocabulary (with no final norm as in the official code, or
  through the final norm: the logit lens), ranks the model's prediction first.
* E6 - the attention update of an extracting layer recomputed from its captured weights
  and values with edges from the last position removed, both as the official code does
  it (softmax applied again to the probabilities, spec P2) and by renormalising.
* E7 - the residual entering layer l replaced at the subject (or other) positions by the
  same prompt's state from an early layer, and extraction at l tested again.
* E8 - the attribute's rank in the last-subject representation where attention extracts.
* E9 - each head's share of an extracting attention update, and the heads' value-output
  circuits (W_V W_O, Dar et al. 2023) read in vocabulary space.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .hooks import Hooks, execution_device, with_layer_input
from .interventions import Capture, PatchHidden, run
from .projection import module_weights, normed, project, token_ranks

ROWS_VERSION = 4
"""Part of every sweep's parameters: bumped when a change to this module changes the rows
it produces, so that a resumed sweep never mixes rows of two versions."""

# --------------------------------------------------------------------------------------
# "Ranked first", fast and exact


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

    a, b = torch.randn(128, 1024), torch.randn(1024, 16384)
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
    :func:`utils.projection.project`.

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


# --------------------------------------------------------------------------------------
# One fact's clean pass


def position_groups(fact, sink_in_non_subject: bool = False) -> dict[str, list[int]]:
    """The official code's position sets: subject, non-subject (every earlier position not
    in the subject) and last. A prompt's leading sink token (Gemma's ``<bos>``) is kept out
    of "non-subject" unless asked: it is an attention sink, not part of the relation."""
    last = int(fact["n_tokens"]) - 1
    subject = [int(p) for p in fact["subject_positions"] if p < last]
    sink = {0} if fact.get("has_sink") and not sink_in_non_subject else set()
    non_subject = [p for p in range(last) if p not in subject and p not in sink]
    return {"subject": subject, "non-subject": non_subject, "last": [last]}


@dataclass
class CleanRun:
    """One fact's unintervened forward pass: what every analysis of the section reads."""

    fact: dict
    resid: Tensor
    """(L+1, n, d) the residual stream entering each layer, and the last layer's output."""
    attn: Tensor
    """(L, d) the attention update at the last position."""
    mlp: Tensor
    """(L, d) the MLP update at the last position."""
    heads: Tensor
    """(L, H * head_dim) the input of the attention output projection at the last position."""
    weights: Tensor | None
    """(L, H, n) the last position's attention probabilities (None unless asked)."""
    values: Tensor | None
    """(L, H_kv, n, head_dim) every position's value vectors (None unless asked)."""
    calls: list
    """Per layer, the (args, kwargs) the model called it with, to run that layer again."""

    @property
    def target(self) -> int:
        return int(self.fact["pred_token_id"])


def clean_run(lm, fact, attention: bool = True) -> CleanRun:
    """The clean pass of ``fact`` (a known-set row); ``attention`` also keeps the attention
    weights and values, which E6 and E9 rebuild attention updates from."""
    out = run(lm, fact["input_ids"], capture=Capture(resid=True, attn=True, mlp=True, heads=True,
                                                     attn_weights=attention, values=attention, calls=True))
    a = out.acts
    predicted = int(out.logits[0, -1].argmax())
    if predicted != int(fact["pred_token_id"]):
        raise ValueError(f"fact {fact.get('known_id')}: the model now predicts {predicted}, "
                         f"the known set says {fact['pred_token_id']} (stale known set?)")
    return CleanRun(fact=fact, resid=a["resid"][0], attn=a["attn"][0, :, -1], mlp=a["mlp"][0, :, -1],
                    heads=a["heads"][0, :, -1].flatten(-2),
                    weights=a["attn_weights"][0, :, :, -1] if attention else None,
                    values=a["values"][0] if attention else None, calls=[out.calls[i] for i in range(lm.n_layers)])


# --------------------------------------------------------------------------------------
# Attention updates rebuilt from their parts


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


# --------------------------------------------------------------------------------------
# E6: blocking the last position's edges, on captured weights


def reweight(weights: Tensor, blocked: Tensor, variant: str) -> Tensor:
    """Attention weights (..., n) of the last position with the ``blocked`` keys removed.

    ``"renormalised"``: the surviving weights rescaled to sum to one, which is exactly
    what removing those edges before the softmax gives. ``"official"``: the official
    code's computation (spec P2), which writes -1e6 into the *probabilities* and applies
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


def block_conditions(groups: dict[str, list[int]], n: int) -> dict[str, list[int]]:
    """The official code's blocked key sets for the last position (its labels)."""
    subject, non_subject, last = groups["subject"], groups["non-subject"], groups["last"]
    subject_last = subject[-1:]
    everything = list(range(n))

    def all_but(*keep):
        kept = {p for k in keep for p in k}
        return [p for p in everything if p not in kept]

    return {
        "none": [],
        "subject": subject,
        "last": last,
        "subject-last": subject_last,
        "subject-last + last": subject_last + last,
        "non-subject": non_subject + last,
        "non-subject ex. last": non_subject,
        "all but first": all_but([0]),
        "all but last": all_but(last),
        "all but subject-last": all_but(subject_last),
        "all but subject-last + last": all_but(subject_last, last),
        "all": everything,
    }


VARIANTS = ("official", "renormalised")


# --------------------------------------------------------------------------------------
# E7: one layer run again on patched inputs


def attention_update_again(lm, r: CleanRun, layer: int, hidden: Tensor) -> Tensor:
    """The attention update at the last position when layer ``layer`` receives ``hidden``
    (B, n, d) instead of its clean input: the layer alone is called again with the
    arguments the model gave it in the clean pass, and stopped once the update is known,
    so a patch at layer l costs one attention sublayer, not a forward pass."""
    if not lm.attention_backend.prefix_cache and hidden.shape[0] > 1:
        # such families build batch-shaped inputs of their layers once per pass (Bloom's ALiBi): one row at a time
        return torch.cat([attention_update_again(lm, r, layer, h[None]) for h in hidden])
    args, kwargs = r.calls[layer]
    block, update = lm.layers[layer], lm.sub(layer, lm.arch.attn_update)
    args, kwargs = with_layer_input(args, kwargs, hidden.to(execution_device(block), lm.dtype))
    found = {}
    with Hooks(lm, hidden.shape[1]) as hooks:
        hooks.read_output(update, lambda x: found.__setitem__("update", x[:, -1].float()))
        hooks.stop_after(update)
        hooks.call(block, *args, **kwargs)
    return found["update"]


def scaled_layers(n_layers: int, paper_layers=(0, 1, 5, 10, 20), paper_n_layers: int = 48) -> list[int]:
    """The paper's patch-source layers of GPT-2 XL (48 layers) at the same depth fraction
    of another model, kept distinct (0 is the embeddings, 1 the first layer's output)."""
    out: list[int] = []
    for layer in paper_layers:
        scaled = round(layer * n_layers / paper_n_layers)
        out.append(scaled if not out else max(scaled, out[-1] + 1))
    return [x for x in out if x <= n_layers]


@torch.no_grad()
def patching_rows(lm, fact, sources, mode: str = "paper", sink_in_non_subject: bool = False,
                  screen=None) -> list[dict]:
    """E7 for one fact: for every layer l, position set P and source layer s, the input of
    layer l at P is replaced by the same prompt's ``hidden_states[s]`` (as in the official
    code, s may exceed l) and attention extraction at l is tested. One row per (P, s):
    whether attention extracts at some layer, and at how many."""
    r = clean_run(lm, fact, attention=False)
    groups = position_groups(fact, sink_in_non_subject)
    conditions = [(g, s) for g in ("subject", "non-subject", "last") for s in sources]
    updates = []
    for layer in range(lm.n_layers):
        batch = r.resid[layer].expand(len(conditions), -1, -1).clone()
        for i, (group, source) in enumerate(conditions):
            batch[i, groups[group]] = r.resid[source, groups[group]]
        updates.append(attention_update_again(lm, r, layer, batch))
    events = ranked_first(lm, torch.stack(updates), r.target, mode, likely_top(lm, r.attn, mode), screen)
    found, counts = events.any(0).tolist(), events.sum(0).tolist()  # one transfer to the host
    return [{"known_id": fact["known_id"], "positions": group, "source_layer": source,
             "extracted": int(found[i]), "n_layers": int(counts[i]),
             "n_positions": len(groups[group])}
            for i, (group, source) in enumerate(conditions)]


# --------------------------------------------------------------------------------------
# E5, E6, E8, E9 for one fact


@torch.no_grad()
def extraction_rows(lm, fact, mode: str = "paper", sink_in_non_subject: bool = False, screen=None) -> list[dict]:
    """Everything this section measures on one fact's clean pass, as tidy rows
    (known_id, projection, layer, measure, condition, variant, head, value):

    * "attn" / "mlp" (E5): 1 if that update at the last position ranks the prediction
      first; every layer, under both projections ("paper" and "logit_lens");
    * "blocked_any" (E6 as the official code aggregates it), per blocked set ``condition``
      and ``variant``, ``layer`` -1: 1 if, with those edges blocked at one layer at a time,
      attention still extracts at some layer (any fact, extracting or not);
    * at each layer where attention extracts under ``mode``:
      "blocked" (E6), per blocked set ``condition`` and ``variant``: 1 if it still extracts;
      "subject_rank" (E8): the prediction's rank in the last-subject representation
      ``hidden_states[l + 1]`` (the official choice), and "subject_rank_input" in
      ``hidden_states[l]``, what the layer's attention actually reads;
      "head" (E9): 1 if head ``head``'s own share of the update ranks it first.
    """
    r = clean_run(lm, fact)
    target, n, key = r.target, int(fact["n_tokens"]), fact["known_id"]
    rows, layers = [], []
    for projection in ("paper", "logit_lens"):
        events = ranked_first(lm, torch.stack([r.attn, r.mlp]), target, projection, screen=screen).tolist()  # (2, L)
        rows += [_row(key, projection, layer, sub, int(events[i][layer])) for i, sub in enumerate(("attn", "mlp"))
                 for layer in range(lm.n_layers)]
        if projection == mode:
            layers = [layer for layer, event in enumerate(events[0]) if event]

    # E6: every layer's update recomputed with blocked edges, one layer at a time
    conditions = block_conditions(position_groups(fact, sink_in_non_subject), n)
    flat = [i * n + p for i, blocked in enumerate(conditions.values()) for p in blocked]
    masks = torch.zeros(len(conditions) * n, dtype=torch.bool)
    masks[flat] = True
    masks = masks.view(len(conditions), 1, n).to(r.weights.device)
    blocked_updates = torch.stack([
        torch.stack([update_from_weights(lm, layer, reweight(r.weights[layer], masks, v), r.values[layer])
                     for v in VARIANTS])
        for layer in range(lm.n_layers)])  # (layers, variants, conditions, d)
    shortlist = likely_top(lm, r.attn, mode)
    still = ranked_first(lm, blocked_updates, target, mode, shortlist, screen)
    anywhere, still = still.any(0).tolist(), still.tolist()
    rows += [_row(key, mode, -1, "blocked_any", int(anywhere[j][k]), condition=c, variant=v)
             for j, v in enumerate(VARIANTS) for k, c in enumerate(conditions)]
    if not layers:
        return rows
    rows += [_row(key, mode, layer, "blocked", int(still[layer][j][k]), condition=c, variant=v)
             for layer in layers for j, v in enumerate(VARIANTS) for k, c in enumerate(conditions)]

    # E8: the attribute's rank in the last-subject representation
    subject_last = position_groups(fact)["subject"][-1]
    states = torch.stack([r.resid[[layer + 1, layer], subject_last] for layer in layers])  # (layers, 2, d)
    ranks = token_ranks(project(lm, states, mode), target).tolist()
    rows += [_row(key, mode, layer, m, int(ranks[i][j])) for i, layer in enumerate(layers)
             for j, m in enumerate(("subject_rank", "subject_rank_input"))]

    # E9: which heads' own shares rank the prediction first
    shares = torch.stack([head_contributions(lm, layer, r.heads[layer])[0] for layer in layers])
    own = ranked_first(lm, shares, target, mode, shortlist, screen).tolist()  # (layers, H)
    rows += [_row(key, mode, layer, "head", int(own[i][h]), head=h)
             for i, layer in enumerate(layers) for h in range(lm.n_heads)]
    return rows


def _row(known_id, projection, layer, measure, value, condition=None, variant=None, head=-1) -> dict:
    """One tidy row; ``condition`` and ``variant`` are left empty where they do not apply."""
    return {"known_id": known_id, "projection": projection, "layer": layer, "measure": measure,
            "condition": condition, "variant": variant, "head": head, "value": value}


# --------------------------------------------------------------------------------------
# E9: the heads' value-output circuits in vocabulary space


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


@torch.no_grad()
def head_mapping_rows(lm, layer: int, heads, facts, mode: str = "paper", pool=None, k: int = 5) -> list[dict]:
    """For each fact and each head of ``layer`` in ``heads``: the rank of the fact's
    predicted attribute when the head's value-output circuit maps the subject's tokens to
    the vocabulary (best over the subject's tokens, and for its last token). As a control,
    the ranks of the *other* attributes in ``pool`` (token ids; default: the facts'
    predictions) under the same mapping: their median, and the share of them in the top 10.
    Also the top ``k`` tokens mapped from the subject token that ranks the attribute best."""
    from .projection import decode_ids

    facts = list(facts)
    targets = [int(f["pred_token_id"]) for f in facts]
    pool = torch.tensor(sorted(set(targets) if pool is None else {int(t) for t in pool}))
    tokens = [[int(fact["input_ids"][p]) for p in position_groups(fact)["subject"]] for fact in facts]
    unique = sorted({t for ts in tokens for t in ts})
    index = {t: i for i, t in enumerate(unique)}
    mapped = value_output(lm, layer, token_embeddings(lm, unique))  # (T, H, d)
    rows = []
    for head in heads:
        for fact, target, subject_tokens in zip(facts, targets, tokens):
            scores = project(lm, mapped[[index[t] for t in subject_tokens], head], mode)  # (subject tokens, V)
            ranks = token_ranks(scores, target)
            best = int(ranks.argmin())
            others = pool[pool != target]
            ascending = scores.sort(-1).values  # rank = how many tokens score higher
            other_scores = scores[:, others.to(scores.device)].contiguous()
            other_ranks = (scores.shape[-1] - torch.searchsorted(ascending, other_scores, right=True)).min(0).values
            rows.append({"known_id": fact["known_id"], "layer": layer, "head": head, "subject": fact["subject"],
                         "attribute": decode_ids(lm, target), "rank_best": int(ranks.min()),
                         "rank_last": int(ranks[-1]),
                         "control_median_rank": float(other_ranks.float().median()) if len(others) else None,
                         "control_top10": float((other_ranks < 10).float().mean()) if len(others) else None,
                         "top_tokens": decode_ids(lm, scores[best].topk(k).indices)})
    return rows
