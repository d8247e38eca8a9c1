"""The paper's three steps for one prompt of one's own, in one call: :func:`dissect`.

A teacher or a student types a fact and wants to see, for that prompt alone, what the paper
shows over a thousand facts: where the relation and the subject reach the last position
(§3), what the subject's representation holds (§4) and which head pulls the answer out (§5).
Every number comes from the same library functions the notebooks run (``position_heatmap``,
``flow_of_fact``, ``enrichment_rows``, ``extraction_rows``, ``head_contributions``,
``head_mapping_rows``), on a fact built by the same ``tokenize_facts`` and
``predict_next_token`` as the known sets: there is no second implementation to drift away
from the notebooks, and the tests compare each panel with those functions' own output.

The model's own top-1 prediction is the target of every experiment, as in the paper. When an
``attribute`` is given, the dissection says whether the model knows the fact (the
prediction is the attribute's first token); a prompt the model gets wrong is still
dissected, and the figure says so.

Bad input is refused before the model runs, with a :class:`DissectError` (a ``ValueError``)
that says what was wrong and where it was looked for, never a traceback from deep inside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from ..core.checks import check_model
from ..core.heads import head_contributions
from ..core.projection import decode_ids, project, token_ranks
from ..paper import attributes as attr
from ..paper.enrichment import Settings, enrichment_rows
from ..paper.extraction import clean_run, extraction_rows, head_mapping_rows
from ..paper.facts import as_facts, predict_next_token, tokenize_facts
from ..paper.information_flow import FlowSettings, default_window, flow_of_fact, position_heatmap
from .plotting import plt

MAX_PROMPT_TOKENS = 48
"""The longest prompt dissected (tokens, sink included). The heatmap runs one knockout per
position and layer, so the time grows with the prompt; the paper's prompts have 5-15 tokens."""
MAX_PROMPT_CHARS = 400
"""Longer text is refused before it is tokenized (a pasted paragraph in the prompt box)."""
TOP = 5
"""Top tokens shown per layer (step 2) and W_V W_O mappings of the extracting head (step 3)."""
PROJECTIONS = ("logit_lens", "paper")
PROJECTION_WORDS = {"logit_lens": "logit lens (final norm, then head)", "paper": "paper (head only, no final norm)"}


class DissectError(ValueError):
    """A prompt, subject, attribute or model that cannot be dissected, said in words."""


