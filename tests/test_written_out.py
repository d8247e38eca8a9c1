"""The notebooks' written-out measures equal the library's on every architecture they claim.

Notebook 01 writes one attention knockout out (scores recomputed for the last query, masked
before the softmax) and notebook 03 one extraction test with the update split into heads. Their
cells are executed here, as they stand in the notebooks, on tiny random models: sliding windows
shorter than the prompt (Mistral, Qwen2, Gemma 3), grouped-query attention, Gemma's q/k norms
and post-attention norm, GPT-2's Conv1D projections.
"""

import json
import sys

import pytest
import torch
from test_notebooks import ROOT
from tiny_models import prompt, tiny_model

from utils import BlockAttention, run
from utils.core.heads import head_contributions

LLAMA_FAMILY = ["llama", "mistral", "qwen2", "gemma3_text"]
ALL = LLAMA_FAMILY + ["gpt2", "gptj", "gpt_neox"]


def cells(notebook: str, first: str, last: str) -> str:
    """The source of the code cells from the one containing ``first`` to the one containing ``last``."""
    sources = ["".join(c["source"]) for c in json.loads((ROOT / "notebooks" / notebook).read_text())["cells"]
               if c["cell_type"] == "code"]
    start = next(i for i, s in enumerate(sources) if first in s)
    end = next(i for i, s in enumerate(sources) if last in s)
    return "\n\n".join(sources[start:end + 1])


@pytest.mark.parametrize("arch", LLAMA_FAMILY)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_notebook_01s_knockout_equals_block_attention(arch, backend):
    lm = tiny_model(arch, backend)
    namespace = {"lm": lm, "torch": torch, "sys": sys}
    exec(cells("01_information_flow.ipynb", "def knockout_hook", "def probabilities"), namespace)
    ids = prompt(12)[0].tolist()  # longer than the tiny models' sliding window of 4
    last = len(ids) - 1
    for keys, layers in (([2, 3], [0, 1]), ([8, 9, 10], [1, 2, 3]), ([0], [lm.n_layers - 1])):
        ours = namespace["probabilities"](ids, keys, layers)
        theirs = run(lm, ids, [[BlockAttention(layers, [last], keys)]]).probs()[0]
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(namespace["probabilities"](ids), run(lm, ids).probs()[0], rtol=1e-5, atol=1e-7)


def test_notebook_01s_knockout_fails_without_the_mask():
    """The check can fail: the same hook with the masking line removed no longer agrees."""
    lm = tiny_model("llama")
    source = cells("01_information_flow.ipynb", "def knockout_hook", "def probabilities")
    broken = source.replace('scores[..., blocked_keys] = float("-inf")', "pass")
    assert broken != source
    namespace = {"lm": lm, "torch": torch, "sys": sys}
    exec(broken, namespace)
    ids = prompt(12)[0].tolist()
    ours = namespace["probabilities"](ids, [2, 3, 4], [0, 1])
    theirs = run(lm, ids, [[BlockAttention([0, 1], [len(ids) - 1], [2, 3, 4])]]).probs()[0]
    assert not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ALL)
def test_notebook_03s_head_split_equals_head_contributions(arch):
    lm = tiny_model(arch)
    ids = prompt(10)[0].tolist()
    example = {"input_ids": ids, "pred_token_id": int(run(lm, ids).logits[0, -1].argmax()), "prompt": "p",
               "pred_token": "t"}
    namespace = {"lm": lm, "torch": torch, "example": example, "projection": "logit_lens", "print": lambda *a: None}
    import pandas as pd

    namespace["pd"] = pd
    exec(cells("03_attribute_extraction.ipynb", "captured = {}", "written = pd.DataFrame(written)"), namespace)
    written = namespace["written"]
    heads = run(lm, ids, capture=__import__("utils").Capture(positions=[len(ids) - 1], heads=True)).acts["heads"]
    for layer in range(lm.n_layers):
        theirs = head_contributions(lm, layer, heads[0, layer, 0].flatten())[0]
        torch.testing.assert_close(written.shares[layer], theirs, rtol=1e-4, atol=1e-5)
