"""The model check: it passes on every registered family, runs on every load, goes into the
metadata, and each of its invariants fails when something it guards is broken."""

import dataclasses

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_hf_model, tiny_model

from utils.core import checks
from utils.core.attention import InterfaceAccess
from utils.core.forward import Capture, run
from utils.core.interventions import PatchHidden, ZeroSublayer
from utils.core.models import wrap_model

MASK_HOOK = {"gpt_neo", "falcon", "bloom"}
"""Families whose attention classes compute attention themselves (transformers 5.24)."""


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_every_family_passes_the_check_on_load(arch, backend):
    lm = tiny_model(arch, backend)
    assert lm.check["status"] == "passed", lm.check
    assert {"clean", "decomposition", "heads", "block", "zero", "patch", "final_norm"} <= set(lm.check["errors"])
    declared = checks.capabilities(lm)
    assert ("uniform" in lm.check["errors"]) == (declared["uniform attention knockout"] == "yes")
    assert ("mlp_official" in lm.check["errors"]) == (declared["official MLP knockout"] == "yes")
    assert lm.check["errors"]["clean"] == 0.0  # exactly the stock attention's logits
    assert lm.attention_access.name == ("mask-hook" if arch in MASK_HOOK else "interface")
    assert lm.describe()["model_check"]["status"] == "passed"


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_check_passes_in_half_precision(arch, dtype):
    lm = tiny_model(arch, "sdpa", dtype)
    assert lm.check["status"] == "passed" and lm.check["tolerance"] == checks.TOLERANCES[dtype]


def broken(arch: str, **fields):
    """A tiny model whose registry entry has ``fields`` replaced (loaded without the check)."""
    lm = wrap_model(tiny_hf_model(arch), tokenizer=None, name=f"tiny-{arch}", check=False)
    lm.arch = dataclasses.replace(lm.arch, **fields)
    return lm


def failed(lm) -> list[str]:
    return checks.check_model(lm, raise_on_failure=False)["failed"]


def test_decomposition_fails_where_the_update_includes_the_residual():
    # Bloom's attention module returns output + residual: reading the update there is the
    # silent error of the issue (decomposition error of order 1)
    lm = broken("bloom", attn_update="self_attention")
    report = checks.check_model(lm, raise_on_failure=False)
    assert "decomposition" in report["failed"] and report["errors"]["decomposition"] > 0.1


def test_heads_fail_without_the_post_attention_norm():
    assert "heads" in failed(broken("gemma3_text", attn_post_norm=None))
    assert "heads" in failed(broken("llama", attn_out="self_attn.q_proj"))


def test_block_fails_when_the_knockout_does_nothing():
    # Bloom computes attention itself: edits handed to the interface back-end never arrive
    lm = broken("bloom")
    lm.attention_access = InterfaceAccess()
    assert "block" in failed(lm)


def test_block_fails_with_a_wrong_value_layout():
    assert "block" in failed(broken("bloom", qkv_layout="concat"))


def test_zero_fails_when_the_update_is_read_at_the_wrong_module():
    assert "zero" in failed(broken("llama", mlp_update="mlp.up_proj"))


