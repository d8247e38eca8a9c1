"""The README's "What the notebooks find" section, generated from ``results/``.

Prose that quotes numbers drifts from the numbers when a run changes them. So the section
between the README's ``<!-- findings:begin -->`` and ``<!-- findings:end -->`` markers is
:data:`TEMPLATE` filled with values computed here from the committed raw tables and the
claims ledger (``results/ledger.csv``), never typed by hand, and the three lines between
``<!-- summary:begin -->`` and ``<!-- summary:end -->`` near the README's top say, from the
ledger alone, which of the paper's three steps replicate on which model (:func:`summary`).
``python -m utils.companion.findings`` (``make readme``) rewrites both; ``--check`` exits with
1 and prints the difference when the README is not what the results give, which
``tests/test_readme.py`` asserts.

Layers are numbered from 0, as everywhere in the project.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from ..paper import ledger, rules
from ..paper.information_flow import summarize
from ..paths import PROJECT_ROOT
from ..runs.results import check_same_run, load_meta, load_table

README = PROJECT_ROOT / "README.md"
BEGIN, END = "<!-- findings:begin -->", "<!-- findings:end -->"
SUMMARY_BEGIN, SUMMARY_END = "<!-- summary:begin -->", "<!-- summary:end -->"
STEPS = {"01": "§3 the relation and the subject flow to the last position (notebook 01)",
         "02": "§4 early MLPs enrich the subject (notebook 02)",
         "03": "§5 attention extracts the attribute from the subject (notebook 03)"}
"""The paper's three steps, one summary line each, judged on the claims of :data:`rules.SECTIONS`."""
CONTROLS = ("5b", "6b")
"""This project's controls: in the ledger, not in the summary of the paper's claims."""
MODELS = {"g": "gemma-3-270m", "s": "smollm2-135m"}  # template name -> model
READ = ("extraction_layers", "information_flow_prepend", "information_flow_official", "attributes_rate",
        "sublayer_knockout_official", "sublayer_knockout_zero", "extraction_patched", "extraction_head_mappings")
"""The raw tables the findings quote, which must all come from one run of one model."""


def _dips(table: pd.DataFrame) -> dict[str, SimpleNamespace]:
    """Per source set, the deepest point of its mean information-flow curve (0-based window
    centre, %) and the contiguous centres around it where the mean drop is at least half as
    deep (:func:`utils.paper.information_flow.summarize`)."""
    return {row.source: SimpleNamespace(layer=int(row.at_layer), change=float(row.deepest_mean_change),
                                        first=int(row.half_drop_from), last=int(row.half_drop_to))
            for row in summarize(table).itertuples()}


