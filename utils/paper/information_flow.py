"""Information flow to the last position by attention knockout (paper §3, Fig. 2).

To ask whether the prediction needs information from some positions in some layers, the
paper blocks the last position from attending to them (all heads) in a window of k
layers around each layer, and measures the relative change of the probability of the
model's own prediction. The position sets are the subject, the non-subject positions
(relation and any other context) and the last position itself; we add the split of the
subject into its last token and its other tokens.

All configurations of one fact run as rows of a few forward passes, and each row only
computes the last token (the knockouts never change the earlier positions; see
:func:`utils.core.forward.run_last_position`).

Position 0 is an attention sink in these models. ``sink="prepend"`` (the default) starts
every prompt with the model's BOS or end-of-text token and keeps it out of every source
set, so the sets mean the same thing for every model; ``sink="official"`` tokenizes as the
tokenizer does and defines the sets as the official code does (position 0 belongs to the
subject when the prompt starts with it, or to the non-subject set when it is a BOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..core.batching import in_batches, resolve
from ..core.forward import clean_prefix, run, run_last_position
from ..core.interventions import BlockAttention, first_layer, window
from ..runs.results import sweep
from .facts import Fact, as_facts, known_only, known_set, position_sets

SOURCE_SETS = ("subject", "non-subject", "last", "subject-last", "subject-other")
PAPER_SETS = SOURCE_SETS[:3]
SINK_CHOICES = ("prepend", "official")
SINK_WORDS = {"prepend": "sink token first, kept out of every set", "official": "the official code's position sets"}
"""Each sink choice in words, for captions and titles."""


@dataclass(frozen=True)
class FlowSettings:
    """What decides one information-flow sweep's numbers, besides the model and the facts."""

    k: int
    """Layers per knockout window (:func:`default_window` gives the paper's choice)."""
    sink: str = "prepend"
    """"prepend": prompts start with the sink token, kept out of every set; "official": the
    official code's tokens and sets (see the module docstring)."""
    sets: tuple[str, ...] = SOURCE_SETS
    """The source sets blocked from the last position."""
    batch_size: int | str = 128
    """Knockout rows per forward pass, or ``"auto"`` (from free memory, :mod:`utils.core.batching`):
    changes the speed, never the numbers."""

    def __post_init__(self):
        if self.sink not in SINK_CHOICES:
            raise ValueError(f"sink must be one of {SINK_CHOICES}, not {self.sink!r}")
        unknown = set(self.sets) - set(SOURCE_SETS)
        if unknown:
            raise ValueError(f"unknown source sets {sorted(unknown)}; choose from {SOURCE_SETS}")
        object.__setattr__(self, "sets", tuple(self.sets))

    @property
    def include_sink(self) -> bool:
        return self.sink == "official"


def default_window(n_layers: int) -> int:
    """The paper's window: 9 layers for GPT-2 XL (48 layers), 5 for GPT-J (28); other
    depths get the same share of the model, about L/5.5 layers."""
    return {48: 9, 28: 5}.get(n_layers, max(1, round(n_layers / 5.5)))


def knockout_probs(lm, input_ids, rows, batch_size: int | str = 128) -> torch.Tensor:
    """Next-token probabilities (len(rows), V) of the last position under each row's
    knockouts (rows block edges from the last position only).

    Identical rows run once (a one-token subject is also the subject's last token). Rows
    run in chunks of ``batch_size``, sorted by the first layer they touch, so that each
    chunk shares the computation of the layers before its earliest window. ``"auto"`` sizes
    the chunks from free memory (at most 128 rows on the host, the tuned fixed size), and an
    out-of-memory error halves them (:mod:`utils.core.batching`).
    """
    unique = list(dict.fromkeys(tuple(row) for row in rows))
    order = sorted(unique, key=lambda row: first_layer(row) or 0)
    prefix = clean_prefix(lm, input_ids)
    size = resolve(batch_size, lm, torch.as_tensor(input_ids).numel(), cap=128, recompute="last")
    found = in_batches(order, size, lambda chunk: list(run_last_position(lm, prefix, chunk).probs()), lm)
    probs = dict(zip(order, found))
    return torch.stack([probs[tuple(row)] for row in rows])


def flow_of_fact(lm, fact: Fact, settings: FlowSettings) -> list[dict]:
    """For one fact, the change in the prediction's probability when the last position
    cannot attend to each source set in a window of ``settings.k`` layers around each layer."""
    last = fact["n_tokens"] - 1
    configs = [(name, centre, BlockAttention(window(centre, settings.k, lm.n_layers), [last], keys))
               for name, keys in position_sets(fact, settings.include_sink).items() if name in settings.sets and keys
               for centre in range(lm.n_layers)]
    probs = knockout_probs(lm, fact["input_ids"], [[]] + [[block] for *_, block in configs], settings.batch_size)
    target = int(probs[0].argmax())  # the model's own prediction
    p_base, p_new = probs[0, target].item(), probs[1:, target].tolist()
    return [{"known_id": fact["known_id"], "source": name, "layer": centre, "window": list(block.layers),
             "p_base": p_base, "p_new": p, "relative_change": 100 * (p - p_base) / p_base}
            for (name, centre, block), p in zip(configs, p_new)]


