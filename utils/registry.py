"""Where each architecture keeps the parts the paper's analyses touch.

The registry is data only, keyed by ``config.model_type``: module paths are dotted and
relative to the model (``layers``, ``final_norm``) or to one decoder layer (everything
else). Adding a family means adding one entry here; nothing else in ``utils`` names a
module of a specific architecture.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    layers: str
    """The ``nn.ModuleList`` of decoder layers."""
    attention: str
    """The attention module (called with ``attention_mask=`` as a keyword)."""
    attn_update: str
    """The module whose output is added to the residual stream by the attention branch
    (the attention module itself, or a norm applied after it, as in Gemma 2/3)."""
    attn_out: str
    """The attention output projection; its input holds the per-head outputs."""
    query: str
    """The module whose output holds the queries (used for uniform attention)."""
    query_layout: str
    """``"plain"`` (output is all heads' queries), ``"fused_qkv"`` (GPT-2's c_attn:
    [q | k | v]) or ``"neox_qkv"`` (GPT-NeoX: per head [q | k | v])."""
    mlp: str
    mlp_update: str
    """The module whose output is added to the residual stream by the MLP branch."""
    mlp_out: str
    """The MLP output projection; its input is the vector of MLP coefficients."""
    final_norm: str
    parallel_block: bool = False
    """Attention and MLP both read the same input (GPT-J, GPT-NeoX with parallel residual)."""
    gated_mlp: bool = False
    sliding_window: bool = False
    attention_interface: bool = True
    """The attention module dispatches through transformers' ``AttentionInterface``.
    When False, attention knockout falls back to rewriting the mask with a pre-hook."""
    value: str | None = None
    """The value projection (all heads, unfused), for families without the attention
    interface: their value vectors are read from its output instead."""


_LLAMA_LIKE = dict(
    layers="model.layers",
    attention="self_attn",
    attn_update="self_attn",
    attn_out="self_attn.o_proj",
    query="self_attn.q_proj",
    query_layout="plain",
    mlp="mlp",
    mlp_update="mlp",
    mlp_out="mlp.down_proj",
    final_norm="model.norm",
    gated_mlp=True,
)

REGISTRY: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        layers="transformer.h",
        attention="attn",
        attn_update="attn",
        attn_out="attn.c_proj",
        query="attn.c_attn",
        query_layout="fused_qkv",
        mlp="mlp",
        mlp_update="mlp",
        mlp_out="mlp.c_proj",
        final_norm="transformer.ln_f",
    ),
    "gptj": ArchSpec(
        layers="transformer.h",
        attention="attn",
        attn_update="attn",
        attn_out="attn.out_proj",
        query="attn.q_proj",
        query_layout="plain",
        mlp="mlp",
        mlp_update="mlp",
        mlp_out="mlp.fc_out",
        final_norm="transformer.ln_f",
        parallel_block=True,
        attention_interface=False,
        value="attn.v_proj",
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers",
        attention="attention",
        attn_update="attention",
        attn_out="attention.dense",
        query="attention.query_key_value",
        query_layout="neox_qkv",
        mlp="mlp",
        mlp_update="mlp",
        mlp_out="mlp.dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
        parallel_block=True,  # the Pythia default (config.use_parallel_residual)
    ),
    "llama": ArchSpec(**_LLAMA_LIKE),
    "mistral": ArchSpec(**_LLAMA_LIKE, sliding_window=True),
    "qwen2": ArchSpec(**_LLAMA_LIKE, sliding_window=True),
    "gemma3_text": ArchSpec(
        **{
            **_LLAMA_LIKE,
            "attn_update": "post_attention_layernorm",
            "mlp_update": "post_feedforward_layernorm",
        },
        sliding_window=True,
    ),
}
REGISTRY["gemma3"] = REGISTRY["gemma3_text"]  # the multimodal wrapper's text config


def arch_spec(config) -> ArchSpec:
    """The registry entry for a model config, or an error that says what to add."""
    model_type = getattr(config, "model_type", None)
    if model_type in REGISTRY:
        spec = REGISTRY[model_type]
        if model_type == "gpt_neox" and not getattr(config, "use_parallel_residual", True):
            spec = ArchSpec(**{**spec.__dict__, "parallel_block": False})
        return spec
    raise NotImplementedError(
        f"Architecture {model_type!r} is not in utils.registry.REGISTRY (supported: "
        f"{', '.join(sorted(REGISTRY))}). Add an ArchSpec entry keyed {model_type!r} giving the "
        "paths of its decoder layers, attention module, attention output projection, query "
        "projection, MLP, MLP output projection and final norm (print the model to see them), "
        "and whether its attention dispatches through transformers' AttentionInterface."
    )
