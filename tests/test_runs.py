"""Every table knows its run and its model, nothing combines unlike ones, and two runs never
garble one results folder (utils/runs/runid.py, utils/runs/store.py).

The new names are reached through ``results.`` inside the tests and the errors caught by
their base classes (ValueError, RuntimeError), so that on code without these guards each
test fails at its own assertion ("DID NOT RAISE", a wrong row), not at an import."""

import fcntl
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import threading
import time

import pandas as pd
import pytest

from utils.runs import results

FACTS = json.loads((results.PROJECT_ROOT / "data" / "facts_small.json").read_text())[:6]


class Described:
    """What the results layer reads of a model (``name``, ``weights_id``, ``describe()``), for the
    file mechanics that need no forward pass, in processes that need not import torch."""

    def __init__(self, name="raced-model", n_layers=2, weights_id="state-sha256:0"):
        self.name, self.n_layers, self.weights_id = name, n_layers, weights_id

    def describe(self):
        return {"model": self.name, "model_type": "llama", "n_layers": self.n_layers, "dtype": "float32",
                "device": "cpu", "weights_id": self.weights_id}


@pytest.fixture(scope="module")
def folder_model(tmp_path_factory):
    from tiny_models import save_tiny_folder

    from utils import load_model

    return load_model(str(save_tiny_folder(tmp_path_factory.mktemp("m") / "tiny")), device="cpu")


@pytest.fixture
def lm(folder_model):
    return folder_model  # each test evaluates it on its facts first (known_set), as the notebooks do


def _dataset(tmp_path, facts, name="facts.json"):
    path = tmp_path / name
    path.write_text(json.dumps(facts))
    return path


def _rows(facts, value=0.0):
    return lambda fact: [{"known_id": fact["known_id"], "layer": 0, "value": value}]


def _section_tables(lm, dataset, n_facts=None, names=("attributes_rate", "sublayer_knockout_official",
                                                      "sublayer_knockout_zero", "extraction_layers")):
    """Tables written as notebooks 02-03 write them: after the model's known set."""
    from utils.paper.facts import as_facts, known_set

    facts = as_facts(known_set(lm, dataset, n_facts))
    for name in names:
        results.sweep(name, lm, {"dataset": str(dataset), "n_facts": n_facts}, facts, _rows(facts), progress=False)


def _flow_table(lm, dataset, n_facts=None):
    """information_flow_prepend as notebook 01 writes it: a sweep whose parameters hold no n_facts."""
    from utils.paper.facts import as_facts, known_set

    facts = as_facts(known_set(lm, dataset, n_facts, prepend_sink=True))
    results.sweep("information_flow_prepend", lm, {"dataset": str(dataset), "k": 1, "sink": "prepend"}, facts,
                  _rows(facts), progress=False)


# --- every table says which run and which model it comes from --------------------------