def test_clean_fails_when_our_attention_function_differs_from_the_stock_one(monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa

    lm = broken("llama")
    stock = sdpa.sdpa_attention_forward

    def drifting(*args, **kwargs):  # what a silently changed attention path would do
        out, weights = stock(*args, **kwargs)
        return out * 1.001, weights

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", drifting)  # ours imports it at call time; the stock does not
    assert "clean" in failed(lm)


def test_patch_fails_when_a_patch_is_not_its_own_value(monkeypatch):
    lm = broken("llama")
    install = PatchHidden.install

    def noisy(lm, hooks, rows, n):
        rows = [[dataclasses.replace(iv, vectors=iv.vectors + 1e-2) for iv in row] for row in rows]
        return install(lm, hooks, rows, n)

    monkeypatch.setattr(PatchHidden, "install", staticmethod(noisy))
    assert "patch" in failed(lm)


def test_a_failed_check_names_invariant_error_model_type_and_field():
    with pytest.raises(checks.ModelCheckError) as err:
        checks.check_model(broken("bloom", attn_update="self_attention"))
    message = str(err.value)
    for part in ("'decomposition'", "'bloom'", "attn_update", "check=False"):
        assert part in message


def test_skipping_the_check_is_recorded():
    lm = wrap_model(tiny_hf_model("llama"), tokenizer=None, name="tiny", check=False)
    assert lm.describe()["model_check"] == {"status": "skipped", "reason": "check=False was given"}


def test_check_outcome_is_in_every_tables_metadata(tmp_path):
    import json

    from utils.runs.results import save_table

    lm = tiny_model("llama")
    import pandas as pd

    path = save_table(pd.DataFrame({"x": [1]}), "t", lm, {})
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["model_check"]["status"] == "passed" and "decomposition" in meta["model_check"]["errors"]


# --------------------------------------------------------------------------------------
# Family quirks that gave wrong numbers without an error, each caught here


def test_falcon_capture_is_not_changed_in_place_afterwards():
    lm = tiny_model("falcon")
    ids = torch.arange(3, 13)[None]
    out = run(lm, ids, [[ZeroSublayer("mlp", [1])]], capture=Capture(mlp=True)).acts["mlp"]
    assert out[0, 1].abs().max() == 0  # the captured MLP update, before Falcon adds attention into it in place


def test_opt_mlp_on_flattened_tensors():
    lm = tiny_model("opt")
    ids = torch.arange(3, 13)[None]
    acts = run(lm, ids, [[ZeroSublayer("mlp", [1], positions=[4])]], capture=Capture(mlp=True)).acts["mlp"]
    assert acts.shape == (1, lm.n_layers, 10, lm.config.hidden_size)
    assert acts[0, 1, 4].abs().max() == 0 and acts[0, 1, 3].abs().max() > 0


@pytest.mark.parametrize("arch", ["gemma2", "bloom"])
def test_load_model_falls_back_to_the_attention_transformers_allows(arch, tmp_path):
    """Gemma 2 refuses sdpa, Bloom any function of ours: loaded by path like a hub id, both run
    (Gemma 2 through our eager function, Bloom through hooks) and pass the check."""
    import transformers
    from tiny_models import _configs

    from utils import load_model
    from utils.core.sources import convert_embedded

    tokenizer = transformers.AutoTokenizer.from_pretrained(convert_embedded("smollm2-135m"))
    config = _configs()[arch]
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu")
    assert lm.attn_implementation == "eager" and lm.check["status"] == "passed"
    assert lm.attention_access.name == ("interface" if arch == "gemma2" else "mask-hook")


def test_contributing_table_of_families_says_what_the_code_does():
    from pathlib import Path

    from utils.core.checks import capabilities

    readme = (Path(__file__).resolve().parent.parent / "CONTRIBUTING.md").read_text()  # moved from the README
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 7:
            for name in cells[0].replace("`", "").split(", "):
                rows[name] = cells
    for arch in ARCHITECTURES:
        got = capabilities(tiny_model(arch))
        row = rows[arch]
        assert row[2].startswith(got["attention reached"]), arch
        assert row[3] == got["cached prefix"], arch
        assert row[4].startswith(got["uniform attention knockout"]), arch
        assert row[5].startswith(got["official MLP knockout"]), arch


# --------------------------------------------------------------------------------------
# Every field of an entry, broken on purpose, fails the check with a message naming it (issue 21)


def _more(arch: str, **fields):
    from tiny_models import tiny_more_hf_model

    lm = wrap_model(tiny_more_hf_model(arch), tokenizer=None, name=f"tiny-{arch}", check=False)
    lm.arch = dataclasses.replace(lm.arch, **fields)
    return lm


def _grouped_falcon():
    """Falcon's new decoder layout with two key-value heads: its [q q | k | v] groups and the
    concat layout [q q q q | k k | v v] have the same width, so only the check tells them apart."""
    import transformers
    from tiny_models import COMMON

    config = transformers.FalconConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                       max_position_embeddings=64, new_decoder_architecture=True, num_kv_heads=2,
                                       **COMMON)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    return wrap_model(model.requires_grad_(False), tokenizer=None, name="tiny-falcon-grouped", check=False)


