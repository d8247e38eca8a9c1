"""Mechanics of the interventions on tiny random models of every supported architecture."""

import pytest
import torch
from tiny_models import ARCHITECTURES, prompt, tiny_hf_model, tiny_model

from utils.core.attention import merge_block_into_mask
from utils.core.forward import Capture, run
from utils.core.interventions import BlockAttention, PatchHidden, ZeroSublayer, window

N = 10
BACKENDS = ["sdpa", "eager"]


def _window(config, layer: int) -> int | None:
    """The sliding window of a layer (None for global attention)."""
    types = getattr(config, "layer_types", None)
    if types is not None:
        return config.sliding_window if types[layer] == "sliding_attention" else None
    if getattr(config, "attention_layers", None):  # GPT-Neo's local layers
        return config.window_size if config.attention_layers[layer] == "local" else None
    return getattr(config, "sliding_window", None)


def _sliding_layers(config) -> set[int]:
    return {i for i in range(config.num_hidden_layers) if _window(config, i)}


def reference_knockout_logits(arch, ids, layers, queries, keys, dtype=torch.float32):
    """The straightforward reference: eager attention with a hand-built additive mask
    (causal, sliding window where the layer has one, blocked edges at -inf) injected into
    the chosen layers' attention modules, as the official code does for GPT-2."""
    from utils.core.registry import arch_spec

    model = tiny_hf_model(arch, "eager", dtype)
    n = ids.shape[1]
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    config = model.config
    sliding = _sliding_layers(config)
    handles = []
    spec = arch_spec(config)
    attn_path, layer_list = spec.attention, model.get_submodule(spec.layers)
    for layer in layers:
        allowed = j <= i
        if layer in sliding:
            allowed &= (i - j) < _window(config, layer)
        blocked = torch.zeros(n, n, dtype=torch.bool)
        blocked[torch.tensor(queries)[:, None], torch.tensor(keys)[None, :]] = True
        mask = torch.zeros(n, n, dtype=dtype).masked_fill(~(allowed & ~blocked), torch.finfo(dtype).min)

        def hook(module, args, kwargs, mask=mask):
            return args, {**kwargs, "attention_mask": mask[None, None]}

        handles.append(layer_list[layer].get_submodule(attn_path).register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[:, -1]
    for h in handles:
        h.remove()
    return logits


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_intervention_reproduces_clean_logits_exactly(arch, backend):
    lm, ids = tiny_model(arch, backend), prompt(N)
    reference = tiny_hf_model(arch, backend)  # the stock HF model, stock attention function
    with torch.no_grad():
        clean = reference(ids, use_cache=False, logits_to_keep=1).logits
    assert torch.equal(run(lm, ids).logits, clean)
    assert torch.equal(run(lm, ids, rows=[[]]).logits, clean)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_knockout_matches_eager_reference(arch, backend):
    lm, ids = tiny_model(arch, backend), prompt(N)
    layers, queries, keys = [1, 2, 3], [N - 1], [0, 2, 7, 8]
    ours = run(lm, ids, [[BlockAttention(layers, queries, keys)]]).logits[:, -1]
    ref = reference_knockout_logits(arch, ids, layers, queries, keys)
    clean = run(lm, ids).logits[:, -1]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert (ours - clean).abs().max() > 1e-3, "the knockout should change the prediction"


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_knockout_in_half_precision(arch, dtype):
    ids = prompt(N)
    layers, queries, keys = [0, 1, 2], [N - 1], [1, 2, 7, 8]
    ref = reference_knockout_logits(arch, ids, layers, queries, keys, dtype).float()
    for backend in BACKENDS:
        lm = tiny_model(arch, backend, dtype)
        ours = run(lm, ids, [[BlockAttention(layers, queries, keys)]]).logits[:, -1].float()
        clean = run(lm, ids).logits[:, -1].float()
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref, atol=0.05, rtol=0.05)
        assert (ours - clean).abs().max() > 10 * (ours - ref).abs().max()


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text", "qwen2"])
def test_knockout_respects_sliding_window(arch):
    """Keys outside a sliding window are already invisible: blocking them changes nothing
    in sliding layers, and blocking visible keys still acts."""
    lm, ids = tiny_model(arch), prompt(N)
    sliding = sorted(_sliding_layers(lm.config))
    clean = run(lm, ids).logits
    far = run(lm, ids, [[BlockAttention(sliding, [N - 1], [0, 1, 2])]]).logits
    near = run(lm, ids, [[BlockAttention(sliding, [N - 1], [N - 2])]]).logits
    torch.testing.assert_close(far, clean, atol=1e-6, rtol=0)
    assert (near - clean).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_of_interventions_equals_one_by_one(arch):
    lm, ids = tiny_model(arch), prompt(N)
    clean = run(lm, ids, capture=Capture(resid=True, positions=[3, 4]))
    rows = [
        [],
        [BlockAttention(window(1, 3, lm.n_layers), [N - 1], [3, 4])],
        [BlockAttention([2], [N - 1], [0, 5]), ZeroSublayer("mlp", [1])],
        [ZeroSublayer("attn", [0, 1], positions=[4, 9])],
        [ZeroSublayer("mlp", [2], variant="official" if lm.arch.mlp_out else "zero"),
         ZeroSublayer("attn", [3], variant="official" if "ALiBi" not in lm.arch.notes else "zero")],
        [PatchHidden(2, [3, 4], clean.acts["resid"][0, 0])],
    ]
    batched = run(lm, ids, rows).logits
    alone = torch.cat([run(lm, ids, [row]).logits for row in rows])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    # rows share the layers before their first intervention: same numbers either way
    unshared = run(lm, ids, rows, share_prefix=False).logits
    torch.testing.assert_close(batched, unshared, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_knockout_window_covering_no_layer_is_clean(arch):
    lm, ids = tiny_model(arch), prompt(N)
    assert window(lm.n_layers + 5, 3, lm.n_layers) == ()
    out = run(lm, ids, [[BlockAttention((), [N - 1], [1, 2])]]).logits
    # against a clean pass of the same shape: rows of one batch may round differently (Mixtral's experts)
    torch.testing.assert_close(out, run(lm, ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("sublayer", ["attn", "mlp"])
def test_zeroing_an_update_removes_that_contribution(arch, sublayer):
    lm, ids = tiny_model(arch), prompt(N)
    layer = 1
    cap = Capture(resid=True, attn=True, mlp=True)
    out = run(lm, ids, [[ZeroSublayer(sublayer, [layer])]], capture=cap).acts
    other = "mlp" if sublayer == "attn" else "attn"
    assert out[sublayer][:, layer].abs().max() == 0
    # the layer's output is its input plus the remaining sublayer's update only
    torch.testing.assert_close(out["resid"][:, layer + 1], out["resid"][:, layer] + out[other][:, layer],
                               atol=1e-5, rtol=1e-5)
    clean = run(lm, ids, capture=cap).acts
    torch.testing.assert_close(clean["resid"][:, layer + 1],
                               clean["resid"][:, layer] + clean["attn"][:, layer] + clean["mlp"][:, layer],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zeroing_at_chosen_positions_only(arch):
    lm, ids = tiny_model(arch), prompt(N)
    cap = Capture(attn=True, mlp=True)
    clean = run(lm, ids, capture=cap).acts
    out = run(lm, ids, [[ZeroSublayer("attn", [0], positions=[3, 5])]], capture=cap).acts
    assert out["attn"][0, 0, [3, 5]].abs().max() == 0
    torch.testing.assert_close(out["attn"][0, 0, :3], clean["attn"][0, 0, :3], atol=0, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_official_mlp_knockout_keeps_output_bias(arch):
    lm, ids = tiny_model(arch), prompt(N)
    if lm.arch.mlp_out is None:  # a mixture of experts has no single output projection: refused
        with pytest.raises(NotImplementedError, match="mlp_out"):
            run(lm, ids, [[ZeroSublayer("mlp", [2], variant="official")]])
        return
    out = run(lm, ids, [[ZeroSublayer("mlp", [2], variant="official")]], capture=Capture(mlp=True)).acts["mlp"]
    bias = lm.sub(2, lm.arch.mlp_out).bias  # no family with a norm after its MLP has an output bias
    expected = torch.zeros_like(out[0, 2]) if bias is None else bias.expand_as(out[0, 2])
    torch.testing.assert_close(out[0, 2], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_official_attention_knockout_is_uniform_attention(arch, backend):
    lm, ids = tiny_model(arch, backend), prompt(N)
    if lm.arch.query is None and lm.attention_access.name == "mask-hook":  # refused where zeroed queries are not uniform
        with pytest.raises(NotImplementedError, match="ALiBi"):
            run(lm, ids, [[ZeroSublayer("attn", [1], variant="official")]])
        return
    out = run(lm, ids, [[ZeroSublayer("attn", [1], variant="official")]], capture=Capture(attn_weights=True))
    weights = out.acts["attn_weights"][0, 1]  # (H, n_query, n_key)
    visible = torch.ones(N, N).tril()
    if 1 in _sliding_layers(lm.config):
        visible = visible.triu(-(_window(lm.config, 1) - 1))
    expected = visible / visible.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected.expand_as(weights), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patching_own_clean_state_changes_nothing(arch):
    lm, ids = tiny_model(arch), prompt(N)
    clean = run(lm, ids, capture=Capture(resid=True))
    rows = [[PatchHidden(layer, range(N), clean.acts["resid"][0, layer])] for layer in range(lm.n_layers)]
    patched = run(lm, ids, rows).logits
    torch.testing.assert_close(patched, clean.logits.expand_as(patched), atol=1e-5, rtol=1e-5)
    # and patching another state does change it
    other = run(lm, ids, [[PatchHidden(1, [N - 1], clean.acts["resid"][0, 0, [2]])]]).logits
    assert (other - clean.logits).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_capture_shapes_and_per_head_outputs(arch):
    lm, ids = tiny_model(arch), prompt(N)
    acts = run(lm, ids, capture=Capture(positions=[N - 1], resid=True, attn=True, mlp=True, heads=True,
                                        attn_weights=True)).acts
    L, H, d = lm.n_layers, lm.n_heads, lm.config.hidden_size
    assert acts["resid"].shape == (1, L + 1, 1, d)
    assert acts["attn"].shape == acts["mlp"].shape == (1, L, 1, d)
    assert acts["heads"].shape == (1, L, 1, H, lm.head_dim)
    assert acts["attn_weights"].shape == (1, L, H, 1, N)
    torch.testing.assert_close(acts["attn_weights"].sum(-1), torch.ones(1, L, H, 1), atol=1e-5, rtol=0)
    # the output projection of the concatenated heads is the attention module's output
    if lm.arch.attn_post_norm is None:
        out_proj = lm.sub(0, lm.arch.attn_out)
        torch.testing.assert_close(out_proj(acts["heads"][0, 0].flatten(-2)), acts["attn"][0, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gptj", "gemma3_text"])
def test_sdpa_and_eager_agree_under_knockout(arch):
    ids = prompt(N)
    rows = [[BlockAttention([0, 1], [N - 1], [0, 3])], [ZeroSublayer("attn", [2])]]
    sdpa = run(tiny_model(arch, "sdpa"), ids, rows).logits
    eager = run(tiny_model(arch, "eager"), ids, rows).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_blocking_every_key_of_a_query_is_refused():
    lm, ids = tiny_model("llama"), prompt(N)
    with pytest.raises(ValueError, match="every key"):
        run(lm, ids, [[BlockAttention([1], [N - 1], range(N))]])
    with pytest.raises(ValueError, match="every key"):  # position 0 sees only itself
        run(lm, ids, [[BlockAttention([1], [0], [0])]])
    lm_neo = tiny_model("gpt_neo")  # the mask-hook back-end refuses it too
    assert lm_neo.attention_access.name == "mask-hook"
    with pytest.raises(ValueError, match="every key"):
        run(lm_neo, ids, [[BlockAttention([1], [N - 1], range(N))]])


def test_merge_keeps_mask_kinds():
    blocked = torch.zeros(2, 4, 4, dtype=torch.bool)
    blocked[1, 3, 1] = True
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    merged_none, emptied = merge_block_into_mask(None, blocked, 4, 4)
    merged_bool, _ = merge_block_into_mask(causal, blocked, 4, 4)
    assert not emptied.any()
    assert merged_none.dtype == torch.bool and torch.equal(merged_none, merged_bool)
    assert merged_bool.shape == (2, 1, 4, 4) and not merged_bool[1, 0, 3, 1] and merged_bool[0, 0, 3, 1]
    additive = torch.zeros(1, 1, 4, 4).masked_fill(~causal, torch.finfo(torch.float32).min)
    merged_add, _ = merge_block_into_mask(additive, blocked, 4, 4)
    assert merged_add.dtype == torch.float32
    assert torch.equal(merged_add > -1, merged_bool)


def test_window_matches_official_code():
    # official: range(max(0, l - w // 2), min(L, l - (-w // 2)))
    assert window(0, 9, 48) == tuple(range(0, 5))
    assert window(20, 9, 48) == tuple(range(16, 25))
    assert window(20, 10, 48) == tuple(range(15, 25))
    assert window(47, 9, 48) == tuple(range(43, 48))
