"""Attribute extraction at the last position (section 5 of the paper).

The last step of factual recall in the paper: at the last position, attention reads the
attribute out of the enriched subject. The measures of notebook 03, per fact:

* *extraction events*: at layer l the attention (or MLP) update at the last position,
  projected to the vocabulary (with no final norm as in the official code, or through the
  final norm: the logit lens), ranks the model's prediction first;
* *blocked extraction*: the attention update of each layer recomputed from its captured
  weights and values with edges from the last position removed, both as the official code
  does it (softmax applied again to the probabilities) and by renormalising;
* *patching*: the residual entering layer l replaced at the subject (or other) positions by
  the same prompt's state from an early layer, and extraction at l tested again;
* *the subject's rank*: the attribute's rank in the last-subject representation where
  attention extracts;
* *extracting heads*: each head's share of an extracting attention update, and the heads'
  value-output circuits (W_V W_O, Dar et al. 2023) read in vocabulary space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.forward import Capture, attention_update_again, run
from ..core.heads import head_contributions, reweight, token_embeddings, update_from_weights, value_output
from ..core.projection import decode_ids, project, token_ranks
from ..core.readout import likely_top, ranked_first
from .facts import Fact, position_sets, prediction

ROWS_VERSION = 4
"""Part of every sweep's parameters: bumped when a change to this module changes the rows
it produces, so that a resumed sweep never mixes rows of two versions."""

# --------------------------------------------------------------------------------------
# One fact's clean pass


@dataclass
class CleanRun:
    """One fact's unintervened forward pass: what every analysis of the section reads."""

    fact: Fact
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
        return prediction(self.fact)


def clean_run(lm, fact, attention: bool = True) -> CleanRun:
    """The clean pass of ``fact`` (a known-set row); ``attention`` also keeps the attention
    weights and values, which blocked extraction and the head mappings rebuild updates from."""
    prediction(fact)  # a fact without its prediction is refused before the model runs
    out = run(lm, fact["input_ids"], capture=Capture(resid=True, attn=True, mlp=True, heads=True,
                                                     attn_weights=attention, values=attention, calls=True))
    a = out.acts
    predicted = int(out.logits[0, -1].argmax())
    if predicted != prediction(fact):
        raise ValueError(f"fact {fact.get('known_id')}: the model now predicts {predicted}, "
                         f"the known set says {fact['pred_token_id']} (stale known set?)")
    return CleanRun(fact=fact, resid=a["resid"][0], attn=a["attn"][0, :, -1], mlp=a["mlp"][0, :, -1],
                    heads=a["heads"][0, :, -1].flatten(-2),
                    weights=a["attn_weights"][0, :, :, -1] if attention else None,
                    values=a["values"][0] if attention else None, calls=[out.calls[i] for i in range(lm.n_layers)])


# --------------------------------------------------------------------------------------
# Blocked extraction: the last position's edges removed, on captured weights


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
# Patching: one layer run again on patched inputs


def scaled_layers(n_layers: int, paper_layers=(0, 1, 5, 10, 20), paper_n_layers: int = 48) -> list[int]:
    """The paper's patch-source layers of GPT-2 XL (48 layers) at the same depth fraction
    of another model, kept distinct (0 is the embeddings, 1 the first layer's output)."""
    out: list[int] = []
    for layer in paper_layers:
        scaled = round(layer * n_layers / paper_n_layers)
        out.append(scaled if not out else max(scaled, out[-1] + 1))
    return [x for x in out if x <= n_layers]


@torch.no_grad()
def patching_rows(lm, fact, sources, mode: str = "paper", include_sink: bool = False,
                  screen=None) -> list[dict]:
    """Patching for one fact: for every layer l, position set P and source layer s, the input of
    layer l at P is replaced by the same prompt's ``hidden_states[s]`` (as in the official
    code, s may exceed l) and attention extraction at l is tested. One row per (P, s):
    whether attention extracts at some layer, and at how many."""
    r = clean_run(lm, fact, attention=False)
    groups = position_sets(fact, include_sink)
    conditions = [(g, s) for g in ("subject", "non-subject", "last") for s in sources]
    updates = []
    for layer in range(lm.n_layers):
        batch = r.resid[layer].expand(len(conditions), -1, -1).clone()
        for i, (group, source) in enumerate(conditions):
            batch[i, groups[group]] = r.resid[source, groups[group]]
        updates.append(attention_update_again(lm, r.calls[layer], layer, batch))
    events = ranked_first(lm, torch.stack(updates), r.target, mode, likely_top(lm, r.attn, mode), screen)
    found, counts = events.any(0).tolist(), events.sum(0).tolist()  # one transfer to the host
    return [{"known_id": fact["known_id"], "positions": group, "source_layer": source,
             "extracted": int(found[i]), "n_layers": int(counts[i]),
             "n_positions": len(groups[group])}
            for i, (group, source) in enumerate(conditions)]


# --------------------------------------------------------------------------------------
# Every measure of one fact's clean pass


@torch.no_grad()
def extraction_rows(lm, fact, mode: str = "paper", include_sink: bool = False, screen=None) -> list[dict]:
    """Everything this section measures on one fact's clean pass, as tidy rows
    (known_id, projection, layer, measure, condition, variant, head, value):

    * "attn" / "mlp" (extraction events): 1 if that update at the last position ranks the prediction
      first; every layer, under both projections ("paper" and "logit_lens");
    * "blocked_any" (blocked extraction as the official code aggregates it), per blocked set ``condition``
      and ``variant``, ``layer`` -1: 1 if, with those edges blocked at one layer at a time,
      attention still extracts at some layer (any fact, extracting or not);
    * at each layer where attention extracts under ``mode``:
      "blocked", per blocked set ``condition`` and ``variant``: 1 if it still extracts;
      "subject_rank": the prediction's rank in the last-subject representation
      ``hidden_states[l + 1]`` (the official choice), and "subject_rank_input" in
      ``hidden_states[l]``, what the layer's attention actually reads;
      "head": 1 if head ``head``'s own share of the update ranks it first.
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

    # blocked extraction: every layer's update recomputed with blocked edges, one layer at a time
    conditions = block_conditions(position_sets(fact, include_sink), n)
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

    # the attribute's rank in the last-subject representation
    subject_last = position_sets(fact)["subject"][-1]
    states = torch.stack([r.resid[[layer + 1, layer], subject_last] for layer in layers])  # (layers, 2, d)
    ranks = token_ranks(project(lm, states, mode), target).tolist()
    rows += [_row(key, mode, layer, m, int(ranks[i][j])) for i, layer in enumerate(layers)
             for j, m in enumerate(("subject_rank", "subject_rank_input"))]

    # which heads' own shares rank the prediction first
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
# The heads' value-output circuits in vocabulary space


@torch.no_grad()
def head_mapping_rows(lm, layer: int, heads, facts, mode: str = "paper", pool=None, k: int = 5) -> list[dict]:
    """For each fact and each head of ``layer`` in ``heads``: the rank of the fact's
    predicted attribute when the head's value-output circuit maps the subject's tokens to
    the vocabulary (best over the subject's tokens, and for its last token). As a control,
    the ranks of the *other* attributes in ``pool`` (token ids; default: the facts'
    predictions) under the same mapping: their median, and the share of them in the top 10.
    Also the top ``k`` tokens mapped from the subject token that ranks the attribute best."""
    facts = list(facts)
    targets = [prediction(f) for f in facts]
    pool = torch.tensor(sorted(set(targets) if pool is None else {int(t) for t in pool}))
    tokens = [[int(fact["input_ids"][p]) for p in position_sets(fact)["subject"]] for fact in facts]
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