@dataclass
class Dissection:
    """One prompt dissected: the numbers (``tables``), the words (:meth:`summary`) and the
    figure (:meth:`figure`). ``seconds`` is the wall time of the dissection (the figure not
    included)."""

    model: str
    prompt: str
    subject: str
    tokens: list[str]
    """The prompt's tokens as the model reads them (a sink token first where there is one)."""
    subject_positions: list[int]
    prediction: str
    probability: float
    attribute: str | None
    known: bool | None
    """The prediction is the attribute's first token (None when no attribute was given)."""
    fact: dict
    """The fact the library functions ran on (tokens, subject positions, prediction)."""
    tables: dict[str, pd.DataFrame]
    extracting_layer: int | None
    extracting_head: int | None
    extracting_found: bool
    """Attention's update ranks the prediction first at ``extracting_layer``; if not, that is
    the layer where it ranks it highest."""
    attribute_source: str | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    projection: str = "logit_lens"
    window: int = 1

    # ----------------------------------------------------------------------------------
    def headline(self) -> str:
        """The prompt, the prediction and whether it is the given attribute, in one line."""
        said = f"{self.prompt!r} -> {self.prediction!r} (p = {self.probability:.3f})"
        if self.known is None:
            return f"{said}; no attribute given, so known or not is not judged"
        if self.known:
            return f"{said}: the model knows it (its prediction is the first token of {self.attribute!r})"
        return f"{said}: the model gets it WRONG (the attribute is {self.attribute!r}); dissected all the same"

    def summary(self) -> str:
        """The three steps in words, with the numbers they rest on."""
        curves, rate = self.tables["flow_curves"], self.tables["enrichment"]
        lines = [f"{self.model}: {self.headline()}", f"tokens: {' | '.join(self.tokens)} "
                 f"(subject at positions {self.subject_positions})"]
        lines.append(f"Step 1, flow (window of {self.window} layers): the largest drop of the prediction's "
                     "probability when the last position cannot attend to")
        for source in ("subject", "non-subject", "last"):
            curve = curves[curves.source == source].set_index("layer").relative_change
            if len(curve):
                lines.append(f"  the {source:11}: {curve.min():7.1f}% at layer {int(curve.idxmin())}")
        lens = rate[rate.projection == self.projection].set_index("layer")
        if self.attribute_source is None:
            lines.append("Step 2, enrichment: no attribute set (the subject is not in the offline source and no "
                         "paragraph was given), so only the top tokens are shown; the prediction's best rank at the "
                         f"last subject token is {int(lens.attribute_rank.min())} at layer "
                         f"{int(lens.attribute_rank.idxmin())}")
        else:
            best = lens.attributes_rate.idxmax()
            lines.append(f"Step 2, enrichment ({self.attribute_source}): the attributes rate of the last subject "
                         f"token peaks at {lens.attributes_rate.max():.0f}% at layer {int(best)} ({self.projection}); "
                         f"top tokens there: {', '.join(t.strip() for t in lens.top_tokens[best])}")
        if self.extracting_found:
            lines.append(f"Step 3, extraction: attention's update at the last position ranks {self.prediction!r} "
                         f"first at layer {self.extracting_layer}; head {self.extracting_head} carries the largest "
                         "share")
        else:
            lines.append(f"Step 3, extraction: no attention update ranks {self.prediction!r} first; it ranks it "
                         f"highest at layer {self.extracting_layer} (head {self.extracting_head} the largest share)")
        mapping = self.tables["head_mapping"]
        if len(mapping):
            m = mapping.iloc[0]
            lines.append(f"  head {self.extracting_head}'s W_V W_O maps the subject to: "
                         f"{', '.join(t.strip() for t in m.top_tokens)} (prediction's rank {int(m.rank_best)})")
        blocked = self.tables["blocked"]
        if len(blocked):
            b = blocked.set_index("variant").value
            lines.append(f"  with the last position blocked from the subject at that layer, extraction "
                         f"{'survives' if b.get('renormalised', 0) else 'stops'} (renormalised), "
                         f"{'survives' if b.get('official', 0) else 'stops'} (official)")
        lines += [f"Note: {n}" for n in self.notes]
        lines.append(f"dissected in {self.seconds:.1f} s")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------
    def figure(self):
        """One figure, three panels (a subfigure each): flow, enrichment, extraction."""
        fig = plt.figure(figsize=(17, 6.2), layout="constrained")
        flow, enrich, extract = fig.subfigures(1, 3, width_ratios=[1.1, 1.1, 1])
        self._flow_panel(flow)
        self._enrichment_panel(enrich)
        self._extraction_panel(extract)
        colour = "black" if self.known is not False else "tab:red"
        fig.suptitle(f"{self.model}: {self.headline()}", color=colour, fontsize=11)
        return fig

    def _flow_panel(self, sub):
        heat = self.tables["heatmap"]
        ax, curves_ax = sub.subplots(2, 1, height_ratios=[1.3, 1], sharex=True)
        limit = max(1.0, float(heat.abs().max().max()))
        image = ax.imshow(heat.values, aspect="auto", cmap="RdBu", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_yticks(range(len(self.tokens)), [t if i not in self.subject_positions else f"[{t}]"
                                                for i, t in enumerate(self.tokens)], fontsize=7)
        ax.set_title("1. flow: last position blocked from one position\n(relative change of p, %)", fontsize=9)
        sub.colorbar(image, ax=ax, shrink=0.8)
        curves = self.tables["flow_curves"]
        for source, colour in (("subject", "tab:green"), ("non-subject", "tab:purple"), ("last", "tab:orange")):
            part = curves[curves.source == source]
            curves_ax.plot(part.layer, part.relative_change, marker=".", color=colour, label=source)
        curves_ax.axhline(0, color="0.5", linewidth=0.8)
        curves_ax.set(xlabel=f"layer (centre of a {self.window}-layer window)", ylabel="% change of p")
        curves_ax.legend(fontsize=7)

    def _enrichment_panel(self, sub):
        ax, text_ax = sub.subplots(1, 2, width_ratios=[1, 1.25])
        rate = self.tables["enrichment"]
        for projection, style in zip(PROJECTIONS, ("-", "--")):
            part = rate[rate.projection == projection]
            y = part.attributes_rate if self.attribute_source else part.attribute_rank + 1
            ax.plot(y.values, part.layer.values, style, marker=".", label=PROJECTION_WORDS[projection])
        if self.attribute_source:
            ax.set(xlabel="attributes rate (%)", title=f"2. enrichment at the last subject token\n"
                   f"attribute set: {self.attribute_source}")
        else:
            ax.set_xscale("log")
            ax.set(xlabel="rank of the prediction + 1 (log)",
                   title="2. enrichment at the last subject token\nno attribute set: top tokens only")
        ax.title.set_fontsize(8)
        ax.set_ylabel("layer (hidden state entering it)")
        ax.invert_yaxis()
        ax.legend(fontsize=6)
        text_ax.axis("off")
        lens = rate[rate.projection == self.projection].set_index("layer")
        paper = rate[rate.projection == "paper"].set_index("layer")
        rows = [f"{layer:>2} {' '.join(t.strip()[:9] for t in lens.top_tokens[layer][:3]):<30}"
                f"| {' '.join(t.strip()[:9] for t in paper.top_tokens[layer][:3])}" for layer in lens.index]
        text_ax.text(0, 1, "top tokens: logit lens | paper\n" + "\n".join(rows), family="monospace",
                     fontsize=max(4.5, min(7, 300 / max(len(rows), 1) / 1.6)), va="top", transform=text_ax.transAxes)

    def _extraction_panel(self, sub):
        ax, heads_ax = sub.subplots(2, 1)
        ranks = self.tables["extraction"]
        for measure, colour in (("attn", "tab:blue"), ("mlp", "tab:red")):
            part = ranks[ranks.sublayer == measure]
            ax.plot(part.layer, part["rank"] + 1, marker=".", color=colour,
                    label={"attn": "attention update", "mlp": "MLP update"}[measure])
        ax.set_yscale("log")
        ax.invert_yaxis()
        ax.axvline(self.extracting_layer, color="0.4", linestyle=":")
        ax.set(xlabel="layer", ylabel="rank of the prediction + 1",
               title=f"3. extraction at the last position ({self.projection})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
        heads = self.tables["heads"]
        heads_ax.bar(heads["head"], heads.score, color=["tab:blue" if h == self.extracting_head else "0.7"
                                                         for h in heads["head"]])
        word = "extracts" if self.extracting_found else "ranks it highest (no extraction event)"
        mapping = self.tables["head_mapping"]
        mapped = ", ".join(t.strip() for t in mapping.iloc[0].top_tokens[:TOP]) if len(mapping) else ""
        blocked = self.tables["blocked"]
        survives = ("" if not len(blocked) else "; subject blocked: extraction " +
                    ("survives" if blocked.set_index("variant").value.get("renormalised", 0) else "stops"))
        heads_ax.set(xlabel="head", ylabel="prediction's score in the head's share",
                     title=f"layer {self.extracting_layer} {word}{survives}\n"
                     f"head {self.extracting_head}'s W_V W_O on the subject: {mapped}")
        heads_ax.title.set_fontsize(8)


# --------------------------------------------------------------------------------------


def _check_input(lm, prompt, subject, attribute) -> None:
    if getattr(lm, "tokenizer", None) is None:
        raise DissectError(f"{getattr(lm, 'name', 'the model')} has no tokenizer: dissect reads a prompt as text")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DissectError("the prompt is empty: type a prompt that ends where the attribute would come, "
                           "e.g. 'Beats Music is owned by'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DissectError(f"the prompt is too long ({len(prompt)} characters; the limit is {MAX_PROMPT_CHARS} "
                           f"characters and {MAX_PROMPT_TOKENS} tokens): one sentence that stops before the attribute")
    if not isinstance(subject, str) or not subject.strip():
        raise DissectError("the subject is empty: give the words of the prompt the fact is about, e.g. 'Beats Music'")
    if subject not in prompt:
        hint = " (the match is case-sensitive)" if subject.lower() in prompt.lower() else ""
        raise DissectError(f"the subject {subject!r} is not in the prompt {prompt!r}: it was looked for as an exact "
                           f"substring of the prompt{hint}")
    if attribute is not None and (not isinstance(attribute, str) or not attribute.strip()):
        raise DissectError("the attribute is empty: give the expected answer (e.g. 'Apple') or leave it out")
    report = getattr(lm, "check", None) or {}
    if report.get("status") not in ("passed", "failed"):  # loaded with check=False: checked once here
        report = lm.cache.setdefault("dissect_check", check_model(lm, raise_on_failure=False))
    if report.get("status") == "failed":
        raise DissectError(f"{lm.name} failed its model check ({', '.join(report.get('failed', []))}): its "
                           "interventions would give wrong numbers, so nothing is dissected")


def make_fact(lm, prompt: str, subject: str, attribute: str | None = None) -> tuple[dict, list[str]]:
    """The fact the library runs on, built as the known sets build theirs (``tokenize_facts``
    then ``predict_next_token``), with the sink token first as notebook 01 tokenizes; and the
    notes to say (a several-token attribute)."""
    notes = []
    adds_sink = lm.sink_token_id is not None and lm.encode("x")[0] == lm.sink_token_id
    prepend = None if adds_sink or lm.sink_token_id is None else True
    row = pd.DataFrame([{"known_id": 0, "subject": subject, "prompt": prompt,
                         "attribute": attribute.strip() if attribute else "?"}])
    prepared, skipped = tokenize_facts(lm, row, prepend)
    if len(skipped):
        raise DissectError(f"the subject {subject!r} covers no token of the prompt {prompt!r} "
                           f"({skipped.reason.iloc[0]})")
    if prepared.n_tokens.iloc[0] > MAX_PROMPT_TOKENS:
        raise DissectError(f"the prompt is too long: {prepared.n_tokens.iloc[0]} tokens, the limit is "
                           f"{MAX_PROMPT_TOKENS}")
    if prepared.subject_last.iloc[0] >= prepared.n_tokens.iloc[0] - 1:
        raise DissectError(f"the subject {subject!r} ends the prompt: the prompt must go on after it (the relation, "
                           "e.g. 'is owned by'), since the last position is where the answer is read")
    if attribute:
        pieces = lm.tokenizer(" " + attribute.strip(), add_special_tokens=False)["input_ids"]
        if len(pieces) > 1:
            notes.append(f"the attribute {attribute.strip()!r} is {len(pieces)} tokens; its first token "
                         f"{decode_ids(lm, int(prepared.attribute_token.iloc[0]))!r} is the one compared")
    evaluated = predict_next_token(lm, prepared, progress=False).iloc[0].to_dict()
    if not attribute:
        evaluated["known"] = None
    return evaluated, notes


def attribute_set_for(lm, subject: str, about: str | None) -> tuple[frozenset[str] | None, str | None, list[str]]:
    """The subject's attribute set: from the offline source's paragraphs when the subject is in
    them (the same retrieval and filter as notebook 02), else from ``about`` (a paragraph the
    user gives, through the same tokenisation and stopwords), else none."""
    notes = []
    try:
        paragraphs = attr.retrieve(subject, attr.wiki_vital_corpus())
    except ModuleNotFoundError as err:
        paragraphs = []
        notes.append(f"the offline attribute source is not installed ({err})")
    if paragraphs:
        return attr.attribute_set(lm, " ".join(paragraphs)), f"offline source, {len(paragraphs)} paragraphs", notes
    if about and about.strip():
        return attr.attribute_set(lm, about), "the paragraph given", notes
    return None, None, notes


@torch.no_grad()
def dissect(lm, prompt: str, subject: str, attribute: str | None = None, about: str | None = None, *,
            projection: str = "logit_lens", window: int | None = None, top: int = TOP) -> Dissection:
    """The paper's three steps on one prompt: flow (§3), enrichment (§4), extraction (§5).

    ``subject`` must occur in ``prompt`` as written; ``attribute`` (optional) is the expected
    answer, to say whether the model knows the fact; ``about`` (optional) is a paragraph about
    the subject, from which the attribute set is built when the offline source lacks the
    subject. ``projection`` is the readout of steps 2 and 3 (both are shown in step 2);
    ``window`` the knockout window of step 1 (default: the paper's share of the depth).
    """
    started = time.perf_counter()
    _check_input(lm, prompt, subject, attribute)
    if projection not in PROJECTIONS:
        raise DissectError(f"projection must be one of {PROJECTIONS}, not {projection!r}")
    evaluated, notes = make_fact(lm, prompt, subject, attribute)
    fact = as_facts(pd.DataFrame([evaluated]))[0]
    k = window or default_window(lm.n_layers)

    # step 1: flow
    heatmap = position_heatmap(lm, fact["input_ids"], k)
    curves = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(k=k, sets=("subject", "non-subject", "last"))))

    # step 2: enrichment at the last subject token, under both projections
    attributes, source, more = attribute_set_for(lm, subject, about)
    notes += more
    enrichment = pd.concat([pd.DataFrame(enrichment_rows(lm, fact, attributes, Settings(), mode, top_tokens=top))
                            .assign(projection=mode) for mode in PROJECTIONS])
    enrichment = enrichment[enrichment.position == "subject last"].reset_index(drop=True)

    # step 3: extraction at the last position
    rows = pd.DataFrame(extraction_rows(lm, fact, projection))
    r = clean_run(lm, fact, attention=False)
    ranks = token_ranks(project(lm, torch.stack([r.attn, r.mlp]), projection), r.target).tolist()  # (2, L)
    extraction = pd.DataFrame([{"layer": layer, "sublayer": sub, "rank": int(ranks[i][layer])}
                               for i, sub in enumerate(("attn", "mlp")) for layer in range(lm.n_layers)])
    events = rows[(rows.measure == "attn") & (rows.projection == projection) & (rows.value == 1)]
    found = bool(len(events))
    attn_ranks = extraction[extraction.sublayer == "attn"].set_index("layer")["rank"]
    layer = int(events.layer.min()) if found else int(attn_ranks.idxmin())
    shares = head_contributions(lm, layer, r.heads[layer])[0]  # (H, d)
    share_scores = project(lm, shares, "paper")  # linear: the heads' scores add up to the update's (bias aside)
    heads = pd.DataFrame({"head": range(lm.n_heads), "score": share_scores[:, r.target].tolist(),
                          "rank": token_ranks(project(lm, shares, projection), r.target).tolist()})
    head = int(heads.sort_values(["rank", "score"], ascending=[True, False]).iloc[0]["head"])
    mapping = pd.DataFrame(head_mapping_rows(lm, layer, [head], [fact], projection, k=top))
    blocked = rows[(rows.measure == "blocked") & (rows.layer == layer) & (rows.condition == "subject")]
    blocked = blocked[["variant", "value"]].reset_index(drop=True)

    return Dissection(
        model=lm.name, prompt=prompt, subject=subject, tokens=decode_ids(lm, list(fact["input_ids"])),
        subject_positions=[int(p) for p in fact["subject_positions"]], prediction=decode_ids(lm, r.target),
        probability=float(evaluated["pred_prob"]), attribute=attribute.strip() if attribute else None,
        known=None if evaluated["known"] is None else bool(evaluated["known"]), fact=fact,
        tables={"heatmap": heatmap, "flow_curves": curves, "enrichment": enrichment, "extraction": extraction,
                "extraction_rows": rows, "heads": heads, "head_mapping": mapping, "blocked": blocked},
        extracting_layer=layer, extracting_head=head, extracting_found=found, attribute_source=source, notes=notes,
        seconds=time.perf_counter() - started, projection=projection, window=k)


__all__ = ["MAX_PROMPT_CHARS", "MAX_PROMPT_TOKENS", "Dissection", "DissectError", "dissect", "make_fact"]