def _build(arch, fields, perturb):
    if arch == "qwen2_moe":
        lm = _more(arch)
    elif arch == "falcon_grouped":
        lm = _grouped_falcon()
    else:
        lm = broken(arch)
    if perturb:  # random init leaves biases 0 and norms 1, where a wrong module can compute the same thing
        g = torch.Generator().manual_seed(3)
        for param in lm.model.parameters():
            if param.ndim == 1:
                param.add_(0.3 * torch.randn(param.shape, generator=g))
    assert checks.check_model(lm, raise_on_failure=False)["status"] == "passed"  # the right entry passes
    lm.arch = dataclasses.replace(lm.arch, **fields)
    return lm


BROKEN = [  # (family, wrong entry, invariant that catches it, field the message must name, perturb biases/norms)
    ("llama", dict(attn_update="self_attn.q_proj"), "decomposition", "attn_update", False),
    ("llama", dict(mlp_update="mlp.up_proj"), "decomposition", "mlp_update", False),
    ("llama", dict(attn_out="self_attn.q_proj"), "heads", "attn_out", False),
    ("gemma3_text", dict(attn_post_norm=None), "heads", "attn_post_norm", False),
    ("llama", dict(attention="mlp"), "block", "attention", False),
    ("bloom", dict(value="self_attention.dense"), "block", "value", False),
    ("falcon_grouped", dict(qkv_layout="concat"), "uniform", "qkv_layout", False),
    ("falcon", dict(query="self_attention.dense"), "uniform", "query", False),
    ("gpt2", dict(mlp_out="mlp.c_fc"), "mlp_official", "mlp_out", True),
    ("qwen2_moe", dict(mlp_out="mlp.shared_expert.down_proj"), "mlp_official", "mlp_out", False),
    ("llama", dict(final_norm="model.layers.0.input_layernorm"), "final_norm", "final_norm", True),
    ("gemma3_text", dict(final_norm="model.layers.1.post_feedforward_layernorm"), "final_norm", "final_norm", True),
]


@pytest.mark.parametrize("arch,fields,invariant,field,perturb", BROKEN, ids=[f"{b[0]}-{b[3]}" for b in BROKEN])
def test_a_broken_entry_fails_the_check_naming_its_field(arch, fields, invariant, field, perturb):
    lm = _build(arch, fields, perturb)
    report = checks.check_model(lm, raise_on_failure=False)
    assert invariant in report["failed"], report
    with pytest.raises(checks.ModelCheckError) as err:
        checks.check_model(lm)
    named = str(err.value).split("Registry field(s) to look at:")[1].split("All errors")[0]
    assert field in named, str(err.value)


def test_the_uniform_invariant_catches_a_knockout_that_does_nothing(monkeypatch):
    """Item 1's bug, put back: the queries zeroed in place on what is, for Falcon's grouped layout
    with two key-value heads, a copy. The check now fails at load."""
    import transformers

    from tiny_models import COMMON

    from utils.core import attention

    def in_place_on_a_copy(x, layout, uniform, n_heads, n_kv, head_dim):
        q = attention.split_qkv(x, layout, "q", n_heads, n_kv, head_dim)
        q.mul_((~uniform)[..., None, None].to(x.dtype))
        return x

    config = transformers.FalconConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4,
                                       max_position_embeddings=64, new_decoder_architecture=True, num_kv_heads=2,
                                       **COMMON)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    lm = wrap_model(model.requires_grad_(False), tokenizer=None, name="tiny-falcon-grouped")
    assert lm.check["status"] == "passed" and lm.check["errors"]["uniform"] < 1e-4
    monkeypatch.setattr(attention, "_zero_queries", in_place_on_a_copy)
    report = checks.check_model(lm, raise_on_failure=False)
    assert report["failed"] == ["uniform"] and report["errors"]["uniform"] > 1e-2, report


def test_the_official_mlp_invariant_catches_a_knockout_that_does_nothing(monkeypatch):
    from utils.core import interventions

    lm = broken("llama")
    install = interventions.ZeroSublayer.install

    def dropping_official_mlp(lm, hooks, rows, n):
        return install(lm, hooks, [[iv for iv in row if not (iv.sublayer == "mlp" and iv.variant == "official")]
                                   for row in rows], n)

    monkeypatch.setattr(interventions.ZeroSublayer, "install", staticmethod(dropping_official_mlp))
    assert "mlp_official" in failed(lm)
