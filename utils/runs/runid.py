"""Which run and which model every table comes from, and the refusal to combine unlike ones.

Every table's ``.meta.json`` carries two identities (:func:`run_id`, :func:`model_identity`):

* ``run``: the facts it was computed on -- the dataset (its name and the sha256 of its
  bytes), ``n_facts``, and the table's own parameters that shape the facts (``sink``,
  ``prepend_sink``, ``include_sink``). The dataset and ``n_facts`` come from the known set
  the model was last evaluated on in this process (:func:`note_facts`, which
  :func:`utils.paper.facts.known_set` calls): a sweep's parameters do not hold ``n_facts``
  (its journal is shared across ``n_facts`` on purpose), and none holds the digest.
  Parameters that name a dataset or ``n_facts`` of their own win over what was noted.
* ``model_identity``: name, ``model_type``, ``n_layers``, dtype, ``weights_id`` and the
  model's *source* (:func:`model_source`): what its name refers to -- an embedded model, a
  hub repository, a local folder (its resolved path), a model built in memory.

:func:`check_same_run` is what notebook 04 (:meth:`utils.paper.ledger.ModelResults.load`)
and the README's findings call before they combine one model's tables: tables from two
datasets, two ``n_facts``, two sets of weights, two depths, two dtypes or two sources are a
:class:`MixedRunsError` naming the tables and the fields. The sink parameters are recorded
but not compared: notebook 01 writes one table per sink choice by design, and each claim
reads one table whose sink its metadata states.

**One folder per model source, or an error.** A model's results live in
``results/<last part of its name>/`` (:func:`utils.runs.results.model_slug`), the plain
name for the embedded models and for every hub id. Two sources with the same last part --
a fine-tuned copy in a folder named ``smollm2-135m`` and the embedded model, ``org1/x`` and
``org2/x`` -- would share it, so the first run in a folder records its source in
``.model.json`` and a run of another source there is a :class:`ResultsFolderClash` naming
both (:func:`claim_folder`), before anything is computed or written. An error rather than a
folder name with a digest in it, because every path stays predictable -- ``make`` prints
``results/$(notdir MODEL)/``, the README and the notebooks name it, a reader finds it -- and
no folder's name depends on which model happened to run first. The way out is said in the
error: another output root (``DISSECT_OUTPUT_ROOT``), a renamed model folder, or removing
the old results. New weights of the *same* source (a folder retrained in place, a new hub
revision) share the folder: every result's key includes ``weights_id``, so nothing stale is
reused, and :func:`check_same_run` refuses a folder left half old, half new.

Tables written before these fields existed are read with what their metadata has: the
dataset's name and ``n_facts`` where their parameters hold them, the model fields of
``describe()``; a field a table does not record is not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

from .store import folder_lock, write_atomically

OWNER_FILE = ".model.json"
SHAPE_PARAMS = ("sink", "prepend_sink", "include_sink")
"""Parameters that change which tokens a fact has (a sink token, the official position sets)."""
RUN_FIELDS = ("dataset_sha256", "n_facts")
"""What must agree across the tables of one model that are combined."""
MODEL_FIELDS = ("source", "weights_id", "model_type", "n_layers", "dtype")
"""The model's identity fields that must agree (the name may be spelled two ways: ``gpt2-xl``
and ``openai-community/gpt2-xl`` are one model, one source)."""


class MixedRunsError(ValueError):
    """Tables of one model that come from different runs or models, about to be combined."""


class ResultsFolderClash(ValueError):
    """Two models whose results would share one folder."""


# --------------------------------------------------------------------------------------
# The model


def model_source(name: str, weights_id: str) -> str:
    """What a model's name refers to, from its weights' identity (:mod:`utils.core.identity`):
    ``embedded:<name>``, ``hub:<org/name>``, ``folder:<resolved path>`` or ``memory:<name>``."""
    if weights_id.startswith("gguf-sha256:"):
        return f"embedded:{name}"
    if weights_id.startswith("hub:"):
        return "hub:" + weights_id[4:].split("@", 1)[0]
    if weights_id.startswith("folder-sha256:") or Path(str(name)).expanduser().is_dir():
        return f"folder:{Path(str(name)).expanduser().resolve()}"
    return f"memory:{name}"


def model_identity(lm) -> dict:
    """Name, type, depth, dtype, weights and source of a loaded model."""
    d = lm.describe()
    return {"name": d["model"], "model_type": d.get("model_type"), "n_layers": d.get("n_layers"),
            "dtype": d.get("dtype"), "weights_id": d.get("weights_id", "unknown"),
            "source": model_source(d["model"], d.get("weights_id", "unknown"))}


def _identity_key(identity: dict) -> str:
    return f"{identity['source']}|{identity['weights_id']}|{identity['dtype']}"


# --------------------------------------------------------------------------------------
# The run

_facts_in_use: dict[str, dict] = {}
"""Per model (source, weights, dtype): the dataset and ``n_facts`` it was last evaluated on."""


def note_facts(lm, dataset, dataset_sha256: str, n_facts: int | None) -> None:
    """Record that ``lm`` is being run on these facts: every table saved for it from now on
    says so in its metadata (see the module docs)."""
    _facts_in_use[_identity_key(model_identity(lm))] = {
        "dataset": str(dataset), "dataset_sha256": dataset_sha256, "n_facts": n_facts or None}


def _from_params(params: dict) -> dict:
    """The dataset and ``n_facts`` that a table's parameters name themselves."""
    run = {k: str(params[k]) for k in ("dataset", "dataset_sha256") if params.get(k) is not None}
    if "n_facts" in params:
        run["n_facts"] = params["n_facts"] or None
    return run


