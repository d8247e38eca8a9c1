"""Every notebook, end to end, on a family that bypasses transformers' attention interface.

The nbval references cover the embedded models (Llama and Gemma 3, through the attention
interface). GPT-J, the paper's second model, takes other paths: a mask pre-hook for
knockouts, no shared-prefix cache, values read from its value projection. A randomly
initialised GPT-J saved in Hugging Face format is loaded by path, as a hub id would be,
and "knows" facts whose attribute is set to its own prediction.
"""

import json

import papermill
import pytest
import torch
import transformers

from test_notebooks import NOTEBOOKS, ROOT


@pytest.fixture(scope="module")
def random_gptj(tmp_path_factory):
    from utils import load_model
    from utils.models import convert_embedded

    folder = tmp_path_factory.mktemp("random-gptj")
    tokenizer = transformers.AutoTokenizer.from_pretrained(convert_embedded("smollm2-135m"))
    config = transformers.GPTJConfig(n_layer=6, n_embd=64, n_head=4, rotary_dim=8, n_positions=256,
                                     vocab_size=len(tokenizer), initializer_range=0.2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    lm = load_model(str(folder), device="cpu")
    facts = []
    for fact in json.loads((ROOT / "data" / "facts_small.json").read_text()):
        top = int(lm.model(input_ids=torch.tensor([lm.encode(fact["prompt"])])).logits[0, -1].argmax())
        word = lm.tokenizer.decode([top])
        if word.startswith(" ") and word.strip().isalpha():  # a word the attribute's first token can be
            facts.append({**fact, "attribute": word.strip()})
    assert len(facts) >= 10
    path = folder / "facts_it_knows.json"
    path.write_text(json.dumps(facts))
    return folder, path, len(facts)


TABLES = {  # a table each notebook writes, and what it must hold
    "00_known_facts.ipynb": ("facts_evaluated", lambda t, n: t.known.sum() == n),  # its own predictions: all known
    "01_information_flow.ipynb": ("information_flow_summary", lambda t, n: len(t) > 0 and t.facts.max() > 0),
    "02_subject_enrichment.ipynb": ("attribute_coverage", lambda t, n: len(t) == n),
    "03_attribute_extraction.ipynb": ("extraction_layers", lambda t, n: t.known_id.nunique() == n),
    # the ledger spans models (results/ledger.csv): a row for every claim, and claim 7 read from 03's table
    "04_paper_vs_models.ipynb": ("ledger", lambda t, n: t.claim.nunique() == 13 and (t[t.claim == "7"].n == n).all()),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """One output root for the whole run, as in `make reproduce`: 04 reads what 01-03 wrote."""
    return tmp_path_factory.mktemp("outputs")


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_gptj(notebook, random_gptj, outputs, tmp_path, monkeypatch):
    from utils.results import load_table

    folder, facts, n_facts = random_gptj
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(outputs))
    papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name),
                               parameters={"model": str(folder), "dataset": str(facts)},
                               cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    name, holds = TABLES[notebook.name]
    table = load_table(name, None if name == "ledger" else str(folder))
    assert table is not None and holds(table, n_facts), name
