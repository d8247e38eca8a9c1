"""One plausible wrong answer per exercise: its checker must fail it, and say why.

Each entry: exercise id -> (the wrong function, a phrase the checker's hint must contain).
"""

import torch

from utils import BlockAttention, run
from utils.core.projection import project, vocabulary
from utils.paper.attributes import stopwords


def subject_positions(spans, prompt, subject):
    # tokens lying inside the subject's characters: misses " Eiffel" (its span starts at the space)
    # and takes the sink token (span (0, 0)) when the subject starts the prompt
    start = prompt.find(subject)
    return [i for i, (s, e) in enumerate(spans) if s >= start and e <= start + len(subject)]


def attribute_first_token(lm, prompt, attribute):
    return lm.tokenizer(attribute, add_special_tokens=False)["input_ids"][0]  # no leading space


@torch.no_grad()
def next_token(lm, input_ids):
    probs = lm.model(torch.tensor([input_ids])).logits[0, -1].softmax(-1)
    return int(probs.argmax()), float(lm.model(torch.tensor([input_ids])).logits[0, -1].max())  # the logit


def window(center, size, n_layers):
    return [l for l in range(center - size // 2, center + size // 2 + 1) if 0 <= l < n_layers]  # symmetric


def position_sets(fact):
    last = fact["n_tokens"] - 1
    subject = list(fact["subject_positions"])
    return {"subject": subject, "non-subject": [p for p in range(last) if p not in subject], "last": [last]}  # sink kept


def knockout_probs(scores, query, keys):
    n = scores.shape[-1]
    probs = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    probs[:, query, keys] = 0  # zeroed after the softmax: the row no longer sums to one
    return probs


def relative_change(p_base, p_new):
    return (p_new - p_base) / p_base  # a fraction, not percent


def flow_curve(lm, fact, k, keys):
    last = fact["n_tokens"] - 1
    rows = [[]] + [[BlockAttention([c], [last], keys)] for c in range(lm.n_layers)]  # the centre layer only
    probs = run(lm, fact["input_ids"], rows).probs()
    target = int(probs[0].argmax())
    return [100 * (p - probs[0, target].item()) / probs[0, target].item() for p in probs[1:, target].tolist()]


@torch.no_grad()
def hidden_state(lm, input_ids, layer, position):
    return lm.model(torch.tensor([input_ids]), output_hidden_states=True).hidden_states[layer + 1][0, position]


def clean_tokens(tokens, kept=50):
    return [t for t in tokens if t.lower() not in stopwords() and len(t.strip()) > 2][:kept]  # " the" survives


@torch.no_grad()
def attributes_rate(lm, hidden, attributes, top_k=500, kept=50):
    vocab = vocabulary(lm)
    top = [vocab[i] for i in project(lm, hidden, "logit_lens").topk(kept).indices.tolist()]  # top 50, unfiltered
    return 100 * len(set(top) & attributes) / len(top)


def knockout_windows(repr_layer, window):
    return [list(range(start, min(start + window, repr_layer))) for start in range(repr_layer)]  # no extra layer


@torch.no_grad()
def sublayer_updates(lm, input_ids):
    hidden = torch.stack(lm.model(torch.tensor([input_ids]), output_hidden_states=True).hidden_states)[:, 0, -1]
    delta = hidden[1:] - hidden[:-1]  # both sublayers at once (and the last entry has the final norm)
    return delta, delta


@torch.no_grad()
def extraction_event(lm, update, target):
    scores = project(lm, update, "paper")  # no final norm
    return bool(scores.argmax() == target)


@torch.no_grad()
def head_shares(lm, layer, z):
    weight = lm.sub(layer, lm.arch.attn_out).weight.float()
    heads, hd = z.float().view(lm.n_heads, lm.head_dim), lm.head_dim
    return torch.stack([heads[h] @ weight[h * hd:(h + 1) * hd, :] for h in range(lm.n_heads)])  # rows, not columns


@torch.no_grad()
def head_mapping(lm, layer, head, token_id):
    block = lm.layers[layer]
    x = block.input_layernorm(lm.model.get_input_embeddings().weight[token_id])
    v = block.self_attn.v_proj(x).view(-1, lm.head_dim)[head % lm.config.num_key_value_heads]  # wrong group
    w_o = block.self_attn.o_proj.weight[:, head * lm.head_dim:(head + 1) * lm.head_dim]
    return project(lm, w_o @ v, "logit_lens")


# ---------------------------------------------------------------------------------- 04, 05
@torch.no_grad()
def blocked_update(lm, fact, layer, blocked):
    from utils.core.heads import update_from_weights
    from utils.paper.extraction import clean_run
    r = clean_run(lm, fact)
    weights = r.weights[layer].float().clone()
    weights[:, blocked] = 0  # not rescaled: the surviving weights no longer sum to one
    return update_from_weights(lm, layer, weights, r.values[layer])


@torch.no_grad()
def patched_update(lm, fact, layer, positions, source):
    from utils import Capture, PatchHidden, run
    ids, last = fact["input_ids"], fact["n_tokens"] - 1
    hidden = run(lm, ids, capture=Capture(resid=True)).acts["resid"][0]
    patch = PatchHidden(layer, positions, hidden[source + 1, positions])  # the output of layer `source`, one late
    return run(lm, ids, [[patch]], capture=Capture(positions=[last], layers=[layer], attn=True)).acts["attn"][0, 0, 0]


@torch.no_grad()
def knocked_out_state(lm, input_ids, sublayer, layers, repr_layer, position):
    path = lm.arch.mlp_update if sublayer == "mlp" else lm.arch.attn_update

    def zero(module, args, output):
        if isinstance(output, tuple):
            return (torch.zeros_like(output[0]),) + tuple(output[1:])
        return torch.zeros_like(output)

    handles = [lm.sub(layer, path).register_forward_hook(zero) for layer in layers]
    try:
        out = lm.model(torch.tensor([input_ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out.hidden_states[repr_layer][0, position].float()  # the input of repr_layer, not its output


def flow_reading():
    # swapped: the relation read off the subject curve and the other way round
    import pandas as pd
    from utils.companion.exercises.reading_results import results_root
    summary = pd.read_csv(results_root("smollm2-135m", "information_flow_summary") / "results" / "smollm2-135m"
                          / "information_flow_summary.csv")
    at = summary[(summary.facts_group == "all") & (summary.sink == "prepend")].set_index("source").at_layer
    return {"relation_layer": int(at["subject"]), "subject_layer": int(at["non-subject"]), "first": "subject"}


def claim_8_verdict(share, difference):
    most, more = share[0] > 0.5, difference[0] > 0  # the values, not the intervals
    return "holds" if most and more else "partly" if most else "does not hold"


def my_fact(lm):
    return {"prompt": "Beats Music is owned by", "subject": "Beats Music", "attribute": "Apple", "known": True,
            "extracting_layer": 0, "survives": False, "differs": "nothing, it is the paper's example"}


MISTAKES = {
    "00.1": (subject_positions, "span"),
    "00.2": (attribute_first_token, "leading space"),
    "00.3": (next_token, "not the logit"),
    "01.1": (window, "symmetric window"),
    "01.2": (position_sets, "sink token"),
    "01.3": (knockout_probs, "zero after the softmax"),
    "01.4": (relative_change, "percent"),
    "01.5": (flow_curve, "window(centre"),
    "02.1": (hidden_state, "*output* of block"),
    "02.2": (clean_tokens, "stopword once its leading space is stripped"),
    "02.3": (attributes_rate, "*before* cleaning"),
    "02.4": (knockout_windows, "one layer more"),
    "03.1": (sublayer_updates, "*both* sublayers"),
    "03.2": (extraction_event, "without the final norm"),
    "03.3": (head_shares, "*columns* of"),
    "03.4": (head_mapping, "grouped-query attention"),
    "04.1": (blocked_update, "no longer sum to one"),
    "04.2": (patched_update, "one layer late"),
    "04.3": (knocked_out_state, "*input* of repr_layer"),
    "05.1": (flow_reading, "swapped"),
    "05.2": (claim_8_verdict, "includes 0: the comparison is not shown"),
    "05.3": (my_fact, "of your own"),
}
