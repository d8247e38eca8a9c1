"""Reference solutions for exercises/03_attribute_extraction_exercises.ipynb (never imported by it)."""

import torch

from utils.core.projection import project


@torch.no_grad()
def sublayer_updates(lm, input_ids):
    """03.1 The attention and MLP updates (n_layers, d) at the last position, read with forward hooks."""
    attn, mlp, handles = {}, {}, []

    def keep(store, layer):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            store[layer] = out[0, -1].detach().float()
        return hook

    for layer in range(lm.n_layers):
        handles.append(lm.sub(layer, lm.arch.attn_update).register_forward_hook(keep(attn, layer)))
        handles.append(lm.sub(layer, lm.arch.mlp_update).register_forward_hook(keep(mlp, layer)))
    try:
        lm.model(torch.tensor([input_ids]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([attn[i] for i in range(lm.n_layers)]), torch.stack([mlp[i] for i in range(lm.n_layers)])


@torch.no_grad()
def extraction_event(lm, update, target):
    """03.2 Whether the update's logit-lens projection ranks ``target`` strictly first."""
    scores = project(lm, update, "logit_lens")
    return bool((scores > scores[target]).sum() == 0 and (scores == scores[target]).sum() == 1)


@torch.no_grad()
def head_shares(lm, layer, z):
    """03.3 Each head's share W_O^h z_h (n_heads, d) of the attention update (no bias in smollm2)."""
    weight = lm.sub(layer, lm.arch.attn_out).weight.float()  # (d, H * head_dim): input columns grouped by head
    heads = z.float().view(lm.n_heads, lm.head_dim)
    return torch.stack([heads[h] @ weight[:, h * lm.head_dim:(h + 1) * lm.head_dim].T for h in range(lm.n_heads)])


@torch.no_grad()
def head_mapping(lm, layer, head, token_id):
    """03.4 The vocabulary scores of W_O^h W_V^h applied to a token's (input-normed) embedding."""
    block = lm.layers[layer]
    x = block.input_layernorm(lm.model.get_input_embeddings().weight[token_id])
    group = lm.n_heads // lm.config.num_key_value_heads  # query heads per key-value head
    kv = head // group
    v = block.self_attn.v_proj(x).view(-1, lm.head_dim)[kv]  # the head's value vector
    w_o = block.self_attn.o_proj.weight[:, head * lm.head_dim:(head + 1) * lm.head_dim]
    return project(lm, w_o @ v, "logit_lens")
