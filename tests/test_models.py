from pathlib import Path

import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_hf_model, tiny_model

from utils import load_model, project
from utils.core.devices import resolve_dtype
from utils.core.registry import REGISTRY, arch_spec
from utils.core.sources import EMBEDDED_MODELS

ROOT = Path(__file__).resolve().parent.parent


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
    assert model.config._attn_implementation == "dissect_eager" and lm.attn_implementation == "eager"


@pytest.mark.slow
def test_smollm_recalls_paris_and_knockout_lowers_it(smollm):
    from utils import BlockAttention, run

    prompt = "The Eiffel Tower is located in the city of"
    ids, spans = smollm.encode(prompt, offsets=True)
    paris = smollm.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    probs = run(smollm, ids).probs()[0]
    assert probs.argmax().item() == paris and probs[paris] > 0.5
    from utils.paper.facts import subject_positions

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
    from utils.core.sources import convert_embedded
    from utils.runs.results import model_slug

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

    from utils.core.devices import fits_one_gpu

    config = _configs()["llama"]  # about 160k parameters: 640 kB in float32, 320 kB in float16
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10_000_000, 80_000_000))
    assert fits_one_gpu(config, torch.float32, torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (500_000, 80_000_000))
    assert not fits_one_gpu(config, torch.float32, torch.device("cuda:0"))
    assert fits_one_gpu(config, torch.float16, torch.device("cuda:0"))  # half the bytes


# --- devices and `prepare`: a device that is not there, or a model that cannot be had, fails first ---

def test_cuda_on_a_machine_without_cuda_is_an_error(monkeypatch):
    from utils.core.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match="DEVICE=cuda.*no CUDA device.*DEVICE=auto or DEVICE=cpu"):
            resolve_device(device)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        load_model("smollm2-135m", device="cuda")  # refused before anything is loaded
    with pytest.raises(ValueError, match="Unknown device 'gpu'"):
        resolve_device("gpu")


def test_a_cuda_index_beyond_the_gpus_is_an_error(monkeypatch):
    from utils.core.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match="cuda:2.*2 CUDA devices"):
        resolve_device("cuda:2")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """snapshot_download replaced by a copy of a tiny saved model; loading weights fails the test."""
    import huggingface_hub
    import transformers
    from tiny_models import save_tiny_folder

    saved = save_tiny_folder(tmp_path / "saved")
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
        import fnmatch
        import shutil

        calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns})
        dest = tmp_path / "snapshot"
        dest.mkdir(exist_ok=True)
        for file in saved.iterdir():
            if any(fnmatch.fnmatch(file.name, p) for p in allow_patterns or ["*"]):
                shutil.copy(file, dest / file.name)
        return str(dest)

    def no_load(*args, **kwargs):
        pytest.fail("prepare loaded the model's weights")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    return calls


def test_prepare_only_downloads_a_hub_model(fake_hub, capsys):
    from utils.core.sources import main

    main(["prepare", "acme/big-model", "--device", "cpu", "--dtype", "float16"])
    assert [c["repo_id"] for c in fake_hub] == ["acme/big-model"]
    allowed = fake_hub[0]["allow_patterns"]
    assert "*.safetensors" in allowed and "*.json" in allowed and "*.bin" not in allowed
    assert fake_hub[0]["ignore_patterns"] == ["*/*"]  # no onnx/, original/ or other sub-folders
    out = capsys.readouterr().out
    assert "acme/big-model" in out and "llama" in out and "float16" in out and "cpu" in out


def test_prepare_checks_device_and_dtype_before_downloading(fake_hub, monkeypatch):
    from utils.core.sources import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        main(["prepare", "acme/big-model", "--device", "cuda", "--dtype", "float16"])
    with pytest.raises(ValueError, match="Unknown dtype"):
        main(["prepare", "acme/big-model", "--device", "cpu", "--dtype", "float8"])
    assert fake_hub == []


def test_make_reproduce_passes_device_and_dtype_to_prepare():
    import subprocess

    out = subprocess.run(["make", "-n", "reproduce", "MODEL=acme/m", "DEVICE=cuda", "DTYPE=bfloat16"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "-m utils.core.sources prepare \"acme/m\" --device cuda --dtype bfloat16" in out  # quoted: a path may hold spaces


@pytest.mark.slow
def test_an_embedded_model_is_identified_by_its_gguf_checksum(smollm):
    assert smollm.weights_id == "gguf-sha256:" + EMBEDDED_MODELS["smollm2-135m"].sha256
    assert smollm.describe()["weights_id"] == smollm.weights_id
