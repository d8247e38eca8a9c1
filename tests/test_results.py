import json
import time

import pandas as pd
import pytest
from tiny_models import tiny_model

from utils.runs import results


@pytest.fixture
def lm():
    return tiny_model("llama")


def test_table_round_trips_lists_and_token_strings(lm):
    df = pd.DataFrame({"known_id": [0, 1, 2], "positions": [[1, 2], [3], []], "token": [" Paris", "", "\n"],
                       "word": ["a", "b", None], "prob": [0.5, float("nan"), 1.0], "known": [True, False, True]})
    results.save_table(df, "demo", lm, {"p": 1})
    back = results.load_table("demo", lm.name)
    assert back["positions"].tolist() == [[1, 2], [3], []]
    assert back["token"].tolist() == [" Paris", "", "\n"]
    assert back["known"].tolist() == [True, False, True]
    assert back["prob"].isna().tolist() == [False, True, False]
    meta = json.loads((results.output_dir("results", lm.name) / "demo.meta.json").read_text())
    for field in ("model", "dtype", "attn_implementation", "versions", "git_commit", "params"):
        assert field in meta
    assert meta["params"] == {"p": 1} and "torch" in meta["versions"]


def test_sweep_resumes_and_never_reuses_stale_rows(lm):
    items = [{"known_id": i} for i in range(5)]
    calls = []

    def compute(item, fail_at=None):
        if item["known_id"] == fail_at:
            raise KeyboardInterrupt
        calls.append(item["known_id"])
        return [{"known_id": item["known_id"], "layer": l, "value": item["known_id"] * 10 + l} for l in range(2)]

    with pytest.raises(KeyboardInterrupt):
        results.sweep("demo", lm, {"k": 1}, items, lambda it: compute(it, fail_at=3), progress=False)
    assert calls == [0, 1, 2]
    table = results.sweep("demo", lm, {"k": 1}, items, compute, progress=False)
    assert calls == [0, 1, 2, 3, 4]  # resumed: only the missing facts were computed
    assert len(table) == 10 and table["value"].tolist()[-1] == 41
    results.sweep("demo", lm, {"k": 2}, items, compute, progress=False)
    assert calls[5:] == [0, 1, 2, 3, 4]  # a changed parameter recomputes everything


def test_cached_table_recomputes_when_parameters_change(lm):
    counter = []
    make = lambda: counter.append(1) or pd.DataFrame({"x": [len(counter)]})  # noqa: E731
    assert results.cached_table("t", lm, {"a": 1}, make)["x"].item() == 1
    assert results.cached_table("t", lm, {"a": 1}, make)["x"].item() == 1
    assert results.cached_table("t", lm, {"a": 2}, make)["x"].item() == 2


def test_outputs_go_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(tmp_path))
    assert results.output_dir("figures", "EleutherAI/gpt-j-6b") == tmp_path / "figures" / "gpt-j-6b"


def test_saving_a_figure_again_writes_the_same_bytes():
    """Reruns with the same numbers leave the committed figures unchanged (no PDF date)."""
    from utils.companion.plotting import plt, save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 3, 2])
    first = {p: p.read_bytes() for p in save_figure(fig, "tiny", "line")}
    time.sleep(1.1)  # the PDF date has one-second resolution
    second = {p: p.read_bytes() for p in save_figure(fig, "tiny", "line")}
    plt.close(fig)
    assert {p.suffix for p in first} == {".png", ".pdf"} and first == second


# --- results are keyed by content: the dataset's bytes and the weights' identity ---

FACTS = json.loads((results.PROJECT_ROOT / "data" / "facts_small.json").read_text())[:6]


def _write(path, facts):
    path.write_text(json.dumps(facts))
    return path


def _top_tokens(lm, facts):
    from utils import run

    return [int(run(lm, [lm.encode(f["prompt"])]).logits[0].argmax()) for f in facts]