def run_id(lm, params: dict) -> dict:
    """The facts a table of ``lm`` with ``params`` was computed on (see the module docs)."""
    noted = _facts_in_use.get(_identity_key(model_identity(lm)))
    own = _from_params(params)
    if noted is not None and ("dataset" in own and own["dataset"] != noted["dataset"]
                              or "n_facts" in own and own["n_facts"] != noted["n_facts"]):
        noted = None  # the parameters name other facts than the ones noted: they are the table's
    run = {**(noted or {}), **own}
    return {**run, **{k: params[k] for k in SHAPE_PARAMS if k in params}}


# --------------------------------------------------------------------------------------
# Reading the identities back, and comparing them


def recorded(meta: dict) -> tuple[dict, dict]:
    """The run and the model identity a table's metadata records (older tables: what their
    parameters and ``describe()`` fields hold)."""
    run = dict(meta["run"]) if "run" in meta else _from_params(meta.get("params") or {})
    model = dict(meta.get("model_identity") or {})
    if not model and "model" in meta:
        model = {"name": meta["model"], **{k: meta[k] for k in ("model_type", "n_layers", "dtype", "weights_id")
                                           if k in meta}}
        if "weights_id" in model:
            model["source"] = model_source(meta["model"], model["weights_id"])
    return run, model


def _show(field: str, value, run: dict) -> str:
    if field == "dataset_sha256":
        return f"{value[:12]}… ({run.get('dataset', '?')})"
    if field == "n_facts":
        return "all facts" if value is None else str(value)
    return str(value)


def check_same_run(metas: dict[str, dict], where: str = "") -> None:
    """Raise :class:`MixedRunsError` when the tables ``{name: metadata}`` do not all come from
    one run of one model: per field that differs, which tables hold which value. A field is
    compared across the tables that record it; the dataset's name only when none records
    its digest."""
    ids = {name: recorded(meta) for name, meta in metas.items() if meta}
    if len(ids) < 2:
        return
    fields = [("run", f) for f in RUN_FIELDS] + [("model", f) for f in MODEL_FIELDS]
    if not any("dataset_sha256" in run for run, _ in ids.values()):
        fields.insert(0, ("run", "dataset"))
    problems = []
    for part, field in fields:
        groups: dict[str, list[str]] = {}
        for name, (run, model) in ids.items():
            record = run if part == "run" else model
            if field in record and (field != "dataset_sha256" or record[field]):
                groups.setdefault(_show(field, record[field], run), []).append(name)
        if len(groups) > 1:
            problems.append(f"  {field}: " + "; ".join(f"{value} in {', '.join(names)}" for value, names in groups.items()))
    if problems:
        place = f"{where}: " if where else ""
        raise MixedRunsError(
            f"{place}these tables come from different runs or models and are not combined:\n" + "\n".join(problems)
            + "\nRerun the notebooks that wrote the odd ones out with the same model, dataset and n_facts "
              "(`make reproduce` runs them all), or keep each run under its own DISSECT_OUTPUT_ROOT.")


# --------------------------------------------------------------------------------------
# One folder per model source


def _owner_of(folder: Path) -> dict | None:
    """The model a results folder belongs to: its ``.model.json``, else (a folder written
    before it existed) the model of the first table's metadata."""
    owner = folder / OWNER_FILE
    if owner.exists():
        try:
            return json.loads(owner.read_text())
        except ValueError:
            pass
    for meta_path in sorted(folder.glob("*.meta.json")):
        try:
            _, model = recorded(json.loads(meta_path.read_text()))
        except (OSError, ValueError):
            continue
        if model.get("source"):
            return {**model, "from": meta_path.name}
    return None


def _name(model: dict) -> str:
    return f"{model.get('name')} ({model.get('source')})"


def claim_folder(folder: Path, lm) -> Path:
    """``folder`` as the results folder of ``lm``: recorded as its own when new, a
    :class:`ResultsFolderClash` when it holds another source's results (see the module docs)."""
    folder = Path(folder)
    mine = model_identity(lm)
    owner = _owner_of(folder)
    if owner is None:
        with folder_lock(folder, f"claiming {folder.name} for {mine['name']}"):
            owner = _owner_of(folder)
            if owner is None:
                record = {k: mine[k] for k in ("name", "source", "model_type", "n_layers")}
                try:
                    write_atomically(folder / OWNER_FILE, json.dumps(record, indent=1).encode())
                except OSError:  # a read-only folder: nothing is written there, nothing to claim
                    pass
                return folder
    if owner.get("source") != mine["source"]:
        raise ResultsFolderClash(
            f"{folder} holds the results of {_name(owner)}; {_name(mine)} has the same folder name, and the two "
            "would be mixed. Give this run its own output root (DISSECT_OUTPUT_ROOT=/some/other/folder), give the "
            f"model's folder another name, or remove {folder} if its results are no longer wanted.")
    return folder


__all__ = ["MODEL_FIELDS", "OWNER_FILE", "RUN_FIELDS", "SHAPE_PARAMS", "MixedRunsError", "ResultsFolderClash",
           "check_same_run", "claim_folder", "model_identity", "model_source", "note_facts",
           "recorded", "run_id"]
