"""The uniform-attention knockout zeroes the queries in every fused qkv layout.

Falcon's new decoder architecture with more than one key-value head stores the queries of a group
together ("grouped"); there ``split_qkv`` has to copy, and an in-place edit of its result once left
the projection untouched: the official attention knockout returned the clean logits, silently.
"""

import pytest
import torch
import transformers

from tests.tiny_models import COMMON, prompt
from utils.core.attention import _zero_queries, query_columns, split_qkv
from utils.core.forward import run
from utils.core.interventions import ZeroSublayer
from utils.core.models import wrap_model

N_HEADS, HEAD_DIM = 4, 3
LAYOUTS = [  # (layout, key-value heads, projection width)
    ("separate", 2, N_HEADS * HEAD_DIM),
    ("concat", 1, (N_HEADS + 2) * HEAD_DIM),
    ("concat", 2, (N_HEADS + 4) * HEAD_DIM),
    ("per_head", N_HEADS, 3 * N_HEADS * HEAD_DIM),
    ("grouped", 1, (N_HEADS + 2) * HEAD_DIM),
    ("grouped", 2, 2 * (N_HEADS // 2 + 2) * HEAD_DIM),
]


@pytest.mark.parametrize("layout,n_kv,width", LAYOUTS, ids=lambda v: str(v))
def test_the_last_querys_projection_is_zeroed_and_nothing_else(layout, n_kv, width):
    x = torch.randn(2, 5, width) + 3.0  # no zero to begin with
    uniform = torch.zeros(2, 5, dtype=torch.bool)
    uniform[:, -1] = True
    out = _zero_queries(x, layout, uniform, N_HEADS, n_kv, HEAD_DIM)
    q_new, q_old = (split_qkv(t, layout, "q", N_HEADS, n_kv, HEAD_DIM) for t in (out, x))
    assert q_new.shape[-2:] == (N_HEADS, HEAD_DIM)
    assert torch.all(q_new[:, -1] == 0), "the marked position's queries must be zero"
    assert torch.equal(q_new[:, :-1], q_old[:, :-1])
    if layout != "separate":  # keys and values untouched everywhere
        keep = ~query_columns(layout, width, N_HEADS, n_kv, HEAD_DIM)
        assert keep.sum() == width - N_HEADS * HEAD_DIM
        assert torch.equal(out[..., keep], x[..., keep])


def _falcon(new_decoder: bool, n_kv: int):
    config = transformers.FalconConfig(
        num_hidden_layers=3, hidden_size=48, num_attention_heads=4, max_position_embeddings=64,
        new_decoder_architecture=new_decoder, num_kv_heads=n_kv, multi_query=not new_decoder, **COMMON)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return wrap_model(model.eval().requires_grad_(False), tokenizer=None, name=f"tiny-falcon-{n_kv}")


@pytest.mark.parametrize("new_decoder,n_kv", [(False, 1), (True, 1), (True, 2)])
def test_falcons_official_attention_knockout_changes_the_prediction(new_decoder, n_kv):
    lm = _falcon(new_decoder, n_kv)
    assert lm.arch.qkv_layout == ("grouped" if new_decoder else "concat")
    ids = prompt(8)
    clean, knocked = run(lm, ids, [[], [ZeroSublayer("attn", [1], variant="official")]]).logits[:, -1]
    assert not torch.equal(clean, knocked), "the official attention knockout left the logits unchanged"
    assert (clean - knocked).abs().max() > 1e-4
