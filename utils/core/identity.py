"""Content identities: what a result was computed from, not what it was called.

A sweep journal or a cached table is reused only when the weights and the data are the
same bytes as before. :func:`weights_identity` names a model's weights:

- an **embedded model** (``gemma-3-270m``, ``smollm2-135m``): the sha256 of its GGUF file,
  which :func:`utils.core.sources.embedded_gguf_path` checks at every conversion;
- a **hub snapshot** in the Hugging Face cache: the commit it was downloaded at (the
  snapshot folder's name, which ``refs/main`` points to; transformers 5 no longer sets
  ``config._commit_hash``) and the names of its files' blobs, which the cache names by their
  sha256 (weights, stored with LFS) or git blob sha1 (small files) -- nothing is read;
- a **local folder** (a fine-tuned checkpoint, a model saved with ``save_pretrained``): the
  size and sha256 of every file the loader reads (weights, config, tokenizer). Hashing a
  24 GB folder takes minutes, so each file's digest is cached in
  ``<cache_dir>/file-digests.json`` (:func:`cached_sha256`) under its path, size, modification and change times and
  inode: it is read once, and again only when the file changes;
- an **in-memory model** (:func:`utils.core.models.wrap_model`): the sha256 of its state dict
  (names, dtypes, shapes and bytes), computed when it is wrapped.

``"unknown"`` (a model whose weights could not be read, e.g. on the meta device) is never
equal to anything: :mod:`utils.runs.results` recomputes rather than reuse a result made with it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from ..paths import cache_dir

UNKNOWN = "unknown"
MODEL_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.msgpack",
               "*.json", "*.model", "*.txt", "*.tiktoken", "*.py")
"""The files of a model folder that loading it may read (weights, config, tokenizer, code)."""
_BLOB_NAME = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def sha256_of_file(path: Path) -> str:
    """sha256 of a file, read a megabyte at a time, every time (:func:`cached_sha256` reads a
    file once and remembers)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_file() -> Path:
    return cache_dir() / "file-digests.json"


def cached_sha256(path: str | Path) -> str:
    """The sha256 of a file, read once: cached by resolved path, size, mtime, ctime and inode."""
    path = Path(path).resolve()
    stat = path.stat()
    signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(str(path))
    if isinstance(entry, dict) and entry.get("stat") == signature:
        return entry["sha256"]
    digest = sha256_of_file(path)
    try:  # re-read, so that entries another process wrote meanwhile are kept
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    cache = {k: v for k, v in cache.items() if os.path.exists(k)}  # forget deleted files (test folders)
    cache[str(path)] = {"stat": signature, "sha256": digest}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, suffix=".part") as tmp:
            json.dump(cache, tmp, indent=0, sort_keys=True)
        os.replace(tmp.name, cache_file)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return digest


def _model_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and any(fnmatch.fnmatch(f.name, p) for p in MODEL_FILES))


def folder_identity(folder: str | Path) -> str:
    """``folder-sha256:<digest>`` of the model files' names, sizes and sha256 (cached per file)."""
    manifest = {f.name: [f.stat().st_size, cached_sha256(f)] for f in _model_files(Path(folder))}
    return "folder-sha256:" + sha256_text(json.dumps(manifest, sort_keys=True))


def hub_identity(repo_id: str, commit: str | None) -> str:
    """``hub:<repo>@<commit>:<digest of the blob names>`` for a snapshot in the HF cache.

    The cache keeps each file of a snapshot as a link to a blob named by its sha256 (LFS
    files: the weights) or its git blob sha1; those names identify the content without
    reading it. A snapshot stored as plain files (no links) is hashed like a folder.
    """
    found = try_to_load_from_cache(repo_id, "config.json", revision=commit)  # commit None: refs/main
    if not isinstance(found, str):
        return f"hub:{repo_id}@{commit}" if commit else UNKNOWN
    snapshot = Path(found).parent
    manifest = {}
    for file in _model_files(snapshot):
        blob = Path(os.readlink(file)).name if file.is_symlink() else ""
        manifest[file.name] = blob if _BLOB_NAME.fullmatch(blob) else cached_sha256(file)
    return f"hub:{repo_id}@{commit or snapshot.name}:" + sha256_text(json.dumps(manifest, sort_keys=True))


def weights_identity(source: str, config=None, gguf_sha256: str | None = None) -> str:
    """The identity of the weights ``load_model`` read from ``source`` (see the module docs)."""
    if gguf_sha256:
        return f"gguf-sha256:{gguf_sha256}"
    if Path(source).is_dir():
        return folder_identity(source)
    return hub_identity(source, getattr(config, "_commit_hash", None))


def state_dict_identity(model) -> str:
    """``state-sha256:<digest>`` of an in-memory model's parameters and buffers, or
    ``"unknown"`` when they cannot be read (meta tensors, offloaded weights)."""
    digest = hashlib.sha256()
    try:
        for name, tensor in sorted(model.state_dict().items()):
            if tensor.device.type == "meta":
                return UNKNOWN
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return UNKNOWN
    return "state-sha256:" + digest.hexdigest()


__all__ = ["UNKNOWN", "cached_sha256", "sha256_of_file", "folder_identity", "hub_identity", "state_dict_identity", "weights_identity"]
