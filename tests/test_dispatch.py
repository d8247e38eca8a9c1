"""Models placed by accelerate: weights offloaded to disk (read as ``meta`` tensors between
passes) and kept on the CPU, module by module. Every mechanic must give the numbers of the
same model on one device; this is how a user runs a model larger than their GPU, and how
device bugs (a helper that assumes one device, or reads ``.weight`` of an offloaded module)
are caught on a machine without one."""

import ast
from pathlib import Path

import pytest
import torch
import transformers
from tiny_models import _configs

from utils import load_model, project
from utils.core import forward
from utils.core.devices import is_offloaded
from utils.core.forward import Capture, run, run_last_position
from utils.core.interventions import BlockAttention, PatchHidden, ZeroSublayer
from utils.paper import extraction as X
from utils.paper.information_flow import FlowSettings, flow_of_fact

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The Eiffel Tower is located in the city of"


def _device_map(arch: str, n_layers: int) -> dict:
    """Half the layers and the output head on disk, the rest on the CPU."""
    prefix = {"llama": "model.layers", "gpt_neo": "transformer.h", "gemma3_text": "model.layers"}[arch]
    top = {"llama": "model", "gpt_neo": "transformer", "gemma3_text": "model"}[arch]
    mapping = {f"{prefix}.{i}": ("disk" if i % 2 else "cpu") for i in range(n_layers)}
    embed = {"llama": "model.embed_tokens", "gpt_neo": "transformer.wte", "gemma3_text": "model.embed_tokens"}[arch]
    norm = {"llama": "model.norm", "gpt_neo": "transformer.ln_f", "gemma3_text": "model.norm"}[arch]
    mapping.update({embed: "cpu", norm: "disk", "lm_head": "disk"})
    if arch == "gpt_neo":
        mapping[f"{top}.wpe"] = "cpu"
    else:
        mapping[f"{top}.rotary_emb"] = "cpu"
    return mapping


@pytest.fixture(scope="module", params=["llama", "gpt_neo", "gemma3_text"])
def pair(request, tmp_path_factory):
    """(the model on one device, the same weights dispatched with disk offload)."""
    from utils.core.sources import convert_embedded

    arch = request.param
    folder = tmp_path_factory.mktemp(f"dispatch-{arch}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(convert_embedded("smollm2-135m"))
    config = _configs()[arch]
    config.vocab_size, config.tie_word_embeddings = len(tokenizer), False
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    plain = load_model(str(folder), device="cpu")
    spread = load_model(str(folder), device="cpu", device_map=_device_map(arch, config.num_hidden_layers),
                        offload_folder=str(folder / "offload"))
    assert is_offloaded(spread.model) and not is_offloaded(plain.model)
    assert spread.check["status"] == "passed"  # the model check runs on dispatched models too
    assert any(p.device.type == "meta" for p in spread.model.parameters())
    return plain, spread


def _fact(lm) -> dict:
    ids = lm.encode(PROMPT)
    pred = int(run(lm, ids).logits[0, -1].argmax())
    return {"known_id": 0, "subject": "Eiffel Tower", "prompt": PROMPT, "input_ids": ids, "n_tokens": len(ids),
            "subject_positions": [1, 2, 3], "subject_first": 1, "subject_last": 3, "has_sink": False,
            "pred_token_id": pred}


def _close(a, b):
    torch.testing.assert_close(a.cpu() if isinstance(a, torch.Tensor) else a,
                               b.cpu() if isinstance(b, torch.Tensor) else b, atol=1e-5, rtol=1e-5)


def _nothing_left_loaded(lm):
    for module in lm.model.modules():
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "offload", False):
            assert all(p.device.type == "meta" for p in module.parameters(recurse=False)), module


