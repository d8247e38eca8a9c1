"""Utilities for the companion notebooks to Geva et al. (2023), "Dissecting Recall of
Factual Associations in Auto-Regressive Language Models".

One module per concept: ``models`` (loading) and ``registry`` (where each architecture
keeps its parts), ``interventions`` (knockouts, patching, capture), ``projection``
(reading vectors as tokens), ``data`` (facts and known sets), ``results`` (tables,
provenance, resumable sweeps) and ``plotting``.
"""

from .data import build_known_set, known_only, known_set, load_facts, tokenize_facts
from .interventions import BlockAttention, Capture, PatchHidden, ZeroSublayer, run, window
from .models import EMBEDDED_MODELS, LoadedModel, load_model, wrap_model
from .projection import decode_ids, project, token_ranks, top_tokens
from .registry import REGISTRY, arch_spec
from .results import cached_table, load_table, output_dir, save_table, sweep

__all__ = [
    "BlockAttention", "Capture", "EMBEDDED_MODELS", "LoadedModel", "PatchHidden", "REGISTRY", "ZeroSublayer",
    "arch_spec", "build_known_set", "cached_table", "decode_ids", "known_only", "known_set", "load_facts", "load_model",
    "load_table", "output_dir", "project", "run", "save_table", "sweep", "token_ranks", "tokenize_facts",
    "top_tokens", "window", "wrap_model",
]
