"""Section 5's mechanisms resolved by extracting layer (and head), derived from the raw tables.

Why this module exists: pooled over layers, the blocked-extraction share of a model mixes
layers that extract in different ways. On gemma-3-270m, for instance, blocking the last
position from the subject leaves none of layer 12's events but most of layer 15's, and the
pooled share describes neither. So every section-5 measure is also given per extracting
layer, and per head where one head carries most of a layer's events, next to the pooled
value. Everything here is a pure function of the committed tables notebook 03 writes
(``extraction_layers``, ``extraction_patched``, ``extraction_head_mappings``) and of
notebook 01's ``information_flow_prepend``: no model is run, so the tables can be rebuilt
(and tested) from ``results/`` alone.

Conventions:

* layer ``-1`` in a table means pooled over every extracting layer, head ``-1`` every head;
* intervals are 95% bootstrap intervals over *facts* (a fact's rows travel together), with
  the ledger's resampling (:func:`utils.paper.ledger.bootstrap`, seeded);
* a head *dominates* a layer when its own share extracts in more than :data:`~utils.paper.rules.MOST`
  of that layer's events (the ledger's "most");
* a window of notebook 01 *hurts* when blocking the last position from the subject there
  lowers the prediction's probability by :data:`~utils.paper.rules.HURTS` % or more on
  average (the ledger's threshold, not a new one).
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pandas as pd

from .ledger import bootstrap
from .rules import HURTS, MOST, N_BOOT, RANK_TOP, SEED

POOLED = -1
"""The layer (or head) label of a row pooled over every layer (or head)."""


def _bootstrap_share(values: pd.DataFrame, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Share of the rows with value 1, and its interval, resampling the facts (``known_id``)."""
    per_fact = values.groupby("known_id").value.agg(["sum", "size"])
    hits, sizes = per_fact["sum"].to_numpy(float), per_fact["size"].to_numpy(float)
    if not len(per_fact):
        return float("nan"), float("nan"), float("nan")
    return bootstrap(len(per_fact), lambda i: hits[i].sum() / sizes[i].sum(), n_boot=n_boot, seed=seed)


def _events(layers: pd.DataFrame, projection: str) -> pd.DataFrame:
    """(known_id, layer) of every attention extraction event under ``projection``."""
    t = layers[(layers.measure == "attn") & (layers.projection == projection) & (layers.value == 1)]
    return t[["known_id", "layer"]].drop_duplicates()


# --------------------------------------------------------------------------------------
# Extraction events and the heads that carry them


def heads_by_layer(layers: pd.DataFrame, projection: str) -> pd.DataFrame:
    """Per extracting layer and head: the events whose head's own share ranks the prediction
    first, and their share of that layer's events (the heads of an event may overlap, so the
    shares of a layer can add up to more than 1); ``dominant`` where it exceeds ``MOST``."""
    events = _events(layers, projection)
    per_layer = events.groupby("layer").size()
    heads = layers[(layers.measure == "head") & (layers.projection == projection) & (layers.value == 1)]
    out = heads.groupby(["layer", "head"]).size().rename("events").reset_index()
    out["layer events"] = out.layer.map(per_layer).astype(int)
    out["share of the layer's events"] = out.events / out["layer events"]
    out["dominant"] = out["share of the layer's events"] > MOST
    return out.sort_values(["layer", "events"], ascending=[True, False]).reset_index(drop=True)


def dominant_heads(layers: pd.DataFrame, projection: str) -> dict[int, int]:
    """{layer: head} for the layers where one head carries most of the events."""
    h = heads_by_layer(layers, projection)
    h = h[h.dominant].sort_values("events", ascending=False).drop_duplicates("layer")
    return dict(zip(h.layer.astype(int), h["head"].astype(int)))


def events_by_layer(layers: pd.DataFrame, projection: str) -> pd.DataFrame:
    """Per layer with an attention extraction event: the events (one per fact at most), their
    share of all events, the MLP's events at the same layer, and the head carrying most of them."""
    events = _events(layers, projection)
    mlp = layers[(layers.measure == "mlp") & (layers.projection == projection) & (layers.value == 1)]
    out = events.groupby("layer").size().rename("attention events").reset_index()
    out["share of all events"] = out["attention events"] / max(len(events), 1)
    out["MLP events"] = out.layer.map(mlp.groupby("layer").size()).fillna(0).astype(int)
    heads = heads_by_layer(layers, projection).drop_duplicates("layer").set_index("layer")
    out["top head"] = out.layer.map(heads["head"]).fillna(-1).astype(int)
    out["top head's share"] = out.layer.map(heads["share of the layer's events"])
    pooled = {"layer": POOLED, "attention events": len(events), "share of all events": 1.0,
              "MLP events": len(mlp), "top head": POOLED, "top head's share": np.nan}
    return pd.concat([out, pd.DataFrame([pooled])], ignore_index=True)