def _sweep_top(lm, facts, calls=None):
    """A sweep whose rows are the model's top-1 next token for each fact."""
    def compute(fact):
        if calls is not None:
            calls.append(fact["known_id"])
        return [{"known_id": fact["known_id"], "top": _top_tokens(lm, [fact])[0]}]

    return results.sweep("top_token", lm, {"k": 1}, facts, compute, progress=False)


def test_known_set_is_fresh_after_the_dataset_file_is_edited_in_place(tmp_path):
    from tiny_models import save_tiny_folder

    from utils import load_model
    from utils.paper.facts import known_set

    lm = load_model(str(save_tiny_folder(tmp_path / "model")), device="cpu")
    path = _write(tmp_path / "facts.json", FACTS)
    first = known_set(lm, path)
    assert first.prompt.tolist() == [f["prompt"] for f in FACTS]
    edited = [dict(f) for f in FACTS]
    edited[2] = {**edited[2], "subject": "Apple", "prompt": "Apple is owned by", "attribute": "Beats"}
    _write(path, edited)  # same path, same size class, new content
    second = known_set(lm, path)
    assert second.prompt.tolist() == [f["prompt"] for f in edited]
    assert second.attribute.tolist()[2] == "Beats"


def test_swapped_weights_give_a_fresh_known_set_and_fresh_sweep_rows(tmp_path):
    """Replace a model folder's weights (same config, same path) and nothing of the old
    model is reused: the known set and the sweep rows are the new model's."""
    from tiny_models import save_tiny_folder

    from utils import load_model
    from utils.paper.facts import build_known_set, known_set, load_facts

    folder = save_tiny_folder(tmp_path / "model", seed=0)
    path = _write(tmp_path / "facts.json", FACTS)
    old = load_model(str(folder), device="cpu")
    old_known, old_rows = known_set(old, path), _sweep_top(old, FACTS)
    assert old_rows.top.tolist() == _top_tokens(old, FACTS)

    save_tiny_folder(folder, seed=1)  # other weights in the same files
    new = load_model(str(folder), device="cpu")
    assert old.describe()["n_layers"] == new.describe()["n_layers"] and _top_tokens(new, FACTS) != _top_tokens(old, FACTS)
    new_known = known_set(new, path)
    fresh = build_known_set(new, load_facts(path), progress=False)
    assert new_known.pred_token_id.tolist() == fresh.pred_token_id.tolist()
    assert new_known.pred_token_id.tolist() != old_known.pred_token_id.tolist()
    calls = []
    new_rows = _sweep_top(new, FACTS, calls)
    assert calls == [f["known_id"] for f in FACTS]  # every fact computed again
    assert new_rows.top.tolist() == _top_tokens(new, FACTS)


def test_a_sweep_recomputes_a_fact_whose_content_changed(lm):
    items = [{"known_id": i, "prompt": f"prompt {i}"} for i in range(4)]
    calls = []

    def compute(item):
        calls.append(item["known_id"])
        return [{"known_id": item["known_id"], "prompt": item["prompt"]}]

    results.sweep("demo", lm, {}, items[:3], compute, progress=False)
    assert calls == [0, 1, 2]
    items[1] = {"known_id": 1, "prompt": "another prompt"}  # same id, another fact
    table = results.sweep("demo", lm, {}, items, compute, progress=False)
    assert calls[3:] == [1, 3]  # the changed fact and the new one; 0 and 2 resumed (also across n_facts)
    assert table.prompt.tolist() == ["prompt 0", "another prompt", "prompt 2", "prompt 3"]


def test_a_sweep_refuses_duplicate_ids(lm):
    items = [{"known_id": 0, "prompt": "a"}, {"known_id": 0, "prompt": "b"}]
    with pytest.raises(ValueError, match="duplicate known_id 0"):
        results.sweep("demo", lm, {}, items, lambda it: [{"known_id": it["known_id"]}], progress=False)


def test_in_memory_models_are_identified_by_their_weights():
    assert tiny_model("llama", seed=0).weights_id == tiny_model("llama", seed=0).weights_id
    assert tiny_model("llama", seed=0).weights_id != tiny_model("llama", seed=1).weights_id
    assert tiny_model("llama").weights_id.startswith("state-sha256:")


