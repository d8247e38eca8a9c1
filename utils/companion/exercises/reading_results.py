"""Checkers of the reading exercises (notebook 05 of the exercises): questions about this
model's own results, answered by reading a figure or a table, and checked against the
committed results through the ledger's own functions (so that an answer key never drifts
from the numbers); the ledger's rule for claim 8; and a fact of the student's choice,
dissected."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...paper import ledger
from ...paper.rules import MOST
from ...paths import PROJECT_ROOT, output_root
from ...runs.results import load_table
from ..dissect import DissectError, dissect
from .common import ExerciseFailed, _cached, _call, _fail, _passed, model

PAPER_PROMPT = "Beats Music is owned by"
SHARE = "facts whose extraction stops, last -> subject blocked (renormalised)"
DIFFERENCE = "subject blocked minus non-subject blocked (the paper's set"


def results_root(name: str | None, table: str) -> Path:
    """Where to read ``table`` of model ``name``: the output root when a run wrote it there (your
    own ``make reproduce``), else the repository's committed results (the tests, or a
    ``DISSECT_OUTPUT_ROOT`` that holds other runs)."""
    if load_table(table, name) is not None:
        return output_root()
    return PROJECT_ROOT


def _results(lm) -> ledger.ModelResults:
    name, table = lm.name, "information_flow_prepend"
    root = results_root(name, table)
    r = _cached(("results", name, root), lambda: ledger.ModelResults.load(name, root=root, names=[table]))
    if r.table(table) is None:
        raise ExerciseFailed(f"no information-flow results for {name} under results/: run notebook 01 for it first "
                             f"(make reproduce MODEL={name}), then this check")
    return r


def dip_layer(r: ledger.ModelResults, source: str) -> int:
    """The window centre where blocking the last position from ``source`` hurts most on average:
    the layer claims 1-3 of the ledger (and the lab's slide) locate, by the ledger's own function."""
    return ledger.flow_dip(r, source).layer


# --------------------------------------------------------------------------------------
# 05.1 reading the information flow


def check_flow_reading(fn, lm=None) -> None:
    """05.1 ``fn() -> dict(relation_layer=int, subject_layer=int, first=str)``: read off notebook 01's
    figure for this model where blocking the relation (the non-subject positions) and the
    subject from the last position hurts most, and which comes first."""
    ex, lm = "05.1 flow_reading", model(lm)
    got = _call(ex, fn)
    if not isinstance(got, dict) or not {"relation_layer", "subject_layer", "first"} <= set(got):
        raise ExerciseFailed(f"{ex}: return a dict with the keys 'relation_layer', 'subject_layer' and 'first', "
                             f"got {got!r}")
    r = _results(lm)
    want = {"relation_layer": dip_layer(r, "non-subject"), "subject_layer": dip_layer(r, "subject")}
    answer = {k: got[k] for k in want}
    if answer == {"relation_layer": want["subject_layer"], "subject_layer": want["relation_layer"]} and \
            want["relation_layer"] != want["subject_layer"]:
        _fail(ex, f"{lm.name}'s two layers", want, answer, "the two layers are swapped: the relation is the "
              "*non-subject* curve (the positions before the last that are not the subject); the subject has its own")
    for key, layer in want.items():
        value = got[key]
        if not isinstance(value, (int, np.integer)):
            raise ExerciseFailed(f"{ex}: {key} is a layer number (an int), got {value!r}")
        if abs(int(value) - layer) > 1:
            source = "non-subject" if key == "relation_layer" else "subject"
            _fail(ex, f"{key} of {lm.name}", f"the layer where the mean {source} curve is deepest", value,
                  "read the layer (a window centre) where the curve is *lowest* (the largest drop of the prediction's "
                  f"probability), in notebook 01's figure or in results/{lm.name}/information_flow_summary.csv "
                  "(column at_layer, the rows with sink = prepend and facts_group = all)")
    order = "relation" if want["relation_layer"] < want["subject_layer"] else (
        "subject" if want["subject_layer"] < want["relation_layer"] else "same")
    if got["first"] != order:
        _fail(ex, "which comes first", order, got["first"], "'relation', 'subject' or 'same': the one whose "
              "drop comes at the lower layer, by your two layers and by the results")
    exact = all(int(got[k]) == v for k, v in want.items())
    _passed(ex, f"{lm.name}: relation at layer {want['relation_layer']}, subject at layer {want['subject_layer']}"
                f" ({'exact' if exact else 'within one layer'}); the paper's order is relation first: "
                f"{'the same here' if order == 'relation' else 'not so here'}")


# --------------------------------------------------------------------------------------
# 05.2 the ledger's rule for claim 8


def check_claim_8_verdict(fn, lm=None) -> None:
    """05.2 ``fn(share, difference) -> str``: claim 8's verdict from its two measures, each a
    ``(value, ci_low, ci_high)`` triple, by the ledger's rule; checked on every model of the
    committed ledger and on made-up measures that tell the rule from its look-alikes."""
    ex = "05.2 claim_8_verdict"
    table = load_table("ledger", None, root=results_root(None, "ledger"))  # results/ledger.csv, notebook 04's
    cases = []
    if table is not None:
        for name, rows in table[table.claim.astype(str) == "8"].groupby("model"):
            main = rows[rows.measure.str.startswith(SHARE)].iloc[0]
            diff = rows[rows.measure.str.startswith(DIFFERENCE)].iloc[0]
            cases.append((f"{name}'s ledger row", tuple(main[["value", "ci_low", "ci_high"]]),
                          tuple(diff[["value", "ci_low", "ci_high"]]), main.verdict))
    for share, difference in (((0.6, 0.45, 0.75), (0.2, 0.1, 0.3)), ((0.7, 0.55, 0.85), (0.1, -0.05, 0.25)),
                              ((0.7, 0.55, 0.85), (0.2, 0.05, 0.35)), ((0.4, 0.3, 0.5), (0.3, 0.2, 0.4)),
                              ((0.52, 0.5, 0.54), (0.3, 0.2, 0.4))):
        verdict = ledger._verdict(share[1] > MOST, difference[1] > 0)
        cases.append(("made-up measures", share, difference, verdict))
    for where, share, difference, want in cases:
        got = _call(ex, fn, share, difference)
        if got == want:
            continue
        if got not in ("holds", "partly", "does not hold"):
            raise ExerciseFailed(f"{ex}: return one of 'holds', 'partly', 'does not hold', got {got!r}")
        hint = ("the rule: 'most facts' holds only when the share's whole interval lies above one half (its "
                "ci_low > 0.5); 'more than with the non-subject blocked' only when the difference's interval excludes "
                "0 (ci_low > 0). Both: holds; the first only: partly; else: does not hold.")
        if share[0] > MOST >= share[1] and got != "does not hold":
            hint = (f"the share's value {share[0]} is above one half but its interval ({share[1]}, {share[2]}) is "
                    "not: a claim about most facts holds only when the whole interval lies above 0.5.")
        elif share[1] > MOST and difference[0] > 0 >= difference[1] and got == "holds":
            hint = (f"the difference's value {difference[0]} is positive, but its interval ({difference[1]}, "
                    f"{difference[2]}) includes 0: the comparison is not shown, so at most 'partly'.")
        raise ExerciseFailed(f"{ex}: wrong verdict for {where}: share {share}, difference {difference}\n"
                             f"  expected: {want!r}\n  got:      {got!r}\n  hint: {hint}")
    _passed(ex, f"{len(cases)} cases ({sum(c[0] != 'made-up measures' for c in cases)} from the committed ledger): "
                "the same verdicts as the ledger")


# --------------------------------------------------------------------------------------
# 05.3 your own fact, dissected


def check_my_fact(fn, lm=None) -> None:
    """05.3 ``fn(lm) -> dict(prompt, subject, attribute, known, extracting_layer, survives, differs)``:
    a fact of the student's choice, and what its dissection shows (read off ``d.figure()``)."""
    ex, lm = "05.3 my_fact", model(lm)
    got = _call(ex, fn, lm)
    keys = ("prompt", "subject", "attribute", "known", "extracting_layer", "survives", "differs")
    if not isinstance(got, dict) or not set(keys) <= set(got):
        raise ExerciseFailed(f"{ex}: return a dict with the keys {', '.join(keys)}; got {got!r}")
    if got["prompt"].strip() == PAPER_PROMPT:
        _fail(ex, "the prompt", "a fact of your own", got["prompt"], f"choose a fact of your own, not the paper's "
              f"example {PAPER_PROMPT!r}")
    try:
        d = _cached(("dissect", id(lm), got["prompt"], got["subject"], got["attribute"]),
                    lambda: dissect(lm, got["prompt"], got["subject"], got["attribute"]))
    except DissectError as err:
        raise ExerciseFailed(f"{ex}: dissect refused your fact: {err}") from None
    readings = {"known": d.known, "extracting_layer": d.extracting_layer,
                "survives": bool(d.tables["blocked"].set_index("variant").value.get("renormalised", 0))
                if len(d.tables["blocked"]) else None}
    where = {"known": "the figure's title (is the prediction the attribute's first token?)",
             "extracting_layer": "panel 3 (the dotted line: the layer where attention ranks the prediction first, "
                                 "or ranks it highest)",
             "survives": "panel 3's lower title (subject blocked: extraction survives or stops; None when no "
                         "attention update ranks the prediction first, so there is nothing to block)"}
    for key, want in readings.items():
        if got[key] != want:
            _fail(ex, f"{key}, read off the dissection of {got['prompt']!r}", want, got[key],
                  f"read it in {where[key]}. The dissection in words:\n{d.summary()}")
    if not isinstance(got["differs"], str) or len(got["differs"].split()) < 5:
        raise ExerciseFailed(f"{ex}: in `differs`, say in a sentence what differs from the paper's example "
                             "(Beats Music -> Apple): the layers, the prediction, the extracting head, ...")
    _passed(ex, f"{d.headline()}; extracting layer {d.extracting_layer}, extraction "
                f"{'survives' if readings['survives'] else 'stops'} with the subject blocked")


__all__ = ["check_flow_reading", "check_claim_8_verdict", "check_my_fact", "dip_layer"]
