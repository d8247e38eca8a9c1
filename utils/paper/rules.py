"""The rules that judge the paper's claims: written down before any number is computed, the
same for every model, and kept in a file of their own so that they can be read and diffed
apart from the code that measures.

The rules say what the claims' words say: "most" holds only when the interval lies above 0.5;
a comparison names both sides and holds only when the interval of the difference excludes 0
in the claimed direction. Each claim has a main effect in the direction the paper states. "does not hold": the interval
does not establish that effect; "partly": it does, but another part of the claim (a size, a
place in the model, a comparison) fails; "holds": every part passes; "not measured": a table
is missing or has fewer than :data:`MIN_FACTS` facts, and the cell says why.
:mod:`utils.paper.ledger` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------
# The rules' constants: fixed before any number is computed, the same for every model.

N_BOOT = 1000
"""Bootstrap resamples of the facts."""
SEED = 0
MIN_FACTS = 10
"""Fewer facts than this behind a claim: "not measured"."""
BANDS = {"early-to-middle": (0.0, 0.6), "middle-to-upper": (0.4, 1.0), "upper": (0.5, 1.0)}
"""Bands of relative depth. GPT-2 XL's relation dip (layers 7-10 of 48 on the figure's
1-based axis) lies at 0.13-0.19, its subject dip (32-35) at 0.66-0.72."""
HURTS = -20.0
"""A mean change of the prediction's probability at least this negative (%) "hurts"."""
BARELY = 10.0
"""A mean change smaller than this in size (%) "barely matters"."""
ORDER_GAP = 0.1
"""Relative depth by which the subject's dip must follow the relation's (5 layers of 48)."""
EARLY_WINDOWS = 1 / 3
"""Knockout windows that start in this first share of the layers below the representation layer."""
MLP_DROP = 25.0
"""Relative drop (%) of the attributes rate that early MLP knockouts must cause."""
MOST = 0.5
""""Most": the interval lies above one half."""
FEW = 0.25
RANK_TOP = 10
"""An attribute "ranks low" in the subject representation when 10 or more tokens outrank it."""
HEAD_EXCESS = 0.2
"""Share of facts with the attribute in a head's top 10, above the control's share."""
VERDICTS = ("holds", "partly", "does not hold", "not measured")

TABLES = {  # the raw tables the claims read, and the notebook that writes each
    "information_flow_prepend": "01",
    "attributes_rate": "02",
    "sublayer_knockout_official": "02",
    "sublayer_knockout_zero": "02",
    "extraction_layers": "03",
    "extraction_patched": "03",
    "extraction_head_mappings": "03",
}


@dataclass(frozen=True)
class Rule:
    claim: str
    text: str
    table: str
    measure: str
    holds: str
    partly: str
    fails: str = "otherwise"