def test_interventions_and_captures_equal(pair):
    plain, spread = pair
    ids = torch.tensor([plain.encode(PROMPT)])
    n = ids.shape[1]
    clean = run(plain, ids, capture=Capture(resid=True))
    rows = [[], [BlockAttention([1, 2], [n - 1], [1, 2])], [ZeroSublayer("mlp", [1])],
            [ZeroSublayer("attn", [0, 2], variant="official" if plain.arch.query or
                          plain.attention_access.name == "interface" else "zero")],
            [ZeroSublayer("mlp", [2], variant="official")],
            [PatchHidden(2, [1, 2], clean.acts["resid"][0, 0, [1, 2]])]]
    capture = Capture(resid=True, attn=True, mlp=True, heads=True, attn_weights=True, values=True)
    a, b = run(plain, ids, rows, capture=capture), run(spread, ids, rows, capture=capture)
    _close(a.logits, b.logits)
    _close(a.probs(), b.probs())
    for name in a.acts:
        _close(a.acts[name], b.acts[name])
    blocks = [[BlockAttention(w, [n - 1], keys)] for w in ([0, 1], [2, 3]) for keys in ([1], [2, 3])]
    _close(run_last_position(plain, ids, blocks).logits, run_last_position(spread, ids, blocks).logits)
    _nothing_left_loaded(spread)


def test_readouts_equal(pair):
    plain, spread = pair
    h = torch.randn(5, plain.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for mode in ("paper", "logit_lens"):
        _close(project(plain, h, mode), project(spread, h, mode))
        targets = project(plain, h, mode).argmax(-1)
        assert X.ranked_first(plain, h, targets, mode).all() and X.ranked_first(spread, h, targets, mode).all()
        _close(X.likely_top(plain, h, mode), X.likely_top(spread, h, mode))
    _nothing_left_loaded(spread)


def test_analyses_equal(pair):
    plain, spread = pair
    fact = _fact(plain)
    assert fact["pred_token_id"] == _fact(spread)["pred_token_id"]
    flow = [flow_of_fact(lm, fact, FlowSettings(2)) for lm in (plain, spread)]
    _close(torch.tensor([r["p_new"] for r in flow[0]]), torch.tensor([r["p_new"] for r in flow[1]]))
    for mode in ("paper", "logit_lens"):
        assert X.extraction_rows(plain, fact, mode) == X.extraction_rows(spread, fact, mode)
    assert X.patching_rows(plain, fact, [0, 1]) == X.patching_rows(spread, fact, [0, 1])
    _close(X.value_output(plain, 1, X.token_embeddings(plain, [5, 6, 7])),
           X.value_output(spread, 1, X.token_embeddings(spread, [5, 6, 7])))
    rows = [[], [ZeroSublayer("mlp", [0, 1])], [ZeroSublayer("attn", [1])]]
    _close(forward.hidden_after(plain, fact["input_ids"], rows, 2, 3),
           forward.hidden_after(spread, fact["input_ids"], rows, 2, 3))
    _nothing_left_loaded(spread)  # a pass stopped after layer 2 put the offloaded weights back
    r = X.clean_run(spread, fact)
    hidden = r.resid[1].expand(2, -1, -1)
    _close(forward.attention_update_again(plain, X.clean_run(plain, fact).calls[1], 1, hidden),
           forward.attention_update_again(spread, r.calls[1], 1, hidden))
    _nothing_left_loaded(spread)


# --------------------------------------------------------------------------------------
# A static check: no host copy of a tensor that may sit on an accelerator


def numpy_without_cpu(source: str) -> list[int]:
    """Lines where ``.numpy()`` is called on something that is not ``.cpu()``'s result (fails
    on a CUDA tensor)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "numpy":
            receiver = node.func.value
            if not (isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute)
                    and receiver.func.attr == "cpu"):
                bad.append(node.lineno)
    return bad


def test_the_static_check_can_fail():
    assert numpy_without_cpu("probs.reshape(2, 3).numpy()") == [1]
    assert numpy_without_cpu("probs.reshape(2, 3).cpu().numpy()") == []


def test_package_never_calls_numpy_on_a_device_tensor():
    for path in sorted((ROOT / "utils").glob("*.py")):
        assert numpy_without_cpu(path.read_text()) == [], f"{path.name}: .numpy() without .cpu()"