def test_every_table_records_its_run_and_its_model(lm, tmp_path):
    path = _dataset(tmp_path, FACTS)
    _flow_table(lm, path, n_facts=4)
    meta = results.load_meta("information_flow_prepend", lm.name)
    assert meta["run"] == {"dataset": str(path), "dataset_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                           "n_facts": 4, "sink": "prepend"}
    identity = meta["model_identity"]
    assert identity["source"] == f"folder:{os.path.realpath(lm.name)}"
    assert {k: identity[k] for k in ("name", "model_type", "n_layers", "weights_id")} == {
        "name": lm.name, "model_type": "llama", "n_layers": 2, "weights_id": lm.weights_id}
    known = results.load_meta("facts_evaluated_sink", lm.name)["run"]
    assert known["prepend_sink"] is True and known["n_facts"] == 4


def test_the_run_is_not_part_of_a_tables_key(lm, tmp_path):
    """Recording the run changes no key: journals and cached tables written before are reused."""
    from utils.runs import runid

    for facts in (FACTS, FACTS[:3]):
        runid.note_facts(lm, "x", hashlib.sha256(json.dumps(facts).encode()).hexdigest(), None)
        results.save_table(pd.DataFrame({"x": [1]}), "t", lm, {"a": 1})
        assert results.load_meta("t", lm.name)["key"] == results._key(lm, "t", {"a": 1})


# --- mixed runs: notebook 01 on another dataset, 02-03 on the small one -----------------


def test_tables_from_two_datasets_are_not_combined(lm, tmp_path):
    from utils.companion import findings
    from utils.paper.ledger import ModelResults

    other = _dataset(tmp_path, [{**f, "known_id": 100 + f["known_id"]} for f in FACTS], "other.json")
    _flow_table(lm, other)  # notebook 01, rerun on another dataset
    _section_tables(lm, "small")  # notebooks 02-03 on the small one
    with pytest.raises(ValueError, match="dataset_sha256") as err:
        ModelResults.load(lm.name)
    message = str(err.value)
    assert "other.json) in information_flow_prepend" in message
    assert "(small) in attributes_rate, sublayer_knockout_official, sublayer_knockout_zero, extraction_layers" in message
    with pytest.raises(ValueError, match="information_flow_prepend"):
        findings.model_values(results.model_slug(lm.name), results.output_root())


def test_tables_of_two_n_facts_are_not_combined(lm):
    _flow_table(lm, "small", n_facts=3)
    _section_tables(lm, "small")
    from utils.paper.ledger import ModelResults

    with pytest.raises(ValueError, match=r"n_facts: 3 in information_flow_prepend; all facts in attributes_rate"):
        ModelResults.load(lm.name)


def test_tables_of_one_run_are_combined(lm):
    """The check refuses only what differs: one dataset, sinks chosen per table, loads."""
    from utils.paper.ledger import ModelResults

    _flow_table(lm, "small")
    _section_tables(lm, "small")
    loaded = ModelResults.load(lm.name)
    assert set(loaded.tables) == {"information_flow_prepend", "attributes_rate", "sublayer_knockout_official",
                                  "sublayer_knockout_zero", "extraction_layers"}


def test_a_folder_with_two_depths_is_refused_naming_the_tables():
    """The ledger once read a 2-layer table beside 30-layer ones and used 2 layers for depth."""
    deep, shallow = Described("x", 30, "state-sha256:a"), Described("x", 2, "state-sha256:b")
    metas = {"information_flow_prepend": {**shallow.describe(), "params": {}},
             "attributes_rate": {**deep.describe(), "params": {}}, "extraction_layers": {**deep.describe(), "params": {}}}
    with pytest.raises(ValueError) as err:
        results.check_same_run(metas, where="results/x/")
    assert "n_layers: 2 in information_flow_prepend; 30 in attributes_rate, extraction_layers" in str(err.value)
    assert "weights_id: state-sha256:b in information_flow_prepend" in str(err.value)


# --- one folder per model: two models with one folder name ------------------------------


def test_two_model_folders_with_one_name_do_not_share_results(tmp_path):
    from tiny_models import save_tiny_folder

    from utils import load_model

    first = load_model(str(save_tiny_folder(tmp_path / "org1" / "x", seed=0)), device="cpu")
    second = load_model(str(save_tiny_folder(tmp_path / "org2" / "x", seed=1)), device="cpu")
    results.save_table(pd.DataFrame({"v": [1]}), "t", first, {})
    before = sorted(p.name for p in results.output_folder("results", "x").iterdir())
    with pytest.raises(ValueError, match="same folder name") as err:
        results.save_table(pd.DataFrame({"v": [2]}), "t", second, {})
    assert str(tmp_path / "org1" / "x") in str(err.value) and str(tmp_path / "org2" / "x") in str(err.value)
    with pytest.raises(ValueError, match="same folder name"):  # a sweep stops before computing anything
        results.sweep("s", second, {}, [{"known_id": 0}], lambda it: pytest.fail("computed"), progress=False)
    assert sorted(p.name for p in results.output_folder("results", "x").iterdir()) == before
    assert results.load_table("t", "x").v.tolist() == [1]


def test_a_copy_named_like_an_embedded_model_does_not_write_into_its_results(tmp_path):
    """The committed folders (written before folders recorded their model) are recognised by their tables."""
    from tiny_models import save_tiny_folder

    from utils import load_model

    committed = results.PROJECT_ROOT / "results" / "smollm2-135m"
    target = results.output_dir("results", "smollm2-135m")
    for suffix in (".csv", ".meta.json"):
        shutil.copy(committed / f"extraction_heads{suffix}", target)
    copy = load_model(str(save_tiny_folder(tmp_path / "finetuned" / "smollm2-135m")), device="cpu")
    with pytest.raises(ValueError, match=r"smollm2-135m \(embedded:smollm2-135m\)"):
        results.save_table(pd.DataFrame({"v": [1]}), "extraction_heads", copy, {})


def test_hub_ids_with_one_last_part_are_two_sources():
    from utils.runs import runid

    a, b = (runid.model_source(f"{org}/x", f"hub:{org}/x@0123:abc") for org in ("org1", "org2"))
    assert a == "hub:org1/x" and b == "hub:org2/x"
    assert runid.model_source("gpt2-xl", "hub:openai-community/gpt2-xl@1:2") == runid.model_source(
        "openai-community/gpt2-xl", "hub:openai-community/gpt2-xl@1:2")  # an alias is the same model


# --- tables and journals written safely --------------------------------------------------


def _writer(tag: str, seconds: float) -> None:
    rng, lm = random.Random(tag), Described()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n = rng.randint(1, 3000)
        results.save_table(pd.DataFrame({"writer": [tag] * n, "rows": [n] * n, "x": range(n)}), "raced", lm,
                           {"writer": tag})


def test_two_runs_writing_one_folder_never_show_a_reader_a_wrong_or_cut_table():
    """Two processes replace one table (each under its own key) for 8 s while this one reads it:
    a reader asking for one key gets that writer's rows, whole, or nothing."""
    lm = Described()
    keys = {tag: results._key(lm, "raced", {"writer": tag}) for tag in "AB"}
    results.output_dir("results", lm.name)
    writers = [multiprocessing.get_context("fork").Process(target=_writer, args=(tag, 8.0)) for tag in "AB"]
    for w in writers:
        w.start()
    reads, problems = 0, []
    while any(w.is_alive() for w in writers):
        for tag in "AB":
            try:
                table = results.load_table("raced", lm.name, expect_key=keys[tag])
            except Exception as err:  # noqa: BLE001 - every failure to read is one of the problems counted
                problems.append(f"{type(err).__name__}: {str(err)[:80]}")
                continue
            if table is None:
                continue
            reads += 1
            if set(table.writer) != {tag}:
                problems.append(f"the other writer's rows under {tag}'s key")
            elif len(table) != table.rows.iat[0]:
                problems.append(f"a cut table: {len(table)} of {table.rows.iat[0]} rows")
    for w in writers:
        w.join()
    assert [w.exitcode for w in writers] == [0, 0]
    counted = pd.Series(problems, dtype=str).str.split(":").str[0].value_counts().to_dict()
    assert problems == [], f"{len(problems)} bad reads of {reads + len(problems)}: {counted}"
    assert reads > 20  # the reader did read while they wrote


def _hold(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_second_run_of_a_sweep_stops_before_computing(tmp_path):
    lm = Described("busy")
    key = results._key(lm, "demo", {})
    journal = results.output_dir("results", lm.name) / ".journal" / f"demo-{key}.jsonl"
    journal.parent.mkdir()
    fd = _hold(journal.with_suffix(".lock"))  # another run, in the middle of this sweep
    try:
        with pytest.raises(RuntimeError, match="another run is computing the demo sweep of busy"):
            results.sweep("demo", lm, {}, [{"known_id": 0}], lambda it: pytest.fail("computed twice"), progress=False)
    finally:
        os.close(fd)
    assert results.sweep("demo", lm, {}, [{"known_id": 0}], lambda it: [{"v": 1}], progress=False).v.tolist() == [1]


def test_a_writer_waits_for_another_runs_write_then_gives_up_naming_it(monkeypatch):
    lm = Described("waits")
    folder = results.output_dir("results", lm.name)
    results.save_table(pd.DataFrame({"v": [0]}), "t", lm, {})
    monkeypatch.setattr("utils.runs.store.WRITE_WAIT", 0.3)
    fd = _hold(folder / ".lock")  # another run, writing a table of this folder
    (folder / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "what": "writing t", "since": "now"}))
    release = threading.Timer(0.1, os.close, [fd])
    try:
        with pytest.raises(RuntimeError, match="held by pid 4242 on elsewhere, writing t"):
            results.save_table(pd.DataFrame({"v": [1]}), "t", lm, {})
        release.start()  # the other write ends within the wait
        results.save_table(pd.DataFrame({"v": [2]}), "t", lm, {})
    finally:
        if release.ident is None:  # never started
            os.close(fd)
        else:
            release.join()
    assert results.load_table("t", lm.name).v.tolist() == [2]


