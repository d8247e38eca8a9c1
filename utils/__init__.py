"""Utilities for the companion notebooks to Geva et al. (2023), "Dissecting Recall of
Factual Associations in Auto-Regressive Language Models".

One module per concept: ``models`` (loading) and ``registry`` (where each architecture
keeps its parts), ``interventions`` (knockouts, patching, capture), ``projection``
(reading vectors as tokens), ``data`` (facts and known sets), ``results`` (tables,
provenance, resumable sweeps), ``plotting``, ``progress`` and ``setup`` (a notebook's
first cell, which must import before the dependencies are known to be there).

The names below are imported lazily, on first use, so that ``import utils.setup`` needs
nothing beyond the standard library.
"""

from importlib import import_module

_EXPORTS = {
    "data": ("build_known_set", "known_only", "known_set", "load_facts", "tokenize_facts"),
    "interventions": ("BlockAttention", "Capture", "PatchHidden", "ZeroSublayer", "run", "window"),
    "models": ("EMBEDDED_MODELS", "LoadedModel", "load_model", "wrap_model"),
    "projection": ("decode_ids", "project", "token_ranks", "top_tokens"),
    "registry": ("REGISTRY", "arch_spec"),
    "results": ("cached_table", "display_path", "load_table", "output_dir", "save_table", "sweep"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
