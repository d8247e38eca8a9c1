"""Reference solutions for exercises/00_known_facts_exercises.ipynb (never imported by it)."""

import torch


def subject_positions(spans, prompt, subject):
    """00.1 The positions of the tokens that cover the subject's characters."""
    start = prompt.find(subject)
    end = start + len(subject)
    # a token belongs to the subject when its span overlaps [start, end); empty spans (the sink) never do
    return [i for i, (s, e) in enumerate(spans) if e > s and s < end and e > start]


def attribute_first_token(lm, prompt, attribute):
    """00.2 The attribute's first token as the model would write it right after the prompt."""
    plain = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = lm.tokenizer(prompt + " " + attribute, add_special_tokens=False)["input_ids"]
    if full[: len(plain)] == plain:  # the prompt's tokens are unchanged: the next one starts the attribute
        return full[len(plain)]
    return lm.tokenizer(" " + attribute, add_special_tokens=False)["input_ids"][0]


@torch.no_grad()
def next_token(lm, input_ids):
    """00.3 The model's top-1 next token and its probability."""
    logits = lm.model(torch.tensor([input_ids])).logits  # (1, n, V)
    probs = logits[0, -1].float().softmax(-1)  # the prediction is made at the last position
    prob, token = probs.max(-1)
    return int(token), float(prob)
