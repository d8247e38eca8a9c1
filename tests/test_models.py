import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_hf_model, tiny_model

from utils import load_model, project
from utils.models import EMBEDDED_MODELS, resolve_dtype
from utils.registry import REGISTRY, arch_spec


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_registry_paths_exist_in_every_supported_architecture(arch):
    lm = tiny_model(arch)
    spec = lm.arch
    for layer in (0, lm.n_layers - 1):
        for path in (spec.attention, spec.attn_update, spec.attn_out, spec.query, spec.value, spec.mlp_update,
                     spec.mlp_out, spec.attn_post_norm):
            assert path is None or lm.sub(layer, path) is not None
    assert lm.final_norm is not None and lm.n_layers == lm.config.num_hidden_layers


def test_supported_families():
    assert {"gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text"} <= set(REGISTRY)


def test_unknown_architecture_says_what_to_add():
    class Config:
        model_type = "mamba"

    with pytest.raises(NotImplementedError, match="Add an ArchSpec entry keyed 'mamba'") as err:
        arch_spec(Config())
    for field in ("attn_update", "mlp_update", "attn_out", "final_norm"):  # the fields that decide correctness
        assert f"  {field}: " in str(err.value)


def test_unknown_model_name_lists_the_names_that_exist():
    with pytest.raises(ValueError) as err:
        load_model("no-such-model-anywhere", device="cpu")
    for name in EMBEDDED_MODELS:
        assert name in str(err.value)
    assert "gpt2-xl" in str(err.value)


def test_dtype_names():
    assert resolve_dtype("float16") is torch.float16 and resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("float8")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_projection_modes(arch):
    lm = tiny_model(arch)
    h = torch.randn(3, lm.config.hidden_size)
    unembed = lm.unembedding.weight
    torch.testing.assert_close(project(lm, h, "paper"), h @ unembed.T)
    # the logit lens of the last residual state is the model's own output
    from utils import Capture, run

    out = run(lm, torch.arange(3, 9)[None], capture=Capture(resid=True, positions=[5]))
    lens = project(lm, out.acts["resid"][0, -1], "logit_lens")
    torch.testing.assert_close(lens, out.logits[0].float(), atol=1e-4, rtol=1e-4)


def test_untied_models_project_with_their_own_unembedding():
    lm = tiny_model("gptj")  # GPT-J's lm_head is separate from wte (and has a bias)
    assert lm.unembedding.weight.data_ptr() != lm.model.get_input_embeddings().weight.data_ptr()
    h = torch.randn(2, lm.config.hidden_size)
    torch.testing.assert_close(project(lm, h, "paper"), h @ lm.unembedding.weight.T)
    torch.testing.assert_close(project(lm, h, "paper", matrix="input"),
                               h @ lm.model.get_input_embeddings().weight.T)
    assert lm.describe()["tied_embeddings"] is False


def test_wrap_model_switches_to_the_project_attention():
    model = tiny_hf_model("llama", "eager")
    from utils import wrap_model

    lm = wrap_model(model, tokenizer=None)
    assert model.config._attn_implementation == "dissect_eager" and lm.attn_backend == "eager"


@pytest.mark.slow
def test_smollm_recalls_paris_and_knockout_lowers_it(smollm):
    from utils import BlockAttention, run

    prompt = "The Eiffel Tower is located in the city of"
    ids, spans = smollm.encode(prompt, offsets=True)
    paris = smollm.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    probs = run(smollm, ids).probs()[0]
    assert probs.argmax().item() == paris and probs[paris] > 0.5
    from utils.data import subject_positions

    subject = subject_positions(spans, prompt, "Eiffel Tower")
    last = len(ids) - 1
    blocked = run(smollm, ids, [[BlockAttention(range(smollm.n_layers), [last], subject)]]).probs()[0]
    assert blocked[paris] < probs[paris] - 0.1


@pytest.mark.slow
def test_converted_cache_loads_fast_and_matches(smollm):
    import time

    start = time.perf_counter()
    again = load_model("smollm2-135m", device="cpu")
    assert time.perf_counter() - start < 20  # the GGUF path takes ~20-70 s
    ids = torch.tensor([smollm.encode("The capital of France is")])
    from utils import run

    assert torch.equal(run(again, ids).logits, run(smollm, ids).logits)


@pytest.mark.slow
def test_a_model_folder_in_hub_format_loads_like_a_hub_id(smollm):
    """The path a GPT-2 XL or Llama user takes (AutoConfig, the registry, the project's
    attention, AutoTokenizer), here on a real model saved in Hugging Face format."""
    from utils import run
    from utils.models import convert_embedded
    from utils.results import model_slug

    folder = str(convert_embedded("smollm2-135m"))
    lm = load_model(folder, device="cpu")
    assert lm.model.config._attn_implementation == "dissect_sdpa" and lm.sink_token is None
    assert model_slug(lm.name) == "smollm2-135m"
    ids = torch.tensor([lm.encode("The Eiffel Tower is located in the city of")])
    assert torch.equal(run(lm, ids).logits, run(smollm, ids).logits)


def test_a_model_that_fits_goes_on_one_gpu(monkeypatch):
    """On CUDA, a model that fits on the GPU is not spread over every visible GPU by
    device_map="auto"; one that does not fit is (the size comes from the config, nothing is loaded)."""
    from tiny_models import _configs

    from utils.models import _fits_one_gpu

    config = _configs()["llama"]  # about 160k parameters: 640 kB in float32, 320 kB in float16
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10_000_000, 80_000_000))
    assert _fits_one_gpu(config, torch.float32, torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (500_000, 80_000_000))
    assert not _fits_one_gpu(config, torch.float32, torch.device("cuda:0"))
    assert _fits_one_gpu(config, torch.float16, torch.device("cuda:0"))  # half the bytes
