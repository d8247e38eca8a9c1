"""Tiny randomly initialised models of every supported architecture, built offline.

They exercise the mechanics (hooks, masks, batching) on each family's real HF modeling
code; the real pretrained models test behaviour.
"""

from __future__ import annotations

import torch
import transformers

from utils.core.models import wrap_model

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
        # families whose attention or blocks differ from Llama's, each with the quirk it exercises
        "gpt_neo": transformers.GPTNeoConfig(  # local attention layers, its own attention class
            num_layers=4, hidden_size=64, num_heads=4, attention_types=[[["global", "local"], 2]], window_size=4,
            max_position_embeddings=64, **COMMON),
        "phi": transformers.PhiConfig(  # parallel block, partial rotary, biased head
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=128,
            partial_rotary_factor=0.5, max_position_embeddings=64, **COMMON),
        "phi3": transformers.Phi3Config(  # fused qkv and gate_up projections
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=64, **COMMON),
        "qwen3": transformers.Qwen3Config(  # per-head q/k norms
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, max_position_embeddings=64, **COMMON),
        "olmo2": transformers.Olmo2Config(  # norms after the sublayers
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=64, **COMMON),
        "gemma2": transformers.Gemma2Config(  # attention and final logit soft-capping, sliding windows, eager only
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=16,
            **COMMON),
        "falcon": transformers.FalconConfig(  # multi-query, parallel, adds attention into the MLP output in place
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, max_position_embeddings=64, **COMMON),
        "bloom": transformers.BloomConfig(  # ALiBi; attention and MLP add the residual inside their modules
            n_layer=4, hidden_size=64, n_head=4, **COMMON),
        "opt": transformers.OPTConfig(  # the MLP runs on flattened (B * n, d) tensors in the decoder layer
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64,
            max_position_embeddings=64, **COMMON),
        "starcoder2": transformers.Starcoder2Config(  # sliding window, plain (ungated) MLP with biases
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=64, sliding_window=4, **COMMON),
        "mixtral": transformers.MixtralConfig(  # a mixture-of-experts block is the MLP update
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64, **COMMON),
        "cohere": transformers.CohereConfig(  # parallel block with one norm, scaled logits
            num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=64, logit_scale=0.5, **COMMON),
    }


ARCHITECTURES = list(_configs())


def tiny_hf_model(arch: str, attn_implementation: str = "sdpa", dtype=torch.float32, seed: int = 0):
    config = _configs()[arch]
    if arch == "gptj":  # GPT-J has only its own eager attention (no AttentionInterface)
        attn_implementation = "eager"
    torch.manual_seed(seed)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    except ValueError:  # families transformers runs with eager attention only (Bloom, GPT-Neo, Gemma 2)
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.to(dtype).eval().requires_grad_(False)


def tiny_model(arch: str, backend: str = "sdpa", dtype=torch.float32, seed: int = 0):
    """A LoadedModel (no tokenizer) of a tiny random ``arch`` model."""
    return wrap_model(tiny_hf_model(arch, backend, dtype, seed), tokenizer=None, name=f"tiny-{arch}")


def prompt(n: int = 10, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, COMMON["vocab_size"], (1, n), generator=g)


def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained offline on a few sentences (any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["The Eiffel Tower is located in the city of Paris.", "Beats Music is owned by Apple.",
              "Marshall Islands speak Marshallese and English."] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


def save_tiny_folder(folder, seed: int = 0, tokenizer=None):
    """A tiny random Llama and its tokenizer saved in Hugging Face format (as a hub download
    or a fine-tuned checkpoint would be), to load by path with ``load_model``. Saving again
    with another seed swaps the weights and keeps everything else."""
    tokenizer = tokenizer or tiny_tokenizer()
    config = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=64, vocab_size=len(tokenizer), initializer_range=0.5, bos_token_id=1,
        eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def saved_random_model(folder, config):
    """A random model of ``config`` saved in Hugging Face format with SmolLM2's tokenizer (the
    vocabulary sized to it), loaded back by path as a hub model would be."""
    import transformers

    from utils import load_model
    from utils.core.sources import convert_embedded

    tokenizer = transformers.AutoTokenizer.from_pretrained(convert_embedded("smollm2-135m"))
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder), device="cpu")


def facts_it_knows(lm, folder, minimum: int):
    """The small facts with each attribute set to the model's own prediction (kept where that is
    a word an attribute's first token can be), written to ``folder``; (path, count)."""
    import json
    from pathlib import Path

    facts = []
    small = Path(__file__).resolve().parent.parent / "data" / "facts_small.json"
    for fact in json.loads(small.read_text()):
        top = int(lm.model(input_ids=torch.tensor([lm.encode(fact["prompt"])])).logits[0, -1].argmax())
        word = lm.tokenizer.decode([top])
        if word.startswith(" ") and word.strip().isalpha():
            facts.append({**fact, "attribute": word.strip()})
    assert len(facts) >= minimum
    path = Path(folder) / "facts_it_knows.json"
    path.write_text(json.dumps(facts))
    return path, len(facts)


SMALL = dict(vocab_size=96, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
             num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             max_position_embeddings=64)


def _more_configs() -> dict:
    """Families users will try (issue 21), each as tiny as it builds: 2 layers, width 64. A
    family whose config class this transformers lacks is left out (the tests say so)."""
    t = transformers
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    made = {
        "olmo": lambda: t.OlmoConfig(**SMALL),
        "smollm3": lambda: t.SmolLM3Config(**SMALL, no_rope_layer_interval=2),
        "cohere2": lambda: t.Cohere2Config(**SMALL, sliding_window=4, logit_scale=0.5),
        "glm4": lambda: t.Glm4Config(**SMALL),
        "stablelm": lambda: t.StableLmConfig(**SMALL, partial_rotary_factor=0.5),
        "gpt_bigcode": lambda: t.GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64, multi_query=True,
                                                  **{k: v for k, v in COMMON.items()}),
        "qwen2_moe": lambda: t.Qwen2MoeConfig(**SMALL, **moe, shared_expert_intermediate_size=32),
        "qwen3_moe": lambda: t.Qwen3MoeConfig(**SMALL, **moe, head_dim=16),
        "olmoe": lambda: t.OlmoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2),
        "llama4_text": lambda: t.Llama4TextConfig(**SMALL, head_dim=16, num_local_experts=4, intermediate_size_mlp=128,
                                                  interleave_moe_layer_step=1),
        "granite": lambda: t.GraniteConfig(**SMALL, residual_multiplier=0.5),
    }
    configs, missing = {}, {}
    for name, make in made.items():
        try:
            configs[name] = make()
        except (AttributeError, TypeError) as err:
            missing[name] = f"{type(err).__name__}: {err}"
    return configs, missing


def tiny_more_hf_model(arch: str, seed: int = 0):
    config = _more_configs()[0][arch]
    torch.manual_seed(seed)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    except ValueError:
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval().requires_grad_(False)