def test_unknown_weights_never_reuse_a_journal_or_a_cached_table(lm):
    import dataclasses

    unknown = dataclasses.replace(lm, weights_id="unknown")
    calls = []
    for _ in range(2):
        with pytest.warns(UserWarning, match="weights of tiny-llama are unknown"):
            results.sweep("demo", unknown, {}, [{"known_id": 0}], lambda it: calls.append(0) or [{"x": 1}],
                          progress=False)
    assert calls == [0, 0]
    counter = []
    for _ in range(2):
        with pytest.warns(UserWarning, match="weights of tiny-llama are unknown"):
            results.cached_table("t", unknown, {}, lambda: counter.append(1) or pd.DataFrame({"x": [1]}))
    assert counter == [1, 1]


def test_a_sweep_resumes_from_a_cached_known_set(tmp_path):
    """Journal entries written while the known set was computed are reused when it is read
    back from its CSV (NaN for None, floats for ints): the item digests agree."""
    from tiny_models import save_tiny_folder

    from utils import load_model
    from utils.paper.facts import known_set

    lm = load_model(str(save_tiny_folder(tmp_path / "model")), device="cpu")
    facts = [dict(f) for f in FACTS]
    facts[3]["subject"] = "Nowhere"  # skipped: NaN token columns, a skip_reason
    path = _write(tmp_path / "facts.json", facts)
    for sink in (None, True):
        calls = []
        compute = lambda f: calls.append(f["known_id"]) or [{"known_id": f["known_id"]}]  # noqa: E731
        fresh = known_set(lm, path, prepend_sink=sink)
        results.sweep(f"demo{sink}", lm, {}, fresh.to_dict("records"), compute, progress=False)
        cached = known_set(lm, path, prepend_sink=sink)
        results.sweep(f"demo{sink}", lm, {}, cached.to_dict("records"), compute, progress=False)
        assert calls == fresh.known_id.tolist()  # each fact once


def test_a_model_folder_is_hashed_once(tmp_path, monkeypatch):
    """The weight files' digests are cached by path, size and modification time: a
    24 GB folder is read once, not at every load."""
    from tiny_models import save_tiny_folder

    from utils.core import identity as digests
    from utils.core.models import load_model

    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    folder = save_tiny_folder(tmp_path / "model")
    first = load_model(str(folder), device="cpu").weights_id
    hashed = []
    real = digests.sha256_of_file
    monkeypatch.setattr(digests, "sha256_of_file", lambda p: hashed.append(p) or real(p))
    assert load_model(str(folder), device="cpu").weights_id == first
    assert hashed == []
    save_tiny_folder(folder, seed=1)
    assert load_model(str(folder), device="cpu").weights_id != first
    assert any(p.name == "model.safetensors" for p in hashed)


def test_a_hub_snapshot_is_identified_by_its_revision_and_blob_names(tmp_path, monkeypatch):
    """A model in the Hugging Face cache (loaded by hub id, offline here) is identified by
    the commit it was downloaded at and the sha256 names of its blobs, without reading them."""
    import hashlib
    import shutil

    import huggingface_hub.constants
    from tiny_models import save_tiny_folder

    from utils.core import identity as digests
    from utils.core.models import load_model

    saved = save_tiny_folder(tmp_path / "saved")
    repo = tmp_path / "hub" / "models--acme--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in saved.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / blob)
        (repo / "snapshots" / commit / file.name).symlink_to(f"../../blobs/{blob}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(digests, "sha256_of_file", lambda p: pytest.fail(f"read {p}"))
    lm = load_model("acme/tiny", device="cpu")
    assert lm.weights_id.startswith(f"hub:acme/tiny@{commit}:")
    again = load_model("acme/tiny", device="cpu")
    assert again.weights_id == lm.weights_id and "weights_id" in lm.describe()
