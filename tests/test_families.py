"""Families users will try (issue 21): each tiny random model passes the model check or stops
with the registry's own message; every intervention on every family gives a result or the
project's own refusal, never a raw error from inside a model."""

import math

import pytest
import torch
import transformers
from tiny_models import ARCHITECTURES, _more_configs, tiny_hf_model, tiny_more_hf_model, tiny_tokenizer

from utils.core.checks import capabilities
from utils.core.forward import Capture, run
from utils.core.interventions import BlockAttention, PatchHidden, ZeroSublayer
from utils.core.models import wrap_model
from utils.core.registry import UNSUPPORTED

MORE, MISSING = _more_configs()
SUPPORTED_MORE = [a for a in MORE if a not in UNSUPPORTED]
REFUSED_MORE = [a for a in MORE if a in UNSUPPORTED]


def _hf(arch):
    return tiny_more_hf_model(arch) if arch in MORE else tiny_hf_model(arch)


@pytest.mark.parametrize("arch", SUPPORTED_MORE)
def test_new_family_passes_the_check(arch):
    lm = wrap_model(_hf(arch), tokenizer=None, name=f"tiny-{arch}")
    assert lm.check["status"] == "passed", lm.check
    assert "final_norm" in lm.check["errors"]


@pytest.mark.parametrize("arch", REFUSED_MORE)
def test_refused_family_stops_with_the_registrys_reason(arch):
    with pytest.raises(NotImplementedError, match=f"'{arch}' is not supported: "):
        wrap_model(_hf(arch), tokenizer=None, name=f"tiny-{arch}")


def test_every_family_users_will_try_is_built():
    """A family whose class this transformers lacks is skipped, with the reason."""
    if MISSING:
        pytest.skip(f"transformers {transformers.__version__} lacks: {MISSING}")


def _interventions(lm):
    n, mid, last = 8, lm.n_layers // 2, 7
    return {
        "block": [BlockAttention([mid], [last], [3])],
        "zero attn": [ZeroSublayer("attn", [mid])],
        "official attn": [ZeroSublayer("attn", [mid], variant="official")],
        "zero mlp": [ZeroSublayer("mlp", [mid])],
        "official mlp": [ZeroSublayer("mlp", [mid], variant="official")],
        "patch": [PatchHidden(mid, [2], torch.zeros(1, lm.text_config.hidden_size))],
    } | {"_n": n}


OWN_REFUSALS = ("registry field", "variant='zero'", "is not supported")
"""Words every refusal of this project carries (the registry field, or the way forward)."""


@pytest.mark.parametrize("arch", ARCHITECTURES + SUPPORTED_MORE)
def test_every_intervention_on_every_family_runs_or_is_refused_by_the_project(arch):
    lm = wrap_model(_hf(arch), tokenizer=None, name=f"tiny-{arch}", check=False)
    rows = _interventions(lm)
    ids = torch.arange(3, 3 + rows.pop("_n"))[None]
    can = capabilities(lm)
    for name, row in rows.items():
        try:
            out = run(lm, ids, [row], capture=Capture(mlp=True))
        except NotImplementedError as err:
            assert any(w in str(err) for w in OWN_REFUSALS), (arch, name, err)
            declared = {"official attn": can["uniform attention knockout"], "official mlp": can["official MLP knockout"]}
            assert declared.get(name) == "refused", (arch, name, "refused although declared supported", err)
            continue
        assert torch.isfinite(out.logits).all(), (arch, name)
        if name in ("official attn", "official mlp"):
            assert (name == "official attn" and can["uniform attention knockout"] == "yes") or \
                   (name == "official mlp" and can["official MLP knockout"] == "yes"), (arch, name, "ran but refused")


def test_mixtral_official_mlp_knockout_is_refused_with_the_registrys_message():
    lm = wrap_model(tiny_hf_model("mixtral"), tokenizer=None, name="tiny-mixtral", check=False)
    with pytest.raises(NotImplementedError, match="registry field `mlp_out`.*variant='zero'"):
        run(lm, torch.arange(3, 11)[None], [[ZeroSublayer("mlp", [1], variant="official")]])


def test_a_tokenizer_without_bos_says_sink_official_is_the_way_forward():
    from transformers import PreTrainedTokenizerFast

    with_bos = tiny_tokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=with_bos.backend_tokenizer, unk_token="<unk>")
    assert tokenizer.bos_token is None
    lm = wrap_model(tiny_hf_model("llama"), tokenizer=tokenizer, name="no-bos", check=False)
    with pytest.raises(ValueError, match="sink='official'"):
        lm.encode("The Eiffel Tower is in", prepend_sink=True)


def test_gemma3_multimodal_checkpoint_loads_through_its_text_tower(tmp_path):
    """Gemma 3 4B/12B/27B are Gemma3ForConditionalGeneration: layers at model.language_model.layers."""
    if not hasattr(transformers, "Gemma3ForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma3ForConditionalGeneration")
    from utils import load_model

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer) + 4
    text = transformers.Gemma3TextConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        intermediate_size=64, max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=16,
        vocab_size=vocab, initializer_range=0.1, bos_token_id=1, eos_token_id=0, pad_token_id=0)
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=vocab - 1, boi_token_index=vocab - 2,
                                       eoi_token_index=vocab - 3)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config)
    assert not hasattr(model.model, "layers")  # what raised AttributeError before
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu")
    assert type(lm.model).__name__ == "Gemma3ForConditionalGeneration"
    assert lm.arch.layers == "model.language_model.layers" and lm.n_layers == 2
    assert lm.check["status"] == "passed", lm.check
    assert math.isfinite(lm.check["errors"]["final_norm"])