_lo, _hi = BANDS["early-to-middle"], BANDS["middle-to-upper"]
RULES = (
    Rule("1", "Blocking the last position from the relation (non-subject) positions hurts the prediction in "
         "early-to-middle layers", "information_flow_prepend",
         "deepest mean change (%) of the prediction's probability over window centres, at that centre; its depth",
         f"CI below 0, value <= {HURTS:g}%, depth in [{_lo[0]}, {_lo[1]}]", "CI below 0"),
    Rule("2", "Blocking the last position from the subject hurts the prediction in middle-to-upper layers",
         "information_flow_prepend", "as claim 1, for the subject positions",
         f"CI below 0, value <= {HURTS:g}%, depth in [{_hi[0]}, {_hi[1]}]", "CI below 0"),
    Rule("3", "The relation's dip comes before the subject's", "information_flow_prepend",
         "depth of the subject's deepest mean change minus the relation's, both re-located on the resampled facts' "
         "mean curves in every resample (the note says how often each stays at its layer)",
         f"CI above 0, value >= {ORDER_GAP}", "CI above 0"),
    Rule("4", "Blocking the last position from itself barely matters", "information_flow_prepend",
         "largest mean change (%) in size over window centres, at that centre",
         f"CI inside (-{BARELY:g}, {BARELY:g})%", f"value inside (-{2 * BARELY:g}, {2 * BARELY:g})%"),
    Rule("5", "The attributes rate at the last subject token rises in the early-to-middle layers above the "
         "static-embedding baseline and above the other positions", "attributes_rate",
         f"in the early-to-middle band (depth <= {_lo[1]}): the last subject token's peak mean rate minus the "
         "static-embedding baseline (points); that peak minus the best other position's peak in the same band "
         "(points)",
         "both differences' CI above 0", "the baseline difference's CI above 0"),
    Rule("5b", "(this project's control, not the paper's) The rate at the last subject token is specific to the "
         "subject: above the rate against another subject's attribute set", "attributes_rate",
         "rate minus control rate at the subject-last peak (points)",
         "CI above 0, excess >= half the rate", "CI above 0"),
    Rule("6", "Early MLP windows, more than early attention windows, build the attributes rate (official knockouts)",
         "sublayer_knockout_official",
         f"relative drop (%) of the rate under MLP knockouts of windows starting in the first "
         f"{EARLY_WINDOWS:.2g} of the layers below the representation layer; the same under attention knockouts; "
         "MLP drop minus attention drop (points)",
         f"MLP drop CI above 0 and >= {MLP_DROP:g}%, difference CI above 0", "MLP drop CI above 0"),
    Rule("6b", "As 6, with the knocked-out updates zeroed (attention not made uniform)", "sublayer_knockout_zero",
         "as 6", f"MLP drop CI above 0 and >= {MLP_DROP:g}%, difference CI above 0", "MLP drop CI above 0"),
    Rule("7", "Attention updates extract the attribute more often than MLP updates, in the upper layers",
         "extraction_layers", "share of facts where attention extracts at some layer minus the MLP's share; share "
         f"of attention's events at depth >= {BANDS['upper'][0]}",
         f"difference CI above 0, upper share CI above {MOST}", "difference CI above 0"),
    Rule("8", "Blocking the last position from the subject at the extracting layer removes most extraction, more "
         "than blocking it from the non-subject positions", "extraction_layers",
         "share of facts with an attention event where blocking last -> subject edges (renormalised) stops "
         "extraction at every extracting layer; that share minus the share blocking last -> non-subject stops (the "
         "paper's non-subject set: every position before the last not in the subject, and the last position itself)",
         f"share CI above {MOST}, difference CI above 0", f"share CI above {MOST}"),
    Rule("9", "Patching early subject states into the subject positions reduces extraction (patching other "
         "positions less)", "extraction_patched", "relative reduction of the share of facts where attention "
         "extracts, subject positions patched with the earliest source layer; mean extraction rate over source "
         "layers, other positions' minus the subject's", "reduction CI above 0, difference CI above 0",
         "reduction CI above 0"),
    Rule("10", "Where attention extracts the attribute, it ranks low in the subject representation itself",
         "extraction_layers", f"share of attention extraction events where >= {RANK_TOP} tokens outrank the "
         "attribute in the last-subject representation (output of the layer)", f"CI above {MOST}",
         f"CI above {FEW}"),
    Rule("11", "Some heads' W_V W_O map subject tokens to their attributes", "extraction_head_mappings",
         f"best head (>= {MIN_FACTS} facts where it extracts): share of facts with the attribute in the top "
         f"{RANK_TOP} of its mapping minus the control's share",
         f"CI above 0, value >= {HEAD_EXCESS}", "CI above 0"),
)
CLAIM_TEXT = {r.claim: r.text for r in RULES}


SECTIONS = {"01": ("1", "2", "3", "4"), "02": ("5", "5b", "6", "6b"), "03": ("7", "8", "9", "10", "11")}
"""The claims each section notebook judges (and prints, from the ledger, at its end)."""
LAYER_SHARE = 0.1
"""Claims 8 and 9 are also reported per extracting layer when more than one layer carries at
least this share of the events (pooled layers can hide two mechanisms)."""


def rule_words(claim: str) -> str:
    """A claim's rule in one line (the ledger's ``rule`` column)."""
    rule = next(r for r in RULES if r.claim == claim)
    return f"holds: {rule.holds}; partly: {rule.partly}; does not hold: {rule.fails}"


def rules_table() -> pd.DataFrame:
    """The rules, one row per claim (printed by notebook 04 before any number)."""
    return pd.DataFrame([r.__dict__ for r in RULES]).rename(columns={"fails": "does not hold"})


def depth(layer, n_layers: int):
    """Relative depth of a 0-based layer: 0 (first layer) to 1 (last)."""
    return np.asarray(layer, dtype=float) / max(n_layers - 1, 1)


__all__ = ["BANDS", "CLAIM_TEXT", "LAYER_SHARE", "MIN_FACTS", "N_BOOT", "RULES", "Rule", "SECTIONS", "SEED", "TABLES",
           "VERDICTS", "depth", "rule_words", "rules_table"]
