"""The facts the paper queries, their subject tokens, and each model's "known" set.

The paper's data is ROME's ``known_1000.json`` (1,209 prompts built so that GPT-2 XL
completes them with the right attribute). A fact enters a model's analysis only if that
model predicts the attribute's first token as its top-1 next token; the target of every
experiment is then the model's own prediction, as in the official code.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

import pandas as pd
import torch

from .interventions import run
from .results import PROJECT_ROOT

KNOWN_1000_URL = "https://rome.baulab.info/data/dsets/known_1000.json"
KNOWN_1000_SHA256 = "685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df"
SMALL_FACTS = PROJECT_ROOT / "data" / "facts_small.json"
"""About 50 facts written for this project (same schema) for fast tests."""
FIELDS = ("known_id", "subject", "attribute", "template", "prompt", "relation_id")
KNOWN_1000_ENV = "DISSECT_KNOWN_1000"


class SubjectNotFound(ValueError):
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def download(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` unless a copy with the right checksum is there.

    A file whose checksum does not match is rejected (and not kept), so a truncated
    or tampered download never reaches an analysis.
    """
    dest = Path(dest)
    if dest.exists() and _sha256(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            out.write(response.read())
    except OSError as err:  # no network, DNS, refused, timed out (URLError is an OSError)
        part.unlink(missing_ok=True)
        raise ConnectionError(f"Could not download {url} ({getattr(err, 'reason', err)}); nothing was kept.") from err
    if _sha256(part) != sha256:
        part.unlink()
        raise ValueError(f"Download of {url} failed its sha256 check (expected {sha256}); nothing was kept.")
    part.replace(dest)
    return dest


def known_1000_path(path: str | Path | None = None) -> Path:
    """Where ``known_1000.json`` is: the given path, else ``$DISSECT_KNOWN_1000``, else
    the cache (downloaded from ROME's site on first use, sha256 checked)."""
    path = path or os.environ.get(KNOWN_1000_ENV)
    if path:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"known_1000.json not found at {path}")
        if _sha256(path) != KNOWN_1000_SHA256:
            raise ValueError(f"{path} is not the known_1000.json this project expects (sha256 mismatch)")
        return path
    from .models import cache_dir

    try:
        return download(KNOWN_1000_URL, cache_dir() / "data" / "known_1000.json", KNOWN_1000_SHA256)
    except ConnectionError as err:
        raise ConnectionError(f"{err} Offline? Point ${KNOWN_1000_ENV} (make: KNOWN_1000=...) at a copy of "
                              "known_1000.json, or use dataset='small' (make: DATASET=small).") from err


def load_facts(source: str | Path = "known_1000", n_facts: int | None = None) -> pd.DataFrame:
    """Facts as a DataFrame: ``"known_1000"``, ``"small"`` (this project's set) or a path
    to a JSON list with the same fields. ``n_facts`` keeps the first n records."""
    if str(source) == "known_1000":
        path = known_1000_path()
    elif str(source) == "small":
        path = SMALL_FACTS
    else:
        path = Path(source)
        if not path.is_absolute() and not path.exists():
            path = PROJECT_ROOT / path
    records = json.loads(Path(path).read_text())
    facts = pd.DataFrame.from_records(records)
    missing = [f for f in FIELDS if f not in facts.columns]
    if missing:
        raise ValueError(f"{path} lacks the fields {missing} (expected {list(FIELDS)})")
    return facts.head(n_facts) if n_facts else facts


def dataset_label(source) -> str:
    """A dataset as captions name it: ``known_1000``, ``small`` or a file's name (never a path)."""
    return str(source) if str(source) in ("known_1000", "small") else Path(str(source)).name


def subject_positions(spans: list[tuple[int, int]], prompt: str, subject: str) -> list[int]:
    """Token positions covering the first occurrence of ``subject`` in ``prompt``.

    Uses the tokenizer's character offsets, which is right for BPE and SentencePiece
    alike (a token's span may include its leading space) and ignores special tokens.
    """
    start = prompt.find(subject)
    if start < 0:
        raise SubjectNotFound(f"subject {subject!r} does not occur in the prompt")
    end = start + len(subject)
    positions = [i for i, (s, e) in enumerate(spans) if e > s and s < end and e > start]
    if not positions:
        raise SubjectNotFound(f"no token covers the subject {subject!r}")
    return positions


def attribute_first_token(lm, prompt_ids: list[int], prompt: str, attribute: str) -> int:
    """The first token of the attribute as the model would write it after the prompt."""
    full = lm.encode(prompt + " " + attribute, prepend_sink=None)
    plain = lm.encode(prompt, prepend_sink=None)
    if full[: len(plain)] == plain and len(full) > len(plain):
        return full[len(plain)]
    return lm.tokenizer(" " + attribute, add_special_tokens=False)["input_ids"][0]


