"""Where each architecture keeps the parts the paper's analyses touch.

The registry is data only, keyed by ``config.model_type``: module paths are dotted and
relative to the model (``layers``, ``final_norm``) or to one decoder layer (everything
else). Adding a family means adding one entry here; nothing else in ``utils`` names a
module of a specific architecture. Every load checks the entry against the model's own
computation (:mod:`utils.core.checks`), so a wrong entry fails loudly, naming the field to fix.

How attention is reached (through transformers' attention interface, or by hooks around
attention classes that compute it themselves) is not stored here: it is read off the
loaded model (:func:`utils.core.attention.probe_access`). The fields ``query``, ``value`` and
``qkv_layout`` are only used for families outside the interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace


def _field(help: str, **default):
    """A registry field with its meaning, which error messages quote (:func:`field_help`)."""
    return field(metadata={"help": help}, **default)


@dataclass(frozen=True)
class ArchSpec:
    """Where one family keeps the parts the analyses touch (dotted module paths)."""

    layers: str = _field("the ModuleList of decoder layers, relative to the model (e.g. 'model.layers')")
    attention: str = _field("the attention module inside a layer (e.g. 'self_attn'), called with attention_mask= as "
                            "a keyword; for families outside the attention interface its output is (update, "
                            "probabilities)")
    attn_out: str = _field("the attention output projection; its input holds the per-head outputs "
                           "(e.g. 'self_attn.o_proj')")
    attn_update: str = _field("the module whose output is exactly what attention adds to the residual stream: the "
                              "output projection, or a norm after it (Gemma 2/3, OLMo 2); not a module that adds the "
                              "residual itself (Bloom)")
    mlp_update: str = _field("the module whose output is exactly what the MLP adds to the residual stream")
    mlp_out: str | None = _field("the MLP output projection, whose input is the MLP's hidden units; None where there "
                                 "is no single one (a mixture of experts): the official MLP knockout, which zeroes "
                                 "the hidden units, is then refused")
    final_norm: str = _field("the norm before the output head, relative to the model (e.g. 'model.norm')")
    attn_post_norm: str | None = _field("a norm between the attention output projection and the residual stream, "
                                        "if any (Gemma 2/3, OLMo 2): a head's share of the update passes through it",
                                        default=None)
    parallel_block: bool = _field("attention and MLP both read the layer's input (GPT-J, GPT-NeoX, Phi, Falcon, "
                                  "Cohere): informational; the analyses read both updates the same way either way",
                                  default=False)
    query: str | None = _field("outside the attention interface only: the module whose output holds the queries "
                               "(for the official uniform-attention knockout)", default=None)
    value: str | None = _field("outside the attention interface only: the module whose output holds the values",
                               default=None)
    qkv_layout: str = _field("outside the attention interface only: how the query/value outputs are laid out: "
                             "separate, concat ([q|k|v]), per_head (per head [q|k|v]) or grouped (per key-value "
                             "group)", default="separate")
    notes: str = _field("what does not carry over to this family, said where a user looks", default="")


def field_help(name: str) -> str:
    """What a registry field means, for error messages."""
    return next(f.metadata["help"] for f in fields(ArchSpec) if f.name == name)


_LLAMA_LIKE = dict(
    layers="model.layers",
    attention="self_attn",
    attn_out="self_attn.o_proj",
    attn_update="self_attn.o_proj",
    mlp_update="mlp",
    mlp_out="mlp.down_proj",
    final_norm="model.norm",
)
_POST_NORMS = dict(attn_update="post_attention_layernorm", attn_post_norm="post_attention_layernorm",
                   mlp_update="post_feedforward_layernorm")

REGISTRY: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(layers="transformer.h", attention="attn", attn_out="attn.c_proj", attn_update="attn.c_proj",
                     mlp_update="mlp", mlp_out="mlp.c_proj", final_norm="transformer.ln_f",
                     query="attn.c_attn", value="attn.c_attn", qkv_layout="concat"),
    "gptj": ArchSpec(layers="transformer.h", attention="attn", attn_out="attn.out_proj", attn_update="attn.out_proj",
                     mlp_update="mlp", mlp_out="mlp.fc_out", final_norm="transformer.ln_f", parallel_block=True,
                     query="attn.q_proj", value="attn.v_proj"),
    "gpt_neox": ArchSpec(layers="gpt_neox.layers", attention="attention", attn_out="attention.dense",
                         attn_update="attention.dense", mlp_update="mlp", mlp_out="mlp.dense_4h_to_h",
                         final_norm="gpt_neox.final_layer_norm", parallel_block=True,
                         query="attention.query_key_value", value="attention.query_key_value", qkv_layout="per_head"),
    "gpt_neo": ArchSpec(layers="transformer.h", attention="attn.attention", attn_out="attn.attention.out_proj",
                        attn_update="attn.attention.out_proj", mlp_update="mlp", mlp_out="mlp.c_proj",
                        final_norm="transformer.ln_f", query="attn.attention.q_proj", value="attn.attention.v_proj",
                        notes="local attention layers keep their window inside the module (its causal buffer)"),
    "bloom": ArchSpec(layers="transformer.h", attention="self_attention", attn_out="self_attention.dense",
                      attn_update="self_attention.dense", mlp_update="mlp.dense_4h_to_h", mlp_out="mlp.dense_4h_to_h",
                      final_norm="transformer.ln_f", value="self_attention.query_key_value", qkv_layout="per_head",
                      notes="attention and MLP add the residual inside their modules: updates are read at their "
                            "output projections. ALiBi adds position biases to the scores, so zeroed queries do not "
                            "give uniform attention: the official attention knockout is refused"),
    "falcon": ArchSpec(layers="transformer.h", attention="self_attention", attn_out="self_attention.dense",
                       attn_update="self_attention.dense", mlp_update="mlp", mlp_out="mlp.dense_4h_to_h",
                       final_norm="transformer.ln_f", parallel_block=True, query="self_attention.query_key_value",
                       value="self_attention.query_key_value", qkv_layout="concat",
                       notes="adds the attention output into the MLP output in place (captures are clones)"),
    "opt": ArchSpec(layers="model.decoder.layers", attention="self_attn", attn_out="self_attn.out_proj",
                    attn_update="self_attn.out_proj", mlp_update="fc2", mlp_out="fc2",
                    final_norm="model.decoder.final_layer_norm",
                    notes="the MLP runs on flattened (B * n, d) tensors inside the decoder layer"),
    "llama": ArchSpec(**_LLAMA_LIKE),
    "mistral": ArchSpec(**_LLAMA_LIKE),
    "qwen2": ArchSpec(**_LLAMA_LIKE),
    "qwen3": ArchSpec(**_LLAMA_LIKE, notes="queries and keys are RMS-normed per head"),
    "mixtral": ArchSpec(**{**_LLAMA_LIKE, "mlp_out": None},
                        notes="the MLP update is the mixture-of-experts block's output"),
    "cohere": ArchSpec(**_LLAMA_LIKE, parallel_block=True, notes="logits are scaled by config.logit_scale"),
    "starcoder2": ArchSpec(**{**_LLAMA_LIKE, "mlp_out": "mlp.c_proj"}),
    "phi": ArchSpec(**{**_LLAMA_LIKE, "attn_out": "self_attn.dense", "attn_update": "self_attn.dense",
                       "mlp_out": "mlp.fc2", "final_norm": "model.final_layernorm"}, parallel_block=True,
                    notes="partial rotary embeddings"),
    "phi3": ArchSpec(**_LLAMA_LIKE, notes="fused qkv and gate_up projections"),
    "olmo2": ArchSpec(**{**_LLAMA_LIKE, **_POST_NORMS}),
    "gemma2": ArchSpec(**{**_LLAMA_LIKE, **_POST_NORMS},
                       notes="attention logits soft-capped; transformers runs it with eager attention only"),
    "gemma3_text": ArchSpec(**{**_LLAMA_LIKE, **_POST_NORMS}),
    "olmo": ArchSpec(**_LLAMA_LIKE, notes="layer norms without learnable parameters"),
    "smollm3": ArchSpec(**_LLAMA_LIKE, notes="some layers use no rotary position embedding (NoPE)"),
    "cohere2": ArchSpec(**_LLAMA_LIKE, parallel_block=True,
                        notes="sliding-window and global layers; logits are scaled by config.logit_scale"),
    "glm4": ArchSpec(**{**_LLAMA_LIKE, "attn_update": "post_self_attn_layernorm",
                        "attn_post_norm": "post_self_attn_layernorm", "mlp_update": "post_mlp_layernorm"},
                     notes="norms after both sublayers; fused gate_up projection"),
    "stablelm": ArchSpec(**_LLAMA_LIKE, query="self_attn.q_proj", value="self_attn.v_proj",
                         notes="computes attention in its own classes (reached by hooks); partial rotary"),
    # mixtures of experts: the MLP update is the block's output; no single output projection
    "qwen2_moe": ArchSpec(**{**_LLAMA_LIKE, "mlp_out": None},
                          notes="routed experts plus a gated shared expert: the official MLP knockout is refused"),
    "qwen3_moe": ArchSpec(**{**_LLAMA_LIKE, "mlp_out": None}, notes="routed experts: the official MLP knockout is "
                                                                      "refused; queries and keys RMS-normed per head"),
    "olmoe": ArchSpec(**{**_LLAMA_LIKE, "mlp_out": None}, notes="routed experts: the official MLP knockout is refused"),
    "llama4_text": ArchSpec(**{**_LLAMA_LIKE, "mlp_update": "feed_forward", "mlp_out": None},
                            notes="mixture-of-experts feed-forward blocks (a shared expert plus routed ones): the "
                                  "official MLP knockout is refused; chunked attention and layers without rotary"),
}
REGISTRY["gemma3"] = REGISTRY["gemma3_text"]  # the multimodal wrapper's text config

TEXT_TOWERS = {"gemma3": "model.language_model"}
"""Multimodal wrappers (``Gemma3ForConditionalGeneration`` for Gemma 3 4B/12B/27B) keyed by their
top-level model_type: where their language model sits. The text tower's entry is used with its
model-relative paths (``layers``, ``final_norm``) moved under it."""

UNSUPPORTED = {
    "granite": "Granite adds each sublayer's output to the residual stream scaled by config.residual_multiplier "
               "(and scales embeddings and logits too): no module outputs exactly what a sublayer adds, so the "
               "updates the analyses read (attn_update, mlp_update) cannot be pointed at one",
    "granitemoe": "Granite MoE scales each sublayer's output by config.residual_multiplier before adding it: no "
                  "module outputs exactly what a sublayer adds",
    "gpt_bigcode": "GPTBigCodeModel reshapes its last hidden states to the shape of its input ids, so this project's "
                   "batched passes (one input row, repeated inside the model for each row of interventions) fail "
                   "in it",
}
"""Families looked at and refused, each with the reason (said instead of the generic message)."""

_FILL = ("layers", "attention", "attn_out", "attn_update", "mlp_update", "mlp_out", "final_norm", "attn_post_norm")


def arch_spec(config) -> ArchSpec:
    """The registry entry for a model config, or an error that says what to add."""
    model_type = getattr(config, "model_type", None)
    if model_type in TEXT_TOWERS and hasattr(config, "get_text_config"):
        tower = TEXT_TOWERS[model_type]
        spec = arch_spec(config.get_text_config())
        return replace(spec, layers=f"{tower}.{spec.layers.split('.', 1)[1]}",
                       final_norm=f"{tower}.{spec.final_norm.split('.', 1)[1]}",
                       notes=(spec.notes + "; " if spec.notes else "") + f"text tower of a multimodal model ({tower})")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config and model_type not in REGISTRY:
        return arch_spec(text)
    if model_type in UNSUPPORTED:
        raise NotImplementedError(f"Architecture {model_type!r} is not supported: {UNSUPPORTED[model_type]}.")
    if model_type in REGISTRY:
        spec = REGISTRY[model_type]
        if model_type == "gpt_neox" and not getattr(config, "use_parallel_residual", True):
            spec = replace(spec, parallel_block=False)
        if model_type == "falcon":
            spec = _falcon(spec, config)
        return spec
    raise NotImplementedError(
        f"Architecture {model_type!r} is not in utils.core.registry.REGISTRY (supported: {', '.join(sorted(REGISTRY))}). "
        f"Add an ArchSpec entry keyed {model_type!r} (print the model to see its module names). The fields that "
        "decide whether the numbers are right:\n"
        + "\n".join(f"  {name}: {field_help(name)}" for name in _FILL)
        + "\nThen load the model: its check (utils.core.checks) verifies the entry against the model's own computation "
        "and names the field behind any failure."
    )


def _falcon(spec: ArchSpec, config) -> ArchSpec:
    """Falcon has three attention layouts and two block shapes, chosen by its config."""
    if getattr(config, "new_decoder_architecture", False):
        layout = "grouped"
    else:
        layout = "concat" if getattr(config, "multi_query", True) else "per_head"
    parallel = getattr(config, "parallel_attn", True) or getattr(config, "new_decoder_architecture", False)
    spec = replace(spec, qkv_layout=layout, parallel_block=parallel)
    if getattr(config, "alibi", False):  # zeroed queries are not uniform attention under ALiBi
        spec = replace(spec, query=None, notes=spec.notes + "; ALiBi: the official attention knockout is refused")
    return spec