def flow_of_fact_unbatched(lm, fact: Fact, settings: FlowSettings) -> list[dict]:
    """The same numbers the way the official code computes them: one forward pass of the
    whole prompt per configuration, batch 1 (the reference for tests and the benchmark)."""
    last, ids = fact["n_tokens"] - 1, fact["input_ids"]
    base = run(lm, ids).probs()[0]
    target = int(base.argmax())
    rows = []
    for name, keys in position_sets(fact, settings.include_sink).items():
        if name not in settings.sets or not keys:
            continue
        for centre in range(lm.n_layers):
            layers = window(centre, settings.k, lm.n_layers)
            p = run(lm, ids, [[BlockAttention(layers, [last], keys)]]).probs()[0, target].item()
            rows.append({"known_id": fact["known_id"], "source": name, "layer": centre, "window": list(layers),
                         "p_base": base[target].item(), "p_new": p,
                         "relative_change": 100 * (p - base[target].item()) / base[target].item()})
    return rows


def position_heatmap(lm, input_ids, k: int, batch_size: int | str = 128) -> pd.DataFrame:
    """Relative change (%) of the prediction's probability when the last position cannot
    attend to one position, for every position (rows) and window centre (columns): the
    paper's worked example."""
    n, L = len(input_ids), lm.n_layers
    configs = [(pos, centre) for pos in range(n) for centre in range(L)]
    rows = [[]] + [[BlockAttention(window(c, k, L), [n - 1], [p])] for p, c in configs]
    probs = knockout_probs(lm, input_ids, rows, batch_size)
    target = int(probs[0].argmax())
    change = 100 * (probs[1:, target] - probs[0, target]) / probs[0, target]
    return pd.DataFrame(change.reshape(n, L).cpu().numpy(), index=pd.RangeIndex(n, name="position"),
                        columns=pd.RangeIndex(L, name="layer"))


def fact_flags(facts: pd.DataFrame) -> pd.DataFrame:
    """Per fact: where its subject starts. ``subject_at_start``: the subject is the first
    word of the prompt (position 0, or 1 after a sink token); ``subject_at_zero``: it
    covers position 0, the official code's ``is_subject_position_zero``."""
    return pd.DataFrame({
        "known_id": facts.known_id,
        "subject_at_start": facts.subject_first == facts.has_sink.astype(int),
        "subject_at_zero": facts.subject_first == 0,
        "subject_tokens": facts.subject_positions.map(len),
    })


def information_flow(lm, facts: pd.DataFrame, settings: FlowSettings, dataset: str = "known_1000",
                     name: str | None = None, progress: bool = True) -> pd.DataFrame:
    """:func:`flow_of_fact` over the facts, resumable, saved as ``results/<model>/<name>.csv``
    (one row per fact x source set x window centre, with the facts' subject flags).
    ``dataset`` names where the facts come from (finished facts are journaled by id)."""
    name = name or f"information_flow_{settings.sink}"
    params = {"dataset": str(dataset), "k": settings.k, "sink": settings.sink, "sets": list(settings.sets)}
    table = sweep(name, lm, params, as_facts(facts), lambda fact: flow_of_fact(lm, fact, settings), progress=progress)
    return table.merge(fact_flags(facts), on="known_id").assign(sink=settings.sink)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per source set: the deepest mean drop, the window centre where it occurs, and the
    contiguous range of centres around it where the mean drop is at least half as deep.
    Layers are counted from 0, as everywhere in this project (the paper's figures plot l + 1)."""
    rows = []
    for source, group in table.groupby("source", sort=False):
        curve = group.groupby("layer").relative_change.mean()
        deepest = curve.idxmin()
        lo = hi = deepest
        if curve[deepest] < 0:
            deep = curve <= curve[deepest] / 2
            while lo - 1 in deep.index and deep[lo - 1]:
                lo -= 1
            while hi + 1 in deep.index and deep[hi + 1]:
                hi += 1
        rows.append({"source": source, "facts": group.known_id.nunique(), "deepest_mean_change": curve[deepest],
                     "at_layer": deepest, "half_drop_from": lo, "half_drop_to": hi})
    return pd.DataFrame(rows)


def known_facts(lm, dataset="known_1000", n_facts: int | None = None, sink: str = "prepend",
                batch_size: int | str = 32) -> pd.DataFrame:
    """The model's known facts tokenized for the chosen sink handling.

    With ``sink="prepend"`` the prompts start with the sink token, which can change the
    model's prediction, so the known set is evaluated on those prompts (cached as
    ``results/<model>/facts_evaluated_sink.csv``); with ``"official"`` (or a tokenizer that
    adds a BOS anyway) it is notebook 00's known set.
    """
    if sink not in SINK_CHOICES:
        raise ValueError(f"sink must be one of {SINK_CHOICES}")
    adds_sink = lm.sink_token_id is not None and lm.encode("x")[0] == lm.sink_token_id
    table = known_set(lm, dataset, n_facts, None if sink == "official" or adds_sink else True, batch_size)
    return known_only(table, lm.name)


def mean_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Mean relative change per source set (columns) and window centre (rows, from 0)."""
    curves = table.pivot_table(index="layer", columns="source", values="relative_change", aggfunc="mean")
    return curves[[s for s in SOURCE_SETS if s in curves.columns]]


__all__ = [
    "FlowSettings", "PAPER_SETS", "SINK_CHOICES", "SINK_WORDS", "SOURCE_SETS", "default_window", "fact_flags",
    "flow_of_fact", "flow_of_fact_unbatched", "information_flow", "knockout_probs", "known_facts", "mean_curves",
    "position_heatmap", "summarize",
]