def model_values(model: str, root: Path = PROJECT_ROOT) -> SimpleNamespace:
    """Everything the findings quote for one model, from its raw tables (refused when they
    come from different runs or models: :func:`utils.runs.results.check_same_run`)."""
    check_same_run({name: load_meta(name, model, root) for name in READ}, where=f"results/{model}/")

    def table(name):
        found = load_table(name, model, root=root)
        if found is None:
            raise FileNotFoundError(f"results/{model}/{name}.csv is missing: run the notebooks for {model}")
        return found

    v = SimpleNamespace(model=model, n_layers=load_meta("extraction_layers", model, root)["n_layers"])
    layers = table("extraction_layers")
    v.known = layers.known_id.nunique()

    flow = table("information_flow_prepend")
    dips = _dips(flow)
    v.relation, v.subject, v.subject_last = (dips[s] for s in ("non-subject", "subject", "subject-last"))
    v.official_relation = _dips(table("information_flow_official"))["non-subject"]

    rates = table("attributes_rate")
    rated = rates[rates.attributes_rate.notna()]
    v.rated = rated.known_id.nunique()
    means = rated[rated.layer >= 0].pivot_table(index="layer", columns="position", values="attributes_rate")
    controls = rated[rated.layer >= 0].pivot_table(index="layer", columns="position", values="control_rate")
    peak = means["subject last"].idxmax()
    v.ar_peak, v.ar_peak_layer = float(means["subject last"].max()), int(peak)
    v.ar_control = float(controls.loc[peak, "subject last"])
    v.ar_last, v.ar_last_layer = float(means["input last"].max()), int(means["input last"].idxmax())

    meta = load_meta("sublayer_knockout_official", model, root)
    v.repr_layer = meta["params"]["repr_layer"]
    for variant in ("official", "zero"):
        ko = table(f"sublayer_knockout_{variant}")
        early = ko[ko.start < rules.EARLY_WINDOWS * (ko.start.max() + 1)]
        rate = early.groupby("sublayer").attributes_rate.mean()
        setattr(v, variant, SimpleNamespace(none=rate["none"], mlp=rate["mlp"], attn=rate["attn"],
                                            first=int(early.start.min()), last=int(early.start.max())))

    run = layers[layers.projection == ledger.ModelResults.load(model, root).projection]
    share = {(p, m): layers[(layers.projection == p) & (layers.measure == m)].groupby("known_id").value.max().mean()
             for p in ("paper", "logit_lens") for m in ("attn", "mlp")}
    v.attn, v.mlp = share[("logit_lens", "attn")], share[("logit_lens", "mlp")]
    v.attn_paper, v.mlp_paper = share[("paper", "attn")], share[("paper", "mlp")]
    events = run[run.measure == "attn"]
    per_layer = events.groupby("layer").value.sum()
    v.attn_top_layer, v.attn_top_share = int(per_layer.idxmax()), per_layer.max() / per_layer.sum()

    patched = table("extraction_patched")
    first = patched[(patched.positions == "subject") & (patched.source_layer == patched.source_layer.min())]
    v.patched = first.extracted.mean()

    heads = run[(run.measure == "head") & (run.value == 1)].groupby(["layer", "head"]).size()
    n_events = len(run[run.measure == "head"].groupby(["known_id", "layer"]))
    (v.head_layer, v.head), v.head_share = heads.idxmax(), heads.max() / n_events
    mappings = table("extraction_head_mappings")
    best = mappings[(mappings.layer == v.head_layer) & (mappings["head"] == v.head)].sort_values(["rank_best", "known_id"]).iloc[0]
    v.example_subject, v.example_attribute = best.subject, best.attribute.strip()

    any_layer = layers[(layers.measure == "blocked_any") & (layers.variant == "official")]
    v.any_none = any_layer[any_layer.condition == "none"].value.mean()
    v.any_subject = any_layer[any_layer.condition == "subject"].value.mean()

    long = _ledger(root)
    v.blocking = blocking_by_layer(model, root)
    v.baseline = float(_row(long, model, "5", "static-embedding baseline (%)").value)
    v.band_peak = float(_row(long, model, "5", "band peak rate (%)").value)
    verdict = _row(long, model, "5", "").verdict
    v.claim5 = {"holds": "holds", "partly": "holds only in part", "does not hold": "does not hold"}.get(verdict, verdict)
    return v


def _ledger(root: Path) -> pd.DataFrame:
    long = load_table("ledger", None, root=root)
    if long is None:
        raise FileNotFoundError("results/ledger.csv is missing: run notebook 04")
    if "unit" not in long or "in_cell" not in long:
        raise ValueError("results/ledger.csv predates the ledger's unit and rule columns: rerun notebook 04")
    return long


