"""Half precision: what is computed in float32, and why."""

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tiny_models import prompt, tiny_model

from utils.core.attention import attention_probabilities
from utils.core.forward import run
from utils.core.interventions import BlockAttention
from utils.core.projection import CHUNK, fp32_scores, project


def test_probabilities_of_a_half_model_come_from_float32_logits():
    """bf16 logits keep 8 significant bits: the probabilities computed from them are off by
    several percent, which would make small relative changes rounding noise."""
    lm, ids = tiny_model("llama", "sdpa", torch.bfloat16), prompt(10)
    rows = [[], [BlockAttention([1, 2], [9], [3, 4])]]
    out = run(lm, ids, rows)
    head = lm.unembedding.weight.double()
    exact = F.linear(out.final_hidden.double(), head).softmax(-1)
    torch.testing.assert_close(out.probs().double(), exact, atol=1e-6, rtol=1e-5)
    rounded = out.logits[:, -1].float().softmax(-1).double()
    assert ((rounded - exact).abs() / exact).max() > 1e-3  # what the model's own bf16 logits would give


def test_attention_probabilities_scale_in_float32():
    """q . k of large half-precision vectors overflows fp16 before scaling; computed in fp32 it does not."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 2, 3, 16, generator=g) * 300).half()
    k = (torch.randn(1, 2, 3, 16, generator=g) * 300).half()
    module = SimpleNamespace(scaling=16 ** -0.5, config=None)
    probs = attention_probabilities(module, q, k, None, {})
    reference = ((q.float() @ k.float().transpose(-1, -2)) * 16 ** -0.5).masked_fill(
        ~torch.ones(3, 3, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    assert torch.isinf((q @ k.transpose(-1, -2))).any()  # the half-precision product overflows
    torch.testing.assert_close(probs.float(), reference, atol=1e-3, rtol=0)


def test_projection_of_a_half_model_never_copies_the_whole_unembedding():
    lm = tiny_model("llama", "sdpa", torch.float16)
    h = torch.randn(4, lm.config.hidden_size).half()
    weight = lm.unembedding.weight
    torch.testing.assert_close(project(lm, h, "paper"), h.float() @ weight.float().T, atol=1e-3, rtol=1e-3)
    big, x = torch.randn(CHUNK + 5, 8).half(), torch.randn(2, 8)  # more rows than one slice
    scores = fp32_scores(x, big, torch.ones(CHUNK + 5).half())
    assert scores.dtype == torch.float32 and scores.shape == (2, CHUNK + 5)
    torch.testing.assert_close(scores, x @ big.float().T + 1, atol=1e-4, rtol=1e-4)