def test_an_entry_cut_by_a_kill_does_not_take_the_next_one_with_it():
    lm = Described("journaled")
    items = [{"known_id": i} for i in range(3)]
    calls = []

    def compute(item):
        calls.append(item["known_id"])
        return [{"known_id": item["known_id"]}]

    results.sweep("demo", lm, {}, items[:1], compute, progress=False)
    journal = results.output_folder("results", lm.name) / ".journal" / f"demo-{results._key(lm, 'demo', {})}.jsonl"
    with open(journal, "a") as log:
        log.write('{"id": 1, "digest": "0f3a", "ro')  # killed in the middle of an entry
    results.sweep("demo", lm, {}, items, compute, progress=False)
    results.sweep("demo", lm, {}, items, compute, progress=False)
    assert calls == [0, 1, 2]  # every finished fact journaled once


def test_a_csv_changed_after_it_was_written_is_refused_and_recomputed_when_cached(monkeypatch):
    monkeypatch.setattr(results, "READ_WAIT", 0.1)
    lm = Described("edited")
    path = results.save_table(pd.DataFrame({"v": [1, 2, 3]}), "t", lm, {})
    path.write_text(path.read_text().replace("2", "7"))  # same rows, another value
    with pytest.raises(ValueError, match="does not match t.meta.json"):
        results.load_table("t", lm.name)
    made = []
    with pytest.warns(UserWarning, match="Computing t again"):
        again = results.cached_table("t", lm, {}, lambda: made.append(1) or pd.DataFrame({"v": [1, 2, 3]}))
    assert made == [1] and again.v.tolist() == [1, 2, 3]


