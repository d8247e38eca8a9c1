import json
import time

import pandas as pd
import pytest
from tiny_models import tiny_model

from utils import results


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
    for field in ("model", "dtype", "attn_backend", "versions", "git_commit", "params"):
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
    from utils.plotting import plt, save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 3, 2])
    first = {p: p.read_bytes() for p in save_figure(fig, "tiny", "line")}
    time.sleep(1.1)  # the PDF date has one-second resolution
    second = {p: p.read_bytes() for p in save_figure(fig, "tiny", "line")}
    plt.close(fig)
    assert {p.suffix for p in first} == {".png", ".pdf"} and first == second
