"""Result tables with their provenance, and resumable sweeps.

Every experiment writes a tidy table (one row per fact x condition x layer) to
``results/<model>/<name>.csv`` with a ``<name>.meta.json`` beside it: model, dtype,
attention backend, the weights' identity, package versions (and whether they are the
locked ones), git commit and the parameters. A sweep appends each finished fact to a
journal keyed by a hash of everything that determines the numbers -- the parameters and
the weights' identity (:mod:`utils.core.identity`), not only the model's name -- so an
interrupted run continues where it stopped, and a run with a changed parameter or other
weights starts a new journal instead of reusing stale rows. Each journal entry carries a
digest of its fact's content: a fact edited in the dataset is computed again, while the
unchanged ones are reused (also across ``n_facts`` values). A model whose weights are
``"unknown"`` never reuses a journal or a cached table.

Every table's metadata also says which run and which model it comes from (``run``,
``model_identity``: :mod:`utils.runs.runid`), and :func:`check_same_run` refuses to combine
tables of one model that disagree. A model's folder belongs to one model source
(:func:`results_dir`). Tables are written atomically under the folder's lock and read back
only when the CSV is the one its metadata describes (:mod:`utils.runs.store`); a sweep
holds a lock on its journal while it runs.
"""

from __future__ import annotations

import contextlib

import datetime as _dt
import errno
import hashlib
import io
import json
import os
import platform
import subprocess
import time
import warnings
from importlib import metadata as _md
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from ..paths import PROJECT_ROOT, output_root
from .environment import AT_START, lock_status
from .progress import progress as progress_line
from .runid import (
    MixedRunsError,
    ResultsFolderClash,
    check_same_run,
    claim_folder,
    model_identity,
    note_facts,
    run_id,
)
from .store import ResultsBusy, folder_lock, open_journal, run_lock, write_atomically

PACKAGES = ("torch", "transformers", "accelerate", "numpy", "pandas", "seaborn", "matplotlib", "papermill")
SCHEMA_VERSION = 1
"""Bumped when a change to the code changes the numbers a sweep produces."""


def model_slug(name: str) -> str:
    """A folder name for a model: the hub id's last part (``EleutherAI/gpt-j-6b`` -> ``gpt-j-6b``)."""
    return name.rstrip("/").split("/")[-1]


def output_folder(kind: str, model: str | None, root: Path | None = None) -> Path:
    """``<root>/<kind>/<model>``: where a model's results or figures are (``model`` None: the
    ones that span models; ``root`` defaults to :func:`utils.paths.output_root`)."""
    return (root or output_root()) / kind / ("" if model is None else model_slug(model))


def output_dir(kind: str, model: str | None) -> Path:
    """:func:`output_folder` under the output root, created: where a run writes."""
    path = output_folder(kind, model)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(lm) -> Path:
    """``results/<model>/`` for ``lm``, created, and checked to be this model's: a folder that
    holds the results of another model with the same folder name is a
    :class:`ResultsFolderClash` (:func:`utils.runs.runid.claim_folder`)."""
    return claim_folder(output_dir("results", lm.name), lm)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        # outputs the runs themselves rewrite do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!figures", ":!results", ":!executed"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return found