def test_tables_written_atomically_keep_the_usual_file_mode():
    """A temporary file is created private; the table renamed from it is not."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = results.save_table(pd.DataFrame({"v": [1]}), "t", Described("modes"), {})
    assert {oct(p.stat().st_mode & 0o777) for p in (path, path.with_name("t.meta.json"))} == {oct(0o666 & ~mask)}


def test_a_cut_csv_of_an_older_run_is_refused():
    """Tables written before the CSV's digest was recorded are checked on their row count."""
    lm = Described("older")
    path = results.save_table(pd.DataFrame({"v": range(5)}), "t", lm, {})
    meta_path = path.with_name("t.meta.json")
    meta = json.loads(meta_path.read_text())
    meta.pop("csv_sha256", None)
    meta_path.write_text(json.dumps(meta))
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")  # cut mid-write
    with pytest.raises(ValueError, match="has 2 rows, its t.meta.json says 5"):
        results.load_table("t", lm.name)


# --- DISSECT_OUTPUT_ROOT: where make puts the outputs, and what it says -----------------


def _make(*args, env=None):
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    clean = {k: v for k, v in os.environ.items() if k not in ("DISSECT_OUTPUT_ROOT", "MAKEFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=results.PROJECT_ROOT, capture_output=True,
                          text=True, env={**clean, **(env or {})}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_writes_and_names_every_output_under_the_output_root():
    import re

    root = "/tmp/elsewhere"
    out = _make("-n", "reproduce", "atlas", "MODEL=org/x", "MODELS=org/x", env={"DISSECT_OUTPUT_ROOT": root})
    assert f"{root}/executed/x/$(basename $nb)" in out  # papermill's output notebook
    assert f"executed notebooks: {root}/executed/x/  figures: {root}/figures/x/  results: {root}/results/x/" in out
    assert f"{root}/executed/atlas/04_paper_vs_models.ipynb" in out
    assert f"ledger: {root}/results/ledger.csv  figures: {root}/figures/atlas/  executed notebook: {root}/executed/atlas/" in out
    assert re.findall(r"(?<![\w/.-])(?:executed|figures|results)/", out) == []  # nothing said or written in ./
    show = "show-root: ; @echo $$DISSECT_OUTPUT_ROOT"  # a relative root is made absolute: papermill runs in notebooks/
    assert _make("--eval", show, "show-root", "DISSECT_OUTPUT_ROOT=rel/out").strip() == str(results.PROJECT_ROOT / "rel/out")
    plain = _make("-n", "reproduce", "MODEL=smollm2-135m")
    assert "executed notebooks: executed/smollm2-135m/  figures: figures/smollm2-135m/" in plain  # unset: this folder
