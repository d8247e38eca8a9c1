"""Subject enrichment (paper §4): how much the subject's representation says about the subject.

* **Attributes rate**: project a hidden state to the vocabulary (``project``, paper mode),
  take the top ``top_k`` (500) tokens, drop stopwords and tokens of two characters or less, keep
  the first ``kept`` (50) and count the share that is in the subject's attribute set (exact
  strings, leading space and case included). Measured per layer at five positions, plus the
  static-embedding baseline (the mean input embedding of the subject's tokens).
* **Sublayer knockouts**: the attributes rate of the last-subject representation at one
  layer when a window of MLP (or attention) sublayers before it is knocked out at every position.
* A complement that needs no external text: the rank of the fact's own attribute token (the
  model's prediction) in the same projections.

All top-k work happens on the model's device in one batch per fact; token strings come from the
vocabulary table decoded once (:func:`utils.core.projection.vocabulary`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from ..core.forward import Capture, hidden_after, run
from ..core.interventions import ZeroSublayer
from ..core.projection import module_weights, project, token_ranks, vocabulary
from ..runs.results import sweep
from .attributes import keep_predicted_token
from .facts import Fact, as_facts, prediction, subject_positions

POSITIONS = ("input first", "subject first", "subject last", "subject subseq.", "input last")
BASELINE = "static embedding"
PAPER_LAYERS, PAPER_REPR_LAYER, PAPER_WINDOW = 48, 40, 10


@dataclass(frozen=True)
class Settings:
    """The paper's settings for §4; layers given as None are the paper's, scaled to the model's depth."""

    top_k: int = 500
    """Tokens read from each projection (paper: 500)."""
    kept: int = 50
    """Clean tokens evaluated (paper: 50)."""
    representation_layer: int | None = None
    """The block whose output the knockouts are read at (paper: 40 of GPT-2 XL's 48)."""
    knockout_window: int | None = None
    """Layers per knockout window (paper: 10 of 48)."""
    knockout_extra_layer: bool = True
    """The official code knocks out one layer more than the window."""
    knockout_variants: tuple[str, ...] = ("zero", "official")
    """"zero" removes the update; "official" keeps the MLP bias and makes attention uniform."""
    knockout_chunks: int = 3
    """Batches per fact in the knockout sweep (later windows share the layers below)."""
    example_subjects: tuple[str, ...] = ("Beats Music", "Iron Man", "Roman Republic")
    """Subjects of the worked examples (the paper's), where the model knows them."""
    prepend_sink: bool | None = None
    """As in notebook 00, whose known set is reused."""
    threads: int = 0
    """Torch CPU threads; 0 keeps torch's default."""

    def __post_init__(self):
        for name in ("knockout_variants", "example_subjects"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def knockout_layers(self, n_layers: int) -> tuple[int, int, list[tuple[int, ...]]]:
        """The representation layer, the window size and the windows, for a model's depth."""
        layer = (self.representation_layer if self.representation_layer is not None
                 else scaled_layer(n_layers, PAPER_REPR_LAYER))
        size = self.knockout_window or scaled_layer(n_layers, PAPER_WINDOW)
        return layer, size, knockout_windows(layer, size, self.knockout_extra_layer)



def positions_of(fact) -> dict[str, int]:
    """The paper's five positions in a prompt. "input first" is the prompt's first token: after
    the BOS when the tokenizer adds one, so that it is a word of the prompt as in GPT-2."""
    get = fact.__getitem__ if isinstance(fact, dict) else lambda k: getattr(fact, k)
    return {
        "input first": 1 if get("has_sink") else 0,
        "subject first": int(get("subject_first")),
        "subject last": int(get("subject_last")),
        "subject subseq.": int(get("subject_last")) + 1,
        "input last": int(get("n_tokens")) - 1,
    }


def keep_mask(lm) -> Tensor:
    """Which tokens of the vocabulary the official filter keeps (computed once per model)."""
    if "keep_predicted" not in lm.cache:
        lm.cache["keep_predicted"] = torch.tensor([keep_predicted_token(t) for t in vocabulary(lm)])
    return lm.cache["keep_predicted"]


def clean_top_tokens(lm, scores: Tensor, top_k: int = 500, kept: int = 50) -> list[list[str]]:
    """For each row of vocabulary scores: the top ``top_k`` tokens, filtered as the official
    code does, first ``kept`` of them (the filter applied to all rows at once)."""
    vocab = vocabulary(lm)
    ids = scores.topk(top_k, dim=-1).indices.cpu()
    keep = keep_mask(lm)[ids]
    chosen = keep & (keep.cumsum(-1) <= kept)
    flat, counts = ids[chosen].tolist(), chosen.sum(-1).tolist()
    out, start = [], 0
    for count in counts:
        out.append([vocab[i] for i in flat[start:start + count]])
        start += count
    return out


def attributes_rate(tokens: list[str], attributes: frozenset[str] | None) -> float:
    """% of ``tokens`` that are in the attribute set (NaN when the subject has no set, as the
    official code's -1, or no token survived the cleaning)."""
    if attributes is None or not tokens:
        return math.nan
    return 100.0 * len(set(tokens) & attributes) / len(tokens)


def scaled_layer(n_layers: int, paper_value: int) -> int:
    """A GPT-2 XL layer count scaled to a model of ``n_layers`` layers (40 of 48 -> 15 of 18),
    at least 1 and at most the last block (a 2-layer model reads block 1)."""
    return min(n_layers - 1, max(1, round(paper_value * n_layers / PAPER_LAYERS)))  # a block of this model


def knockout_windows(repr_layer: int, window: int, extra_layer: bool = True) -> list[tuple[int, ...]]:
    """The layers knocked out for each window start 0 .. repr_layer-1.

    The official code knocks out ``range(start, min(start + window + 1, repr_layer))``: one
    layer more than the paper's "window of 10" (``extra_layer=True`` keeps that), and never
    the representation layer's own block.
    """
    size = window + (1 if extra_layer else 0)
    return [tuple(range(start, min(start + size, repr_layer))) for start in range(repr_layer)]


def mismatched(attributes: dict[str, frozenset[str]], seed: int = 0) -> dict[str, frozenset[str]]:
    """Each subject paired with *another* subject's attribute set (a seeded cyclic shift).

    The rate against a wrong subject's set is a control: large attribute sets share generic
    words ("first", "city", "century") with any representation, and only the excess of the
    own-subject rate over this control is specific to the subject.
    """
    subjects = sorted(attributes)
    random.Random(seed).shuffle(subjects)
    return {s: attributes[subjects[(i + 1) % len(subjects)]] for i, s in enumerate(subjects)} if len(subjects) > 1 else {}


def digest(attributes: dict[str, frozenset[str]]) -> str:
    """A short fingerprint of attribute sets (part of a sweep's key, so a changed source never
    reuses stale rows)."""
    blob = json.dumps(sorted((s, sorted(a)) for s, a in attributes.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------
# The attributes rate by position and layer


def static_subject_ids(lm, fact) -> list[int]:
    """The subject's token ids as they read in the middle of a text.

    The official baseline prefixes "<|endoftext|> " so that a prompt-initial subject gets its
    space-prefixed tokens (" Beats", not "Be"+"ats"); we prepend the model's sink token and a
    space the same way.
    """
    text = " " + fact["prompt"]
    ids, spans = lm.encode(text, prepend_sink=True if lm.sink_token_id is not None else None, offsets=True)
    return [ids[i] for i in subject_positions(spans, text, fact["subject"])]


@torch.no_grad()
def enrichment_rows(lm, fact: Fact, attributes: frozenset[str] | None, settings: Settings = Settings(),
                    mode: str = "paper", top_tokens: int = 0, control: frozenset[str] | None = None) -> list[dict]:
    """One fact's attributes rate and attribute rank at every (position, layer), plus the
    static-embedding baseline (``layer=-1``).

    ``layer`` is the HF ``hidden_states`` index, 0 (embeddings) .. L-1, as in the official
    loop; the paper plots it at ``layer + 1``. ``mode`` is the projection (``"paper"``: the
    unembedding alone, as the official code; ``"logit_lens"``: final norm first).
    ``top_tokens`` > 0 also stores that many clean tokens per row (for tables of examples);
    ``control`` is another subject's set, for the ``control_rate`` (see :func:`mismatched`).
    """
    positions = positions_of(fact)
    out = run(lm, fact["input_ids"], capture=Capture(positions=list(positions.values()), resid=True))
    hidden = out.acts["resid"][0, : lm.n_layers]  # (L, P, d): entering each layer
    static_ids = fact["static_ids"] if "static_ids" in fact else static_subject_ids(lm, fact)
    with module_weights(lm.model.get_input_embeddings()) as (weight, _):
        static = weight[torch.tensor(static_ids, device=weight.device)].mean(0)  # the baseline's vector
    vectors = torch.cat([hidden.flatten(0, 1), static[None].to(hidden.device)])
    scores = project(lm, vectors, mode)
    tokens = clean_top_tokens(lm, scores, settings.top_k, settings.kept)
    ranks = token_ranks(scores, prediction(fact)).tolist()
    labels = [(layer, name) for layer in range(lm.n_layers) for name in positions] + [(-1, BASELINE)]
    rows = []
    for (layer, name), toks, rank in zip(labels, tokens, ranks):
        row = {"known_id": fact["known_id"], "subject": fact["subject"], "position": name,
               "token_index": positions.get(name, -1), "layer": layer,
               "attributes_rate": attributes_rate(toks, attributes), "control_rate": attributes_rate(toks, control),
               "n_clean": len(toks), "attribute_rank": rank}
        if top_tokens:
            row["top_tokens"] = toks[:top_tokens]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# Sublayer knockouts




@torch.no_grad()
def knockout_rows(lm, fact: Fact, attributes: frozenset[str] | None, variant: str = "zero",
                  settings: Settings = Settings(), mode: str = "paper",
                  control: frozenset[str] | None = None) -> list[dict]:
    """One fact's attributes rate at the last subject token of the output of the representation
    layer (``settings.knockout_layers``) with no intervention and with each window of MLP /
    attention sublayers knocked out (at every position, as the official code does).

    Window starts are split into ``settings.knockout_chunks`` batches: a batch whose windows
    start late shares the layers below its first window, which saves up to half of the work for
    a few more passes. The clean row is repeated for every start, as in the official table.
    """
    repr_layer, _, windows = settings.knockout_layers(lm.n_layers)
    position = int(fact["subject_last"])
    chunks = max(1, min(settings.knockout_chunks, len(windows)))  # a shallow model may have fewer window starts than chunks
    bounds = [round(i * len(windows) / chunks) for i in range(chunks + 1)]
    configs, hidden = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        group = [("mlp", s) for s in range(lo, hi)] + [("attn", s) for s in range(lo, hi)]
        group = ([("none", None)] if lo == 0 else []) + group
        rows = [[ZeroSublayer(kind, windows[s], variant=variant)] if s is not None else [] for kind, s in group]
        hidden.append(hidden_after(lm, fact["input_ids"], rows, repr_layer, position))
        configs += group
    scores = project(lm, torch.cat(hidden), mode)
    tokens = clean_top_tokens(lm, scores, settings.top_k, settings.kept)
    ranks = token_ranks(scores, prediction(fact)).tolist()
    out = []
    for (kind, start), toks, rank in zip(configs, tokens, ranks):
        for s in range(len(windows)) if start is None else [start]:
            layers = windows[s] if start is not None else ()
            out.append({"known_id": fact["known_id"], "subject": fact["subject"], "sublayer": kind, "start": s,
                        "end": layers[-1] if layers else -1, "n_knocked": len(layers),
                        "attributes_rate": attributes_rate(toks, attributes),
                        "control_rate": attributes_rate(toks, control), "n_clean": len(toks), "attribute_rank": rank})
    order = ("none", "mlp", "attn")
    return sorted(out, key=lambda r: (order.index(r["sublayer"]), r["start"]))


# --------------------------------------------------------------------------------------
# Sweeps over a known set (resumable, saved to results/<model>/)

def attributes_rate_sweep(lm, facts: pd.DataFrame, attributes: dict[str, frozenset[str]], params: dict,
                          settings: Settings = Settings(), mode: str = "paper",
                          name: str = "attributes_rate") -> pd.DataFrame:
    """The attributes rate over ``facts``: ``results/<model>/<name>.csv``. ``params`` names what
    else decides the numbers (dataset, attribute source); the attribute sets' digest is added."""
    params = {**params, "top_k": settings.top_k, "kept": settings.kept, "projection": mode,
              "attributes": digest(attributes)}
    controls = mismatched(attributes)
    return sweep(name, lm, params, as_facts(facts),
                 lambda f: enrichment_rows(lm, f, attributes.get(f["subject"]), settings, mode,
                                           control=controls.get(f["subject"])))


def knockout_sweep(lm, facts: pd.DataFrame, attributes: dict[str, frozenset[str]], params: dict,
                   variant: str = "zero", settings: Settings = Settings(), mode: str = "paper") -> pd.DataFrame:
    """The sublayer knockouts over ``facts``: ``results/<model>/sublayer_knockout_<variant>.csv``."""
    repr_layer, _, windows = settings.knockout_layers(lm.n_layers)
    params = {**params, "top_k": settings.top_k, "kept": settings.kept, "projection": mode,
              "attributes": digest(attributes), "repr_layer": repr_layer, "windows": [list(w) for w in windows],
              "variant": variant}
    controls = mismatched(attributes)
    return sweep(f"sublayer_knockout_{variant}", lm, params, as_facts(facts),
                 lambda f: knockout_rows(lm, f, attributes.get(f["subject"]), variant, settings, mode,
                                         controls.get(f["subject"])))


# --------------------------------------------------------------------------------------
# Summaries


def rate_by_layer(table: pd.DataFrame, value: str = "attributes_rate") -> pd.DataFrame:
    """Mean of ``value`` per position (columns) and layer (rows), over facts with a value."""
    layered = table[table.layer >= 0]
    means = layered.pivot_table(index="layer", columns="position", values=value, aggfunc="mean", dropna=False)
    return means[[p for p in POSITIONS if p in set(layered.position)]]  # (all-NaN columns kept: a missing control)


def peak_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per position: the layer (``hidden_states`` index, from 0) where the mean rate peaks, its value, the
    mismatched-subject control there, and the rate at the layer where "subject last" peaks."""
    means, controls = rate_by_layer(table), rate_by_layer(table, "control_rate")
    peak = means.idxmax()
    return pd.DataFrame({"peak_layer": peak, "peak_rate": means.max(),
                         "control_at_peak": [controls.loc[peak[p], p] for p in means.columns],
                         "rate_at_subject_last_peak": means.loc[peak["subject last"]]})


def knockout_summary(table: pd.DataFrame, parts: int = 3) -> pd.DataFrame:
    """Mean attributes rate (and control) with no intervention and under MLP / attention
    knockouts, for windows starting in the first, middle and last third of the layers below
    the representation layer (rows ``early``, ``middle``, ``late``)."""
    names = ["early", "middle", "late"] if parts == 3 else [f"part {i + 1}" for i in range(parts)]
    part = (table.start * parts // (table.start.max() + 1)).map(dict(enumerate(names))).rename("windows")
    means = table.pivot_table(index=part, columns="sublayer", values=["attributes_rate", "control_rate"],
                              aggfunc="mean").reindex(names)
    means.columns = [kind + (" (control)" if value == "control_rate" else "") for value, kind in means.columns]
    starts = table.start.groupby(part).agg(["min", "max"]).reindex(names)
    columns = ["none", "mlp", "attn", "none (control)", "mlp (control)", "attn (control)"]
    return means.reindex(columns=columns).assign(first_start=starts["min"], last_start=starts["max"])  # a control
    # needs two subjects; without one its columns stay, empty


