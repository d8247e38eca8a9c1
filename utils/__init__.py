"""Utilities for the companion notebooks to Geva et al. (2023), "Dissecting Recall of Factual
Associations in Auto-Regressive Language Models", in four parts:

* :mod:`utils.core` - the intervention library: the registry of architectures, loading any
  causal LM (and the two embedded models), the hook layer, the attention access paths, the
  interventions (knockouts, patching, captures), projection and readout, the head
  decomposition, the model check and weight identities. It knows no paper section and writes
  no table.
* :mod:`utils.runs` - runs and provenance: result tables with their metadata, resumable
  sweeps (journals), the pinned environment, one line of progress per loop.
* :mod:`utils.paper` - the paper: the facts (a typed :class:`~utils.paper.facts.Fact`), attribute
  sets, one module per section (``information_flow`` §3, ``enrichment`` §4, ``extraction``
  §5), and the claims ledger with its rules in a file of their own.
* :mod:`utils.companion` - what is built around the paper: figures, the README's findings,
  the book, the benchmarks, the exercise checkers.

Each part imports only the parts listed before it (the core none of them, the runs none of
them, a test checks it), and all of them the ground floor: :mod:`utils.paths` (the project
root, the output root, the cache) and :mod:`utils.setup` (a notebook's first cell), both
standard library only.

The names below are imported lazily, on first use, so that ``import utils.setup`` needs
nothing beyond the standard library.
"""

from importlib import import_module

PARTS = ("core", "runs", "paper", "companion")
"""The four parts, in the order they may import each other."""

_EXPORTS = {
    "companion.dissect": ("dissect",),
    "core.forward": ("Capture", "run"),
    "core.interventions": ("BlockAttention", "PatchHidden", "ZeroSublayer", "window"),
    "core.models": ("LoadedModel", "load_model", "wrap_model"),
    "core.projection": ("decode_ids", "project", "token_ranks", "top_tokens"),
    "core.sources": ("EMBEDDED_MODELS",),
    "paper.facts": ("Fact", "as_facts", "build_known_set", "known_only", "known_set", "load_facts", "tokenize_facts"),
    "runs.results": ("cached_table", "display_path", "load_table", "output_dir", "save_table", "sweep"),
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