def provenance() -> dict:
    """Package versions, git commit, machine and time of a run. ``lock`` says whether the
    installed packages are the exact versions of ``requirements.lock``."""
    return {
        "versions": versions(),
        "lock": lock_status(),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "host_at_start": AT_START,  # cores and load when the run began: read its timings with them
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_metadata(lm, params: dict) -> dict:
    """What a reader needs to know to trust and reproduce a table, and to know which run and
    which model it belongs to (``run``, ``model_identity``; not part of the table's key)."""
    return {**lm.describe(), "params": params, "run": run_id(lm, params), "model_identity": model_identity(lm),
            **provenance()}


def _key(lm, name: str, params: dict) -> str:
    """A hash of the table's name, its parameters and the model: its structure, dtype,
    attention backend and the identity of its weights (``weights_id``). Where the weights sit
    (device, offload) and the model check's measured errors do not change the numbers."""
    ident = {k: v for k, v in lm.describe().items() if k not in ("device", "offloaded", "model_check")}
    blob = json.dumps({"name": name, "model": ident, "params": params, "schema": SCHEMA_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _reusable(lm, what: str) -> bool:
    """Results of a model whose weights are unknown are never reused (they may be others)."""
    if getattr(lm, "weights_id", "unknown") != "unknown":
        return True
    warnings.warn(f"the weights of {lm.name} are unknown (see utils.core.identity): {what} is computed afresh, "
                  "nothing saved before is reused", stacklevel=3)
    return False


def _canonical(value):
    """A value as JSON would hold it, the same whether a table was just computed or read
    back from its CSV (numpy scalars, NaN/None, integral floats, tuples)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0):
        return [_canonical(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def item_digest(item: dict) -> str:
    """The digest a sweep journal stores with each item's rows: an entry is reused only
    for an item with the same content (same fact, same tokens, same prediction)."""
    blob = json.dumps(_canonical(item), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _needs_json(value) -> bool:
    if isinstance(value, (list, tuple, dict)):
        return True
    return isinstance(value, str) and (value != value.strip() or value == "")


def _jsonable(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """JSON-encode the columns a CSV would not round-trip (lists, and token strings with
    leading spaces or empty ones), and name them in the metadata."""
    out, cols = df.copy(), []
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]) and out[col].map(_needs_json).any():
            out[col] = out[col].map(lambda v: json.dumps(v) if not (isinstance(v, float) and v != v) else "")
            cols.append(col)
    return out, cols


class TableMismatch(ValueError):
    """A CSV that is not the one its ``.meta.json`` describes."""


def csv_digest(data: bytes) -> str:
    """The sha256 a table's metadata records of its CSV (line endings as ``\\n``, so that a
    checkout that rewrites them does not count as a change)."""
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def write_table(df: pd.DataFrame, folder: Path, name: str, meta: dict, **more) -> Path:
    """``folder/<name>.csv`` (columns a CSV would not round-trip JSON-encoded) and its
    ``.meta.json``: ``meta``, the table's name, rows and CSV digest, ``more``, the JSON
    columns. Both are written to temporary files and renamed into place, the metadata last,
    under the folder's lock (:mod:`utils.runs.store`)."""
    encoded, json_cols = _jsonable(df)
    data = encoded.to_csv(index=False).encode()
    meta = {**meta, "table": name, "rows": len(df), **more, "json_columns": json_cols, "csv_sha256": csv_digest(data)}
    path = folder / f"{name}.csv"
    with folder_lock(folder, f"writing {name}"):
        write_atomically(path, data)
        write_atomically(folder / f"{name}.meta.json", json.dumps(meta, indent=1, default=str).encode())
    return path


def save_table(df: pd.DataFrame, name: str, lm, params: dict, key: str | None = None) -> Path:
    """Write ``results/<model>/<name>.csv`` and its metadata; returns the CSV path."""
    return write_table(df, results_dir(lm), name, run_metadata(lm, params), key=key or _key(lm, name, params))


def save_cross_model_table(df: pd.DataFrame, name: str, params: dict, inputs: dict) -> Path:
    """Write ``results/<name>.csv`` for a table that spans models (the claims ledger), with
    the provenance of a per-model table minus the model, plus ``inputs``: per model, what
    the table was computed from (e.g. each source table's git commit and key)."""
    return write_table(df, output_dir("results", None), name, {"params": params, "inputs": inputs, **provenance()})


def load_meta(name: str, model: str | None, root: Path | None = None) -> dict | None:
    """The ``.meta.json`` of a saved table (``model`` None: a cross-model table), or None."""
    path = output_folder("results", model, root) / f"{name}.meta.json"
    return json.loads(path.read_text()) if path.exists() else None


READ_WAIT = 5.0
"""Seconds a reader waits for a CSV and its metadata to agree (another run replacing them)."""


def _read_pair(path: Path, meta_path: Path, expect_key: str | None) -> tuple[dict, bytes] | None:
    """The metadata and the CSV's bytes, read until they belong together: a run replacing
    them between the two reads is waited for; a pair that stays out of step (edited by hand,
    or a run stopped between its two renames) is a :class:`TableMismatch`."""
    deadline = time.monotonic() + READ_WAIT
    while True:
        try:
            meta = json.loads(meta_path.read_bytes())
            data = path.read_bytes()
            why = None
        except ValueError as err:  # a metadata file written in place by an older version, caught mid-write
            meta, data, why = {}, b"", f"its metadata is not valid JSON ({err})"
        if not why and expect_key is not None and meta.get("key") != expect_key:
            return None
        if not why and "csv_sha256" in meta and csv_digest(data) != meta["csv_sha256"]:
            why = "the CSV's sha256 is not the one its metadata records"
        if not why:
            return meta, data
        if time.monotonic() >= deadline:
            raise TableMismatch(f"{path} does not match {meta_path.name}: {why}. It was changed after it was written "
                                "(by hand, or by a run stopped between the two files): rerun the notebook that "
                                "writes it.")
        time.sleep(0.02)


def load_table(name: str, model: str | None, expect_key: str | None = None, root: Path | None = None) -> pd.DataFrame | None:
    """A saved table (None if absent, or if it was made with other parameters); ``model``
    None reads a cross-model table; ``root`` overrides :func:`output_root`. The CSV is
    parsed from the very bytes checked against its metadata (digest and row count)."""
    folder = output_folder("results", model, root)
    path, meta_path = folder / f"{name}.csv", folder / f"{name}.meta.json"
    if not path.exists() or not meta_path.exists():
        return None
    pair = _read_pair(path, meta_path, expect_key)
    if pair is None:
        return None
    meta, data = pair
    json_cols = meta.get("json_columns", [])
    columns = pd.read_csv(io.BytesIO(data), nrows=0).columns
    df = pd.read_csv(io.BytesIO(data), dtype={c: str for c in json_cols}, keep_default_na=False,
                     na_values={c: [""] for c in columns if c not in json_cols})
    if "rows" in meta and len(df) != meta["rows"]:
        raise TableMismatch(f"{path} has {len(df)} rows, its {meta_path.name} says {meta['rows']}: it was changed "
                            "after it was written (by hand, or by a run stopped mid-write): rerun the notebook that "
                            "writes it.")
    for col in json_cols:
        df[col] = df[col].map(lambda v: json.loads(v) if v else None)
    return df


def cached_table(name: str, lm, params: dict, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """Load ``name`` if it was saved with these parameters and these weights, else compute
    and save it."""
    key = _key(lm, name, params)
    results_dir(lm)  # this model's folder, before anything is computed
    try:
        df = load_table(name, lm.name, expect_key=key) if _reusable(lm, name) else None
    except TableMismatch as err:  # a cached table not to be trusted is computed again
        warnings.warn(f"{err} Computing {name} again.", stacklevel=2)
        df = None
    if df is None:
        df = compute()
        save_table(df, name, lm, params, key)
    return df


def sweep(
    name: str,
    lm,
    params: dict,
    items: Iterable[dict],
    compute: Callable[[dict], list[dict]],
    id_field: str = "known_id",
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``compute(item) -> rows`` for every item, resumably, and save the tidy table.

    Finished items are appended to ``results/<model>/.journal/<name>-<key>.jsonl`` as
    they complete, each with a digest of its content; a rerun with the same parameters
    and weights skips the items whose content is unchanged. Item ids must be unique.
    The sweep holds its journal's lock while it runs: a second run of the same sweep stops
    with :class:`ResultsBusy` before computing anything.
    """
    items = list(items)
    seen: dict = {}
    for i, item in enumerate(items):
        if item[id_field] in seen:
            raise ValueError(f"{name}: duplicate {id_field} {item[id_field]!r} (items {seen[item[id_field]]} and {i}); "
                             "each item needs its own id, or the journal would mix their rows")
        seen[item[id_field]] = i
    key = _key(lm, name, params)
    journal = results_dir(lm) / ".journal" / f"{name}-{key}.jsonl"
    with contextlib.suppress(OSError):  # a read-only folder: a journal that is there is still read
        journal.parent.mkdir(exist_ok=True)
    with run_lock(journal, f"the {name} sweep of {lm.name}"):
        return _sweep(name, lm, params, items, compute, id_field, progress, key, journal)


def _sweep(name, lm, params, items, compute, id_field, progress, key, journal) -> pd.DataFrame:
    digests = {it[id_field]: item_digest(it) for it in items}
    done: dict = {}
    reusable = _reusable(lm, f"the {name} sweep")
    if journal.exists() and reusable:
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption
                continue
            if entry.get("id") in digests and entry.get("digest") == digests[entry["id"]]:
                done[entry["id"]] = entry["rows"]
    todo = [it for it in items if it[id_field] not in done]
    resumed = len(items) - len(todo)
    note = f" ({resumed} more from an earlier run)" if resumed else ""
    if todo:  # all journaled: nothing to append (and a read-only folder is never opened for writing)
        with open_journal(journal, fresh=not reusable) as log:  # entries of other items stay for later runs
            for item in progress_line(todo, name, note=note, enabled=progress):
                rows = compute(item)
                done[item[id_field]] = rows
                log.write(json.dumps({"id": item[id_field], "digest": digests[item[id_field]], "rows": rows},
                                     default=_to_builtin) + "\n")  # one write per entry: a kill cuts at most this line
                log.flush()
    table = pd.DataFrame([row for it in items for row in done[it[id_field]]])
    try:
        save_table(table, name, lm, params, key)
    except OSError as err:  # a read-only results folder: fine if the table there is this one already
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        if not _is_saved(table, name, lm, key):
            raise PermissionError(
                f"The results folder {results_dir(lm)} cannot be written ({err.strerror or err}), and its {name}.csv "
                "is not this sweep's table: make the folder writable, or set DISSECT_OUTPUT_ROOT to a folder "
                "that is.") from err
    return table


def _is_saved(table: pd.DataFrame, name: str, lm, key: str) -> bool:
    """Whether ``results/<model>/<name>.csv`` is already ``table`` under ``key`` (same digest)."""
    meta = load_meta(name, lm.name)
    encoded, _ = _jsonable(table)
    return bool(meta) and meta.get("key") == key and meta.get("csv_sha256") == csv_digest(
        encoded.to_csv(index=False).encode())


def display_path(path) -> str:
    """A path as a reader should see it: relative to the project (``results/gemma-3-270m/x.csv``),
    or to the output root when ``$DISSECT_OUTPUT_ROOT`` puts outputs elsewhere; never the
    absolute path of the machine that ran the notebook."""
    path = Path(path).resolve()
    for root in (PROJECT_ROOT, output_root().resolve()):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return path.name


def _to_builtin(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a results journal")
