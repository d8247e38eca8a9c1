"""Tiny randomly initialised models of every supported architecture, built offline.

They exercise the mechanics (hooks, masks, batching) on each family's real HF modeling
code; the real pretrained models test behaviour.
"""

from __future__ import annotations

import torch
import transformers

from utils.models import wrap_model

COMMON = dict(vocab_size=96, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _configs() -> dict:
    return {
        "gpt2": transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=64, **COMMON),
        "gptj": transformers.GPTJConfig(n_layer=4, n_embd=64, n_head=4, rotary_dim=8, n_positions=64, **COMMON),
        "gpt_neox": transformers.GPTNeoXConfig(
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=128,
            rotary_pct=0.25, max_position_embeddings=64, **COMMON),
        "llama": transformers.LlamaConfig(
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=64, **COMMON),
        "mistral": transformers.MistralConfig(
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=64, sliding_window=4, **COMMON),
        "qwen2": transformers.Qwen2Config(
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=64, use_sliding_window=True,
            sliding_window=4, max_window_layers=2, **COMMON),
        "gemma3_text": transformers.Gemma3TextConfig(
            num_hidden_layers=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=128, max_position_embeddings=64, sliding_window=4,
            query_pre_attn_scalar=16, **COMMON),
    }


ARCHITECTURES = list(_configs())


def tiny_hf_model(arch: str, attn_implementation: str = "sdpa", dtype=torch.float32, seed: int = 0):
    config = _configs()[arch]
    if arch == "gptj":  # GPT-J has only its own eager attention (no AttentionInterface)
        attn_implementation = "eager"
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.to(dtype).eval().requires_grad_(False)


def tiny_model(arch: str, backend: str = "sdpa", dtype=torch.float32, seed: int = 0):
    """A LoadedModel (no tokenizer) of a tiny random ``arch`` model."""
    return wrap_model(tiny_hf_model(arch, backend, dtype, seed), tokenizer=None, name=f"tiny-{arch}")


def prompt(n: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, COMMON["vocab_size"], (1, n), generator=g)
