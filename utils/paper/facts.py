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
import warnings
from pathlib import Path
from typing import NotRequired, TypedDict

import pandas as pd
import torch

from ..core.batching import in_batches, resolve
from ..core.forward import check_length, run
from ..core.identity import sha256_of_file
from ..core.projection import decode_ids
from ..paths import PROJECT_ROOT, cache_dir
from ..runs.progress import progress as progress_line
from ..runs.results import cached_table, note_facts

KNOWN_1000_URL = "https://rome.baulab.info/data/dsets/known_1000.json"
KNOWN_1000_SHA256 = "685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df"
SMALL_FACTS = PROJECT_ROOT / "data" / "facts_small.json"
"""About 50 facts written for this project (same schema) for fast tests."""
RECORD_FIELDS = ("known_id", "subject", "attribute", "template", "prompt", "relation_id")
"""The fields of a dataset record (known_1000's schema)."""
KNOWN_1000_ENV = "DISSECT_KNOWN_1000"


class SubjectNotFound(ValueError):
    pass


class DatasetError(ValueError):
    """A dataset that cannot be used as it is (unreadable, not JSON, not a list of valid
    fact records, duplicate ids), or an ``n_facts`` that is not a non-negative integer.
    The message names the file and the first offending records."""


def download(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` unless a copy with the right checksum is there.

    A file whose checksum does not match is rejected (and not kept), so a truncated
    or tampered download never reaches an analysis.
    """
    dest = Path(dest)
    if dest.exists() and sha256_of_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            out.write(response.read())
    except OSError as err:  # no network, DNS, refused, timed out (URLError is an OSError)
        part.unlink(missing_ok=True)
        raise ConnectionError(f"Could not download {url} ({getattr(err, 'reason', err)}); nothing was kept.") from err
    if sha256_of_file(part) != sha256:
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
        if sha256_of_file(path) != KNOWN_1000_SHA256:
            raise DatasetError(f"{path} is not the known_1000.json this project expects (sha256 mismatch)")
        return path
    try:
        return download(KNOWN_1000_URL, cache_dir() / "data" / "known_1000.json", KNOWN_1000_SHA256)
    except ConnectionError as err:
        raise ConnectionError(f"{err} Offline? Point ${KNOWN_1000_ENV} (make: KNOWN_1000=...) at a copy of "
                              "known_1000.json, or use dataset='small' (make: DATASET=small).") from err


SHOWN_PROBLEMS = 5
"""How many offending records a :class:`DatasetError` lists."""


def check_n_facts(n_facts) -> int:
    """``n_facts`` as a non-negative integer (0 = all facts). Accepts what papermill or make
    may pass (``"20"``, ``20.0``, ``None`` for all); anything else is a :class:`DatasetError`
    (``-1`` would silently drop the last fact)."""
    value = n_facts
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DatasetError(f"n_facts must be a non-negative integer (0 = all facts), not {n_facts!r}")
    return value


def dataset_path(source: str | Path = "known_1000") -> Path:
    """Where a dataset is: ``"known_1000"`` (see :func:`known_1000_path`), ``"small"``, or a
    path (relative paths also from the project root)."""
    if str(source) == "known_1000":
        return known_1000_path()
    if str(source) == "small":
        return SMALL_FACTS
    path = Path(source)
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise DatasetError(f"dataset {str(source)!r}: no such file ({path}); use 'known_1000', 'small' or a path "
                           "to a JSON list of facts")
    return path


def _kind(value) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _record_problems(record) -> list[str]:
    if not isinstance(record, dict):
        return [f"{_kind(record)}, not an object"]
    problems = []
    for field in RECORD_FIELDS:
        if field not in record:
            problems.append(f"missing {field}")
            continue
        value = record[field]
        if value is None:
            problems.append(f"{field} is null")
        elif field == "known_id":
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"known_id must be an integer, not {json.dumps(value)}")
        elif not isinstance(value, str):
            problems.append(f"{field} must be a string, not {_kind(value)}")
        elif not value.strip():
            problems.append(f"{field} is an empty string")
    return problems


def validate_records(records, path) -> None:
    """One validation step for every dataset: a non-empty JSON list of objects, each with
    the six fields (``known_id`` an integer, the others non-empty strings), ``known_id``
    unique. Raises :class:`DatasetError` naming the file and the first offending records."""
    if not isinstance(records, list):
        raise DatasetError(f"{path} must be a JSON list of fact records, not {_kind(records)} "
                           f"(each record with {', '.join(RECORD_FIELDS)})")
    if not records:
        raise DatasetError(f"{path} holds no facts (an empty list)")
    bad, first_of = [], {}
    for i, record in enumerate(records):
        problems = _record_problems(record)
        known_id = record.get("known_id") if isinstance(record, dict) else None
        if isinstance(known_id, int) and not isinstance(known_id, bool):
            if known_id in first_of:
                problems.append(f"duplicate known_id (also record {first_of[known_id]})")
            else:
                first_of[known_id] = i
        if problems:
            label = f"record {i}" if not isinstance(record, dict) else f"record {i} (known_id {known_id!r})"
            bad.append(f"{label}: {'; '.join(problems)}")
    if bad:
        more = f"\n  ... and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
        raise DatasetError(f"{path}: {len(bad)} of {len(records)} records are not valid facts (each needs "
                           f"{', '.join(RECORD_FIELDS)}; known_id a unique integer, the others non-empty strings):\n  "
                           + "\n  ".join(bad[:SHOWN_PROBLEMS]) + more)


def _read_facts(source, n_facts) -> tuple[pd.DataFrame, str]:
    """The validated facts (the first ``n_facts``; 0 = all) and the sha256 of the file's bytes."""
    n = check_n_facts(n_facts)
    path = dataset_path(source)
    try:
        raw = Path(path).read_bytes()
        records = json.loads(raw.decode("utf-8"))
    except OSError as err:
        raise DatasetError(f"cannot read the dataset {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
    except RecursionError as err:
        raise DatasetError(f"{path} is nested too deeply to be a list of facts") from err
    validate_records(records, path)
    facts = pd.DataFrame.from_records(records)
    return (facts.head(n).reset_index(drop=True) if n else facts), hashlib.sha256(raw).hexdigest()


def load_facts(source: str | Path = "known_1000", n_facts: int | None = None) -> pd.DataFrame:
    """Facts as a DataFrame: ``"known_1000"``, ``"small"`` (this project's set) or a path
    to a JSON list with the same fields, validated (:func:`validate_records`; a bad file is
    a :class:`DatasetError`). ``n_facts`` keeps the first n records (0 or None: all)."""
    return _read_facts(source, n_facts)[0]


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
    kept, skipped, repeated = [], [], []
    for fact in facts.to_dict("records"):
        ids, spans = lm.encode(fact["prompt"], prepend_sink=prepend_sink, offsets=True)
        check_length(lm, len(ids), f"prompt of fact {fact.get('known_id', '?')} ({fact['prompt'][:60]!r})")
        try:
            positions = subject_positions(spans, fact["prompt"], fact["subject"])
        except SubjectNotFound as err:
            skipped.append({**fact, "reason": str(err)})
            continue
        if fact["prompt"].count(fact["subject"]) > 1:
            repeated.append((fact.get("known_id", "?"), fact["subject"], fact["prompt"].count(fact["subject"]),
                             positions))
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
    if repeated:
        known_id, subject, count, positions = repeated[0]
        warnings.warn(
            f"{len(repeated)} of {len(facts)} facts mention their subject more than once (e.g. fact {known_id}: "
            f"{subject!r} {count} times). Only the first mention's tokens count as subject positions (there "
            f"{positions}); the later mentions count as non-subject positions, as in the official code. "
            f"Facts: {[r[0] for r in repeated][:20]}", stacklevel=2)
    columns = list(facts.columns) + ["reason"]
    return pd.DataFrame(kept), pd.DataFrame(skipped, columns=columns)


def _predict(lm, out: pd.DataFrame, batch: list[int]) -> list[list[float]]:
    ids = torch.tensor([out["input_ids"].iat[i] for i in batch])
    probs = run(lm, ids).probs()
    targets = torch.tensor([int(out["attribute_token"].iat[i]) for i in batch], device=probs.device)
    top_prob, top = probs.max(-1)
    target_prob = probs.gather(-1, targets[:, None])[:, 0]
    ranks = (probs > target_prob[:, None]).sum(-1)
    return torch.stack([top.double(), top_prob.double(), target_prob.double(), ranks.double()], 1).cpu().tolist()


@torch.no_grad()
def predict_next_token(lm, prepared: pd.DataFrame, batch_size: int | str = 32, progress: bool = True) -> pd.DataFrame:
    """The model's top-1 next token for each prompt, its probability, and the rank and
    probability of the attribute's first token.

    Prompts of equal length are batched together, so no padding is ever involved.
    ``"auto"`` sizes the batches for the longest prompt (at most 32 on the host, the tuned
    fixed size; :mod:`utils.core.batching`), and an out-of-memory error halves them.
    """
    out = prepared.copy()
    if len(out):
        batch_size = resolve(batch_size, lm, int(out["n_tokens"].max()), cap=32, recompute="all")
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
        found = in_batches(batch, len(batch), lambda part: _predict(lm, out, part), lm)  # halves on OOM
        for (pred, pred_prob, attribute_prob, rank), i in zip(found, batch):  # one transfer per batch
            cols["pred_token_id"][i] = int(pred)
            cols["pred_prob"][i] = pred_prob
            cols["attribute_prob"][i] = attribute_prob
            cols["attribute_rank"][i] = int(rank)
    for name, values in cols.items():
        out[name] = values
    out["pred_token"] = decode_ids(lm, [int(t) for t in out["pred_token_id"]]) if len(out) else []
    out["known"] = out["pred_token_id"] == out["attribute_token"]
    return out


def build_known_set(
    lm, facts: pd.DataFrame, prepend_sink: bool | None = None, batch_size: int | str = 32, progress: bool = True
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
              batch_size: int | str = 32) -> pd.DataFrame:
    """The evaluated facts of ``lm`` (see :func:`build_known_set`), saved as
    ``results/<model>/facts_evaluated.csv`` (``facts_evaluated_sink.csv`` with
    ``prepend_sink=True``, which can change predictions) and reused by every notebook with
    the same parameters, the same dataset bytes (their sha256 is part of the key) and the
    same weights. :func:`known_only` selects the known facts. The dataset and ``n_facts``
    are validated first: a bad one fails before the model runs or anything is written."""
    facts, sha256 = _read_facts(dataset, n_facts)
    params = {"dataset": str(dataset), "dataset_sha256": sha256, "n_facts": check_n_facts(n_facts) or None,
              "prepend_sink": prepend_sink}
    name = "facts_evaluated_sink" if prepend_sink else "facts_evaluated"
    note_facts(lm, dataset, sha256, params["n_facts"])  # every table of lm saved from now on names these facts
    return cached_table(name, lm, params, lambda: build_known_set(lm, facts, prepend_sink, batch_size))


# --------------------------------------------------------------------------------------
# A fact as the analyses read it


class Fact(TypedDict):
    """One known fact of one model, as every analysis reads it: a row of its known set
    (:func:`known_set`), tokenized for that model, with the model's own prediction."""

    known_id: int
    subject: str
    prompt: str
    input_ids: list[int]
    n_tokens: int
    subject_positions: list[int]
    """The token positions covering the subject's first occurrence in the prompt."""
    subject_first: int
    subject_last: int
    has_sink: bool
    """The prompt starts with the model's sink token (its BOS, or the one prepended)."""
    pred_token_id: int
    """The model's top-1 next token: the target of every experiment."""
    static_ids: NotRequired[list[int]]
    """The subject's tokens as they read in the middle of a text (the static baseline's);
    computed when absent."""


class NoPrediction(ValueError):
    pass


def prediction(fact) -> int:
    """The fact's target, the model's own top-1 next token (``pred_token_id``). A fact from
    :func:`tokenize_facts` alone has none yet: said here, with the step that adds it, rather
    than as a bare ``KeyError`` deep inside an analysis."""
    try:
        return int(fact["pred_token_id"])
    except KeyError:
        raise NoPrediction(
            f"fact {fact.get('known_id', '?')} has no pred_token_id (the model's prediction, the target of every "
            "measure): tokenize_facts only tokenizes; run predict_next_token on its result, or use build_known_set "
            "/ known_set, or utils.dissect for one prompt of your own") from None


FACT_FIELDS = tuple(name for name in Fact.__annotations__ if name != "static_ids")
POSITION_FIELDS = ("known_id", "input_ids", "n_tokens", "subject_positions", "has_sink")
"""What every analysis needs of a fact: its tokens and where the subject and the sink are."""


def as_facts(table: pd.DataFrame) -> list[Fact]:
    """The rows of a known set as :class:`Fact` values: only the fields the analyses read, so
    that a sweep's journal is keyed by what decides its numbers and nothing else."""
    missing = [name for name in POSITION_FIELDS if name not in table.columns]
    if missing:
        raise ValueError(f"facts need the columns {', '.join(missing)}: build them with utils.paper.facts.known_set "
                         "(or build_known_set), which adds the tokens, the subject's positions and the prediction")
    fields = [name for name in FACT_FIELDS if name in table.columns]
    return [{name: (list(row[name]) if name in ("input_ids", "subject_positions") else row[name]) for name in fields}
            for row in table.to_dict("records")]


def position_sets(fact: Fact, include_sink: bool = False) -> dict[str, list[int]]:
    """A prompt's positions by role, as the official code defines them: the subject, the
    non-subject positions (every earlier position not in the subject: the relation and any
    other context), the last position, and the subject split into its last token and its
    other tokens.

    A sink token at position 0 (a BOS, or the one ``sink="prepend"`` adds) is an attention
    sink, not a word of the prompt: it is kept out of every set unless ``include_sink``
    (the official code's sets, where Gemma's ``<bos>`` falls into the non-subject set). The
    subject never includes the last position, the query itself. Sets may be empty (a
    one-token subject has no other tokens).
    """
    last = int(fact["n_tokens"]) - 1
    skip = {0} if fact["has_sink"] and not include_sink else set()
    subject = [int(p) for p in fact["subject_positions"] if p < last and p not in skip]
    return {
        "subject": subject,
        "non-subject": [p for p in range(last) if p not in subject and p not in skip],
        "last": [last],
        "subject-last": subject[-1:],
        "subject-other": subject[:-1],
    }