def tokenize_facts(lm, facts: pd.DataFrame, prepend_sink: bool | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add token ids and subject positions to each fact.

    Returns ``(prepared, skipped)``: facts whose subject cannot be located are not
    dropped silently but listed in ``skipped`` with the reason.
    """
    kept, skipped = [], []
    for fact in facts.to_dict("records"):
        ids, spans = lm.encode(fact["prompt"], prepend_sink=prepend_sink, offsets=True)
        try:
            positions = subject_positions(spans, fact["prompt"], fact["subject"])
        except SubjectNotFound as err:
            skipped.append({**fact, "reason": str(err)})
            continue
        n = len(ids)
        sink = lm.sink_token_id is not None and ids[0] == lm.sink_token_id
        kept.append({
            **fact,
            "input_ids": ids,
            "n_tokens": n,
            "subject_positions": positions,
            "subject_first": positions[0],
            "subject_last": positions[-1],
            "has_sink": sink,
            "subject_at_zero": positions[0] == 0,
            "attribute_token": attribute_first_token(lm, ids, fact["prompt"], fact["attribute"]),
        })
    columns = list(facts.columns) + ["reason"]
    return pd.DataFrame(kept), pd.DataFrame(skipped, columns=columns)


@torch.no_grad()
def predict_next_token(lm, prepared: pd.DataFrame, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """The model's top-1 next token for each prompt, its probability, and the rank and
    probability of the attribute's first token.

    Prompts of equal length are batched together, so no padding is ever involved.
    """
    from .progress import progress as progress_line
    from .projection import decode_ids

    out = prepared.copy()
    cols = {c: [None] * len(out) for c in ("pred_token_id", "pred_prob", "attribute_prob", "attribute_rank")}
    order = sorted(range(len(out)), key=lambda i: out["n_tokens"].iat[i])
    batches = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and out["n_tokens"].iat[batches[-1][0]] == out["n_tokens"].iat[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    for batch in progress_line(batches, f"next-token predictions for {len(out)} prompts", "batches",
                               enabled=progress):
        ids = torch.tensor([out["input_ids"].iat[i] for i in batch])
        probs = run(lm, ids).probs()
        targets = torch.tensor([int(out["attribute_token"].iat[i]) for i in batch], device=probs.device)
        top_prob, top = probs.max(-1)
        target_prob = probs.gather(-1, targets[:, None])[:, 0]
        ranks = (probs > target_prob[:, None]).sum(-1)
        for j, i in enumerate(batch):
            cols["pred_token_id"][i] = int(top[j])
            cols["pred_prob"][i] = float(top_prob[j])
            cols["attribute_prob"][i] = float(target_prob[j])
            cols["attribute_rank"][i] = int(ranks[j])
    for name, values in cols.items():
        out[name] = values
    out["pred_token"] = decode_ids(lm, [int(t) for t in out["pred_token_id"]]) if len(out) else []
    out["known"] = out["pred_token_id"] == out["attribute_token"]
    return out


def build_known_set(
    lm, facts: pd.DataFrame, prepend_sink: bool | None = None, batch_size: int = 32, progress: bool = True
) -> pd.DataFrame:
    """Evaluate every fact: one row per fact with its tokens, subject positions, the model's
    prediction and ``known`` (top-1 prediction == the attribute's first token). Facts
    whose subject cannot be located stay in the table with ``known=False`` and their
    ``skip_reason``."""
    prepared, skipped = tokenize_facts(lm, facts, prepend_sink)
    evaluated = predict_next_token(lm, prepared, batch_size, progress) if len(prepared) else prepared
    skipped = skipped.rename(columns={"reason": "skip_reason"}).assign(known=False)
    table = pd.concat([evaluated, skipped], ignore_index=True) if len(skipped) else evaluated.assign(skip_reason=None)
    return table.sort_values("known_id", kind="stable").reset_index(drop=True)


class NoKnownFacts(ValueError):
    pass


def known_only(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """The known facts of an evaluated table. The analyses measure how a model recalls
    facts it knows; with none there is nothing to measure, which is said here rather than
    left to fail deep inside a plot."""
    known = table[table.known].reset_index(drop=True)
    if known.empty:
        raise NoKnownFacts(
            f"{model} knows none of the {len(table)} facts evaluated (its top-1 next token is never the "
            "attribute's first token), so there is nothing to analyse. Use more facts (n_facts=0), another "
            "dataset, or a model that recalls facts; notebook 00 shows its predictions.")
    return known


def known_set(lm, dataset="known_1000", n_facts: int | None = None, prepend_sink: bool | None = None,
              batch_size: int = 32) -> pd.DataFrame:
    """The evaluated facts of ``lm`` (see :func:`build_known_set`), saved as
    ``results/<model>/facts_evaluated.csv`` (``facts_evaluated_sink.csv`` with
    ``prepend_sink=True``, which can change predictions) and reused by every notebook with
    the same parameters. :func:`known_only` selects the known facts."""
    from .results import cached_table

    params = {"dataset": str(dataset), "n_facts": n_facts or None, "prepend_sink": prepend_sink}
    name = "facts_evaluated_sink" if prepend_sink else "facts_evaluated"
    return cached_table(name, lm, params,
                        lambda: build_known_set(lm, load_facts(dataset, n_facts or None), prepend_sink, batch_size))