# --------------------------------------------------------------------------------------
# Blocked extraction (E6) per extracting layer and dominant head


def blocked_by_layer(layers: pd.DataFrame, projection: str, variant: str = "renormalised",
                     conditions=None, n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Share of attention extraction events that survive each blocked set ``condition``
    (last position -> that set, blocked at the extracting layer), per extracting layer
    (``head`` -1), for the events of that layer's dominant head (``head`` h: the events where
    h's own share extracts), and pooled (``layer`` -1), with intervals over facts."""
    blocked = layers[(layers.measure == "blocked") & (layers.projection == projection) & (layers.variant == variant)]
    if conditions is not None:
        blocked = blocked[blocked.condition.isin(list(conditions))]
    heads = layers[(layers.measure == "head") & (layers.projection == projection) & (layers.value == 1)]
    groups = [(POOLED, POOLED, blocked)]
    for layer, rows in blocked.groupby("layer"):
        groups.append((int(layer), POOLED, rows))
    for layer, head in dominant_heads(layers, projection).items():
        ids = set(heads[(heads.layer == layer) & (heads["head"] == head)].known_id)
        groups.append((layer, head, blocked[(blocked.layer == layer) & blocked.known_id.isin(ids)]))
    rows = []
    for layer, head, group in groups:
        for condition, sub in group.groupby("condition", sort=False):
            value, lo, hi = _bootstrap_share(sub, n_boot, seed)
            rows.append({"layer": layer, "head": head, "condition": condition, "variant": variant,
                         "events": len(sub), "facts": sub.known_id.nunique(), "surviving": value,
                         "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["layer", "head", "condition", "variant", "events", "facts", "surviving",
                                       "ci_low", "ci_high"])


# --------------------------------------------------------------------------------------
# Patching (E7) per clean extracting layer


def patched_by_layer(patched: pd.DataFrame, layers: pd.DataFrame, projection: str) -> pd.DataFrame:
    """Share of facts where attention still extracts (at some layer) after patching, per
    positions patched and source layer, for the facts whose *clean* attention extracts at
    each layer (a fact extracting at two layers is in both groups), and for all facts
    (``layer`` -1). The patched table records extraction at any layer, so a group's share
    can include events at another layer; what it isolates is which facts are patched."""
    events = _events(layers, projection)
    groups = [(POOLED, set(patched.known_id))] + [(int(layer), set(g.known_id)) for layer, g in events.groupby("layer")]
    rows = []
    for layer, ids in groups:
        sub = patched[patched.known_id.isin(ids)]
        for (positions, source), g in sub.groupby(["positions", "source_layer"]):
            rows.append({"layer": layer, "positions": positions, "source_layer": int(source), "facts": len(g),
                         "still extracting": g.extracted.mean()})
    return pd.DataFrame(rows, columns=["layer", "positions", "source_layer", "facts", "still extracting"])


# --------------------------------------------------------------------------------------
# Section 3 meets section 5: notebook 01's windows at each extracting layer


def _window(text) -> list[int]:
    return [int(x) for x in (ast.literal_eval(text) if isinstance(text, str) else text)]


def hurting_windows(prepend: pd.DataFrame, source: str = "subject") -> pd.DataFrame:
    """Notebook 01's windows (centre ``layer``, its layers ``window``) with the mean change
    (%) of the prediction's probability when the last position cannot attend to ``source``
    there, and whether that change ``hurts`` (<= ``HURTS``)."""
    t = prepend[prepend.source == source]
    out = t.groupby("layer").agg(window=("window", "first"), mean_change=("relative_change", "mean"),
                                 facts=("known_id", "nunique")).reset_index()
    out["window"] = out.window.map(_window)
    out["hurts"] = out.mean_change <= HURTS
    return out


def mechanism_by_layer(layers: pd.DataFrame, prepend: pd.DataFrame | None, projection: str,
                       variant: str = "renormalised", n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Per extracting layer: its events, whether it lies inside notebook 01's windows where
    blocking the subject hurts (and which centres), and the share of its events that *need
    the subject* (blocking last -> subject stops them) versus those that *need only the last
    position* (they survive "all but last", where the last position sees only itself)."""
    blocked = blocked_by_layer(layers, projection, variant, ("subject", "all but last"), n_boot, seed)
    blocked = blocked[blocked["head"] == POOLED]
    windows = hurting_windows(prepend) if prepend is not None else None
    rows = []
    for layer, group in blocked.groupby("layer", sort=True):
        by = group.set_index("condition")
        row = {"layer": int(layer), "events": int(by.events.iloc[0]), "facts": int(by.facts.iloc[0])}
        if windows is not None and layer != POOLED:
            inside = windows[windows.window.map(lambda w: layer in w)]
            hurting = inside[inside.hurts]
            row.update({"hurting windows containing it": len(hurting),
                        "their centres": ", ".join(str(c) for c in hurting.layer) or "none",
                        "inside a hurting window": bool(len(hurting)),
                        "deepest subject change here (%)": inside.mean_change.min() if len(inside) else np.nan})
        s, a = by.loc["subject"], by.loc["all but last"]
        row.update({"need the subject": 1 - s.surviving, "need the subject ci_low": 1 - s.ci_high,
                    "need the subject ci_high": 1 - s.ci_low, "need only the last position": a.surviving,
                    "need only the last position ci_low": a.ci_low, "need only the last position ci_high": a.ci_high})
        rows.append(row)
    out = pd.DataFrame(rows, columns=["layer", "events", "facts"]) if not rows else pd.DataFrame(rows)
    return pd.concat([out[out.layer != POOLED], out[out.layer == POOLED]], ignore_index=True)


# --------------------------------------------------------------------------------------
# W_V W_O mappings: a control for string overlap


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[^\W_]+", str(text).lower()) if len(w) >= 2]


STEM = 4
"""Characters two words must share from their start to count as one stem (Bulgaria/Bulgarian,
Vietnam/Vietnamese, England/English; France/French, sharing two, do not)."""


def string_overlap(subject: str, attribute: str) -> bool:
    """Whether the attribute shares a word or a stem with the subject: some word of each
    (case folded) is equal, or both have at least ``STEM`` characters and share the first
    ``STEM``. A head mapping such a subject to its attribute may be copying a string,
    not recalling a fact."""
    for a in _words(attribute):
        for s in _words(subject):
            if a == s or (len(a) >= STEM and len(s) >= STEM and a[:STEM] == s[:STEM]):
                return True
    return False


def _attribute_text(value) -> str:
    """The attribute as the table stores it (a JSON-quoted token, e.g. '" Greek"'), as text."""
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def with_copies(mappings: pd.DataFrame) -> pd.DataFrame:
    """The mapping table with ``string overlap``: the attribute shares a word or stem with the subject (a copy)."""
    return mappings.assign(**{"string overlap": [string_overlap(s, _attribute_text(a))
                                 for s, a in zip(mappings.subject, mappings.attribute)]})


def mapping_stats(mappings: pd.DataFrame) -> pd.DataFrame:
    """Per head, for all its facts, the copies and the non-copies: facts, the attribute's median
    rank and share in the top ``RANK_TOP`` under the head's W_V W_O mapping from the subject's
    tokens, and the control's (the other attributes') median rank and top share."""
    m = with_copies(mappings)
    parts = [("all", m), ("copies", m[m["string overlap"]]), ("not copies", m[~m["string overlap"]])]
    rows = []
    for name, part in parts:
        for (layer, head), d in part.groupby(["layer", "head"]):
            rows.append({"layer": int(layer), "head": int(head), "facts": name, "n": len(d),
                         "median rank": d.rank_best.median(), f"top-{RANK_TOP}": (d.rank_best < RANK_TOP).mean(),
                         "control median": d.control_median_rank.median(),
                         f"control top-{RANK_TOP}": d.control_top10.mean(),
                         f"excess top-{RANK_TOP}": (d.rank_best < RANK_TOP).mean() - d.control_top10.mean()})
    return pd.DataFrame(rows, columns=["layer", "head", "facts", "n", "median rank", f"top-{RANK_TOP}",
                                       "control median", f"control top-{RANK_TOP}", f"excess top-{RANK_TOP}"])


def mapping_examples(mappings: pd.DataFrame, per_head: int = 3) -> pd.DataFrame:
    """The examples a reader is shown: per head, the ``per_head`` facts whose attribute ranks
    best under the mapping, chosen among the facts whose attribute does *not* overlap the
    subject's string (a copy shows nothing about stored knowledge)."""
    m = with_copies(mappings)
    kept = m[~m["string overlap"]].sort_values("rank_best")
    return kept.groupby(["layer", "head"]).head(per_head).reset_index(drop=True)


__all__ = ["POOLED", "STEM", "blocked_by_layer", "dominant_heads", "events_by_layer", "heads_by_layer",
           "hurting_windows", "mapping_examples", "mapping_stats", "mechanism_by_layer", "patched_by_layer",
           "string_overlap", "with_copies"]
