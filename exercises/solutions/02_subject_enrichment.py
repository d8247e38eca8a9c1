"""Reference solutions for exercises/02_subject_enrichment_exercises.ipynb (never imported by it)."""

import torch

from utils.core.projection import project, vocabulary
from utils.paper.attributes import stopwords


@torch.no_grad()
def hidden_state(lm, input_ids, layer, position):
    """02.1 The residual stream entering block ``layer`` (hidden_states[layer]) at ``position``."""
    out = lm.model(torch.tensor([input_ids]), output_hidden_states=True)
    return out.hidden_states[layer][0, position]


def clean_tokens(tokens, kept=50):
    """02.2 The official filter: no stopwords (lower-cased), no tokens of two characters or less."""
    words = stopwords()
    return [t for t in tokens if t.strip().lower() not in words and len(t.strip()) > 2][:kept]


@torch.no_grad()
def attributes_rate(lm, hidden, attributes, top_k=500, kept=50):
    """02.3 % of the first ``kept`` clean tokens of the top ``top_k`` (logit lens) in the attribute set."""
    vocab = vocabulary(lm)
    top = project(lm, hidden, "logit_lens").topk(top_k).indices.tolist()
    tokens = clean_tokens([vocab[i] for i in top], kept)
    return 100 * len(set(tokens) & attributes) / len(tokens)


def knockout_windows(repr_layer, window):
    """02.4 The official windows: one per start below the representation layer, window + 1 layers,
    never reaching the representation layer's block."""
    return [list(range(start, min(start + window + 1, repr_layer))) for start in range(repr_layer)]
