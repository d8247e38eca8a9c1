"""Bad inputs a user will give (issue 21): each stops with an error that names the problem (or,
for a subject mentioned twice, a counted warning), before anything is written."""

import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import save_tiny_folder, tiny_hf_model, tiny_tokenizer

from utils.core.forward import run
from utils.core.models import load_model, wrap_model
from utils.core.sources import check_folder, prepare

ROOT = Path(__file__).resolve().parent.parent


def test_a_prompt_longer_than_the_models_positions():
    lm = wrap_model(tiny_hf_model("gpt2"), tokenizer=None, name="tiny-gpt2", check=False)  # 64 learned positions
    with pytest.raises(ValueError, match="has 70 tokens, more than the 64 positions of tiny-gpt2"):
        run(lm, torch.arange(70)[None] % 90 + 3)


def test_a_fact_whose_prompt_is_too_long_stops_before_any_prediction():
    from utils.paper.facts import tokenize_facts

    lm = wrap_model(tiny_hf_model("gpt2"), tokenizer=tiny_tokenizer(), name="tiny-gpt2", check=False)
    long = "The Eiffel Tower " * 40 + "is in"
    facts = pd.DataFrame([{"known_id": 7, "subject": "Beats Music", "attribute": "Apple", "template": "{}",
                           "prompt": "Beats Music is owned by " + long, "relation_id": "P1"}])
    with pytest.raises(ValueError, match=r"prompt of fact 7 .* more than the 64 positions"):
        tokenize_facts(lm, facts)


def test_a_subject_mentioned_twice_is_a_counted_warning():
    from utils.paper.facts import tokenize_facts

    lm = wrap_model(tiny_hf_model("llama"), tokenizer=tiny_tokenizer(), name="tiny-llama", check=False)
    facts = pd.DataFrame([
        {"known_id": 1, "subject": "Paris", "attribute": "France", "template": "{}",
         "prompt": "Paris is in Paris, the capital of", "relation_id": "P1"},
        {"known_id": 2, "subject": "Apple", "attribute": "Cupertino", "template": "{}",
         "prompt": "Apple is based in", "relation_id": "P1"}])
    with pytest.warns(UserWarning, match=r"1 of 2 facts mention their subject more than once \(e\.g\. fact 1: "
                                         r"'Paris' 2 times\)\. Only the first mention's tokens count"):
        prepared, _ = tokenize_facts(lm, facts)
    _, spans = lm.encode(facts["prompt"][0], offsets=True)
    assert all(spans[p][1] <= len("Paris") for p in prepared["subject_positions"][0])  # the first mention only


def test_a_folder_without_a_tokenizer(tmp_path):
    folder = save_tiny_folder(tmp_path / "m")
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    for call in (lambda: load_model(str(folder), device="cpu"), lambda: prepare(str(folder), device="cpu")):
        with pytest.raises(FileNotFoundError, match="has no tokenizer"):
            call()


def test_a_truncated_safetensors_file_is_named(tmp_path):
    folder = save_tiny_folder(tmp_path / "m")
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    for call in (lambda: load_model(str(folder), device="cpu"), lambda: prepare(str(folder), device="cpu")):
        with pytest.raises(ValueError, match=f"Weights file '{weights}' is truncated"):
            call()
    weights.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(ValueError, match="truncated or corrupt"):
        check_folder(str(folder))


def test_a_mistyped_folder_is_said_to_be_missing(tmp_path):
    folder = save_tiny_folder(tmp_path / "my-model")
    typo = str(folder) + "l"
    for call in (lambda: load_model(typo, device="cpu"), lambda: prepare(typo, device="cpu")):
        with pytest.raises(FileNotFoundError, match=f"Model folder '{typo}' does not exist .* is '{tmp_path}'"):
            call()
    assert check_folder("EleutherAI/pythia-70m") is None  # a hub id is left to the hub


def test_a_model_path_with_a_space_reaches_every_command_whole():
    out = subprocess.run(["make", "-n", "reproduce", "MODEL=/tmp/my model", "N_FACTS=5"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    prepare_line = next(line for line in out.splitlines() if "utils.core.sources prepare" in line)
    assert shlex.split(prepare_line)[4] == "/tmp/my model"
    notebook_line = next(line for line in out.splitlines() if "-p model" in line)
    words = shlex.split(notebook_line.strip().rstrip("\\ ;"))
    assert words[words.index("model") + 1] == "/tmp/my model"
    assert 'mkdir -p "executed/my model"' in out or '/executed/my model"' in out


def _read_only(monkeypatch):
    """What a read-only results folder does to every write (root, running these tests, could still
    write through chmod, so the refusal is made where the files are written)."""
    import errno

    from utils.runs import results

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(results, "write_atomically", refuse)
    monkeypatch.setattr(results, "open_journal", refuse)


def test_a_read_only_results_folder_whose_facts_are_all_journaled(monkeypatch):
    from test_runs import Described

    from utils.runs import results

    lm = Described("ro-model")
    rows = lambda it: [{"known_id": it["known_id"], "v": it["known_id"] * 2}]  # noqa: E731
    items = [{"known_id": i} for i in range(3)]
    first = results.sweep("demo", lm, {}, items, rows, progress=False)
    _read_only(monkeypatch)
    again = results.sweep("demo", lm, {}, items, lambda it: pytest.fail("computed again"), progress=False)
    assert again.equals(first)
    # a table that is not the one on disk cannot be written there: said, naming the folder
    with pytest.raises(PermissionError, match=r"results folder \S*ro-model cannot be written \(Permission denied\), and its demo.csv is not this sweep.s table.*DISSECT_OUTPUT_ROOT"):
        results.sweep("demo", lm, {}, items[:2], lambda it: pytest.fail("computed again"), progress=False)