def ledger_table(root: Path = PROJECT_ROOT) -> str:
    """The committed ledger (results/ledger.csv) as a markdown table: per claim and model the
    measures its cell shows (the main one; both sides of a comparison), with units and 95%
    intervals, and the verdict (:func:`utils.paper.ledger.cell_text`)."""
    long = _ledger(root)
    models = [m for m in MODELS.values() if m in set(long.model)]
    lines = ["| claim | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for claim, group in long.groupby("claim", sort=False):
        cells = []
        for model in models:
            text = ledger.cell_text(group[group.model == model]).replace("|", "/")
            verdict = group[group.model == model].iloc[0].verdict
            cells.append(text if verdict == "not measured" else f"**{verdict}**: " + text.rsplit(": ", 1)[0])
        lines.append(f"| {claim}. {rules.CLAIM_TEXT[claim]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(root: Path = PROJECT_ROOT) -> str:
    """Three lines, one per step of the paper: on each model, how many of the step's claims
    hold, and which hold partly or do not (the ledger's verdicts; this project's controls
    5b and 6b left out)."""
    long = _ledger(root).drop_duplicates(["claim", "model"])
    models = [m for m in MODELS.values() if m in set(long.model)]
    lines = []
    for section, step in STEPS.items():
        claims = [c for c in rules.SECTIONS[section] if c not in CONTROLS]
        parts = []
        for model in models:
            verdicts = long[(long.model == model) & long.claim.isin(claims)].set_index("claim").verdict
            held = [c for c in claims if verdicts.get(c) == "holds"]
            rest = {v: [c for c in claims if verdicts.get(c) == v] for v in rules.VERDICTS[1:]}
            word = ("replicates" if len(held) == len(claims) else "does not replicate" if not held and not rest["partly"]
                    else "replicates in part")
            detail = "; ".join(f"{v}: {', '.join(cs)}" for v, cs in rest.items() if cs)
            parts.append(f"{model} {word} ({len(held)} of {len(claims)} claims hold" + (f"; {detail}" if detail else "")
                         + ")")
        lines.append(f"- **{step}**, claims {', '.join(claims)}: " + "; ".join(parts) + ".")
    lead = ("Which of the paper's three steps replicate, from the claims ledger (`results/ledger.csv`, notebook 04; "
            "rules in [`utils/paper/rules.py`](utils/paper/rules.py)):")
    return lead + "\n\n" + "\n".join(lines) + "\n"


def _row(long: pd.DataFrame, model: str, claim: str, starts: str) -> pd.Series | None:
    rows = long[(long.model == model) & (long.claim == claim) & long.measure.fillna("").str.startswith(starts)]
    return rows.iloc[0] if len(rows) else None


def blocking_by_layer(model: str, root: Path = PROJECT_ROOT) -> str:
    """Claim 8 in words from the ledger's rows: the pooled share of facts whose extraction
    stops with the subject blocked, against the paper's non-subject set, then the same per
    extracting layer where the ledger splits it (a pooled share can hide two mechanisms)."""
    long = _ledger(root)
    main = _row(long, model, "8", "facts whose extraction stops, last -> subject blocked (renormalised)")
    if main is None:
        return f"On {model} claim 8 is not measured."
    other = _row(long, model, "8", "facts whose extraction stops, last -> non-subject blocked (the paper's set")
    text = (f"Blocking the last position from the subject at the extracting layer stops extraction in "
            f"{main.value:.0%} [{main.ci_low:.0%}, {main.ci_high:.0%}] of the {main.n} facts with an event (claim 8 "
            f"**{main.verdict}**: \"most\" needs the interval above one half)")
    if other is not None:
        text += (f", and blocking it from the paper's non-subject set (which holds the last position) stops "
                 f"{other.value:.0%} [{other.ci_low:.0%}, {other.ci_high:.0%}]")
    layers = long[(long.model == model) & (long.claim == "8")
                  & long.measure.fillna("").str.match(r"events whose extraction stops, last -> subject blocked, at layer")]
    if len(layers):
        each = []
        for row in layers.itertuples():
            layer = row.measure.rsplit(" ", 1)[1]
            ns = _row(long, model, "8", f"events whose extraction stops, last -> non-subject blocked, at layer {layer}")
            each.append(f"at layer {layer} ({row.n} events) blocking the subject stops {row.value:.0%} "
                        f"[{row.ci_low:.0%}, {row.ci_high:.0%}] of them" + (f" (the non-subject set: {ns.value:.0%})"
                                                                           if ns is not None else ""))
        text += ". Split by extracting layer, the pooled share mixes mechanisms: " + "; ".join(each)
    return text + "."


TEMPLATE = """\
Every number below is computed by the notebooks on **{g.model}** ({g.known} known facts of known_1000,
fp32, CPU) and read back from `results/{g.model}/` by [`utils/companion/findings.py`](utils/companion/findings.py) (`make readme`
writes this section; a test fails when it differs from the results). Layers are numbered from 0 (the paper's
figures count from 1). The paper's models are GPT-2 XL and GPT-J; where a finding does not carry over to a
270M-parameter model, the notebooks say so.

![{g.model} information flow](figures/{g.model}/information_flow.png)

**Information flow (§3, notebook 01).** Blocking the last position from attending to the relation
(non-subject) positions hurts most around layer {g.relation.layer} of {g.n_layers} ({g.relation.change:.0f}% in the
prediction's probability), and blocking it from the subject around layers {g.subject.first}–{g.subject.last}
({g.subject.change:.0f}% at layer {g.subject.layer}); blocking it from itself barely matters. The relation reaches the
prediction first, then the subject — the paper's ordering ({s.model}: layers {s.relation.layer} and
{s.subject.layer} of {s.n_layers}). Unlike in the paper, the subject's last token alone carries only part of it
({g.subject_last.change:.0f}% vs {g.subject.change:.0f}%). The prompt starts with the model's sink token, kept out
of every position set; `sink="official"` gives the official code's sets, in which Gemma's `<bos>` falls into the
non-subject set and moves its peak to layer {g.official_relation.layer}.

**Subject enrichment (§4, notebook 02).** With the offline attribute proxy (below; it covers {g.rated} of the
{g.known} facts), the attributes rate at the last subject token rises in the upper layers to {g.ar_peak:.1f}% at
layer {g.ar_peak_layer} (another subject's attribute set: {g.ar_control:.1f}%), but the last input position is
higher ({g.ar_last:.1f}%), and the static embedding of the subject's last token already scores {g.baseline:.1f}%: in
the early-to-middle layers the rate stays below that baseline (band peak {g.band_peak:.1f}%), so claim 5
{g.claim5}, unlike the paper's GPT-2 XL. With the official code's knockouts, removing MLP windows
that start at layers {g.official.first}–{g.official.last} drops the rate at the output of layer {g.repr_layer} from
{g.official.none:.1f}% to {g.official.mlp:.1f}% while attention windows leave it near {g.official.attn:.0f}% — the
paper's pattern; with attention updates zeroed instead, early attention windows lower it too
({g.zero.attn:.1f}%). On {s.model} the rate at the last subject token ({s.ar_peak:.1f}% at its peak) is close to
the rate against another subject's attribute set ({s.ar_control:.1f}%; claim 5b below): no subject-specific
enrichment is visible with this proxy.

**Attribute extraction (§5, notebook 03).** Attention updates at the last position rank the prediction first in
{g.attn:.0%} of facts, MLP updates in {g.mlp:.0%} (logit lens; with the paper's projection {g.attn_paper:.0%} vs
{g.mlp_paper:.0%}), {g.attn_top_share:.0%} of attention's events in layer {g.attn_top_layer} of {g.n_layers}.
Patching the embeddings back into the subject positions cuts extraction from {g.attn:.2f} to {g.patched:.2f}. One
head (layer {g.head_layer}, head {g.head}) carries {g.head_share:.0%} of the events, and its W_V W_O maps subject
tokens to their attribute (e.g. "{g.example_subject}" → "{g.example_attribute}") far above chance. {g.blocking}
Counted as the official code counts (edges blocked at each layer in turn, an event at any layer, over all facts),
the share falls only from {g.any_none:.0%} to {g.any_subject:.0%}.

**The claims ledger (notebook 04).** Each claim of the paper, recomputed from the raw tables of each model, with a
95% bootstrap interval over facts and a verdict from a rule fixed before any number
([`utils/paper/rules.py`](utils/paper/rules.py); `results/ledger.csv`, the paper's values with their sources in
[`data/paper_claims.csv`](data/paper_claims.csv)):

{ledger}

![information flow on relative depth](figures/atlas/information_flow_by_depth.png)
"""


def _wrap(block: str, width: int = 110) -> str:
    """A paragraph re-wrapped once its placeholders are filled (tables and images kept)."""
    if block.startswith(("|", "![")):
        return block
    return textwrap.fill(" ".join(block.split()), width, break_long_words=False, break_on_hyphens=False)


def render(root: Path = PROJECT_ROOT) -> str:
    """The section's text from the results under ``root``."""
    values = {key: model_values(model, root) for key, model in MODELS.items()}
    text = TEMPLATE.format(ledger=ledger_table(root), **values)
    return "\n\n".join(_wrap(block) for block in text.strip().split("\n\n")) + "\n"


def replace_between(text: str, begin: str, end: str, new: str) -> str:
    """``text`` with what lies between the marker lines ``begin`` and ``end`` replaced by ``new``
    (the README's generated blocks: findings, summary, timings)."""
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{new}{end}{tail}"


def updated(readme: str, root: Path = PROJECT_ROOT, section: str | None = None, top: str | None = None) -> str:
    """``readme`` with the text between the findings markers replaced by ``section`` (default:
    :func:`render`) and, where the README has them, between the summary markers by ``top``
    (default: :func:`summary`)."""
    text = replace_between(readme, BEGIN, END, render(root) if section is None else section)
    if SUMMARY_BEGIN in text:
        text = replace_between(text, SUMMARY_BEGIN, SUMMARY_END, summary(root) if top is None else top)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs from the results")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md",
                                                       "README.md (from results/)"))
            return 1
        print("README findings match results/")
        return 0
    README.write_text(new)
    print("README findings regenerated from results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
