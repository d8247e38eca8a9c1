"""The model check: on every load, the invariants every analysis rests on, verified for the
loaded model, attention back-end and dtype on one short prompt.

A registry entry that points at the wrong module, an attention class that bypasses the
interventions, a sublayer that adds the residual itself, a captured tensor the model later
changes in place: each of these gives wrong numbers without an error. The check makes them
fail loudly, before any analysis runs, naming the invariant, the measured error, the
model_type and the registry field to look at:

1. ``clean``: with no intervention, this project's forward pass gives the model's own logits
   exactly.
2. ``decomposition``: the residual stream decomposes - the input of the first layer plus every
   attention and MLP update equals the last layer's output, at every position (catches an
   update read at the wrong module).
3. ``heads``: the per-head outputs, through the output projection (and post-norm), sum to the
   attention update.
4. ``block``: blocking one attention edge at one layer changes that layer's attention update
   exactly as removing the edge before the softmax does (the captured probabilities
   renormalised over the other keys, times the captured values; catches a knockout that does
   nothing).
5. ``zero``: zeroing the last MLP removes exactly its update from the output; zeroing one
   layer's attention leaves a zero update and a consistent layer; ``patch``: patching a state
   with its own value changes nothing.

The report (passed, tolerances, errors, seconds) goes into every result table's metadata.
"""

from __future__ import annotations

import time

import torch

TOLERANCES = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}
"""Relative error allowed (error norm over the norm of the compared vector), by dtype."""

FIELDS = {
    "clean": "the attention back-end (utils.attention): this project's attention function changed a clean pass",
    "decomposition": "attn_update / mlp_update (the modules whose outputs are the updates) or layers",
    "heads": "attn_out (its input must be the per-head outputs) or attn_post_norm",
    "block": "attention (the module the knockout reaches); outside the attention interface also value and "
             "qkv_layout",
    "zero": "attn_update / mlp_update",
    "patch": "layers",
}


class ModelCheckError(RuntimeError):
    """A loaded model fails an invariant the analyses rest on."""


def _prompt(lm) -> list[int]:
    if lm.tokenizer is not None:
        ids = lm.encode("The Eiffel Tower is located in the city of", prepend_sink=True
                        if lm.sink_token_id is not None else None)
        if len(ids) >= 4:
            return ids
    vocab = lm.unembedding.weight.shape[0]
    return [(7 + 13 * i) % vocab for i in range(8)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over vectors of |a - b| / |b| (last dimension)."""
    a, b = a.float(), b.float()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max())


@torch.no_grad()
def measure(lm) -> dict[str, float]:
    """The error of each invariant on this model (see the module docstring)."""
    from .extraction import head_contributions, reweight, update_from_weights
    from .interventions import BlockAttention, Capture, PatchHidden, ZeroSublayer, run

    ids = torch.tensor([_prompt(lm)])
    n, L = ids.shape[1], lm.n_layers
    errors = {}

    own = lm.model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1).logits
    ours = run(lm, ids).logits
    errors["clean"] = 0.0 if torch.equal(ours.to(own.device), own) else max(_rel(ours.to(own.device), own), 1e-30)

    full = Capture(resid=True, attn=True, mlp=True, heads=True, attn_weights=True, values=True)
    clean = run(lm, ids, capture=full)
    a = {k: v[0] for k, v in clean.acts.items()}
    device = a["resid"].device
    total = a["resid"][0] + a["attn"].to(device).sum(0) + a["mlp"].to(device).sum(0)
    errors["decomposition"] = _rel(total, a["resid"][L])

    errors["heads"] = max(_rel(sum(part.to(device) for part in _shares(head_contributions, lm, layer, a["heads"][layer].flatten(-2))),
                               a["attn"][layer].to(device)) for layer in range(L))

    layer, last = L // 2, n - 1
    weights = a["attn_weights"][layer][:, last].float().mean(0)  # (n,) over heads
    weights[last] = -1
    key = int(weights.argmax())
    blocked = torch.zeros(n, dtype=torch.bool, device=a["attn_weights"].device)
    blocked[key] = True
    expected = update_from_weights(lm, layer, reweight(a["attn_weights"][layer][:, last], blocked, "renormalised"),
                                   a["values"][layer])
    rows = [[BlockAttention([layer], [last], [key])],
            [ZeroSublayer("mlp", [L - 1])],
            [ZeroSublayer("attn", [layer])],
            [PatchHidden(layer, range(n), a["resid"][layer])]]
    hit = run(lm, ids, rows, capture=Capture(resid=True, attn=True, mlp=True))
    h = hit.acts
    got = h["attn"][0, layer, last].float()
    errors["block"] = _rel(got, expected.to(got.device))
    if _rel(a["attn"][layer, last], expected.to(device)) < 10 * TOLERANCES.get(lm.dtype, 1e-4):
        errors["block"] = max(errors["block"], float("nan"))  # the edge did not matter: nothing was checked
    zero_mlp = _rel(h["resid"][1, L], (a["resid"][L] - a["mlp"][L - 1]).to(h["resid"].device))
    attn_left = float(h["attn"][2, layer].float().norm() / a["attn"][layer].float().norm().clamp_min(1e-12))
    consistent = _rel(h["resid"][2, layer + 1], (h["resid"][2, layer] + h["mlp"][2, layer]))
    errors["zero"] = max(zero_mlp, attn_left, consistent)
    errors["patch"] = _rel(hit.logits[3, -1], clean.logits[0, -1].to(hit.logits.device))
    return errors


def _shares(head_contributions, lm, layer, z):
    shares, rest = head_contributions(lm, layer, z)
    return [shares.sum(-2), rest]


def check_model(lm, raise_on_failure: bool = True) -> dict:
    """Run the invariants; returns the report, and raises :class:`ModelCheckError` naming the
    first failed invariant (unless ``raise_on_failure=False``)."""
    started = time.perf_counter()
    tolerance = TOLERANCES.get(lm.dtype, 1e-4)
    errors = measure(lm)
    failed = [name for name, error in errors.items() if not error <= tolerance]  # NaN fails too
    report = {"status": "failed" if failed else "passed", "dtype": str(lm.dtype).replace("torch.", ""),
              "attention_backend": getattr(lm.attention_backend, "name", None), "tolerance": tolerance,
              "errors": {k: float(f"{v:.3g}") for k, v in errors.items()},
              "seconds": round(time.perf_counter() - started, 3)}
    if failed and raise_on_failure:
        name = failed[0]
        error = errors[name]
        what = ("the blocked edge did not change the reference, so the knockout could not be checked"
                if error != error else f"measured relative error {error:.3g} > tolerance {tolerance:g}")
        raise ModelCheckError(
            f"Model check failed for {lm.name} (model_type {lm.config.model_type!r}, {report['dtype']}, "
            f"{lm.attn_backend} attention via the {report['attention_backend']} back-end): invariant {name!r}, "
            f"{what}. Registry field(s) to look at: {FIELDS[name]}. All errors: {report['errors']}. "
            "To run anyway (the metadata will say the check was skipped), load with check=False.")
    return report


def summary(report: dict | None) -> dict | None:
    """The part of a check report that goes into result metadata."""
    if report is None:
        return None
    return {k: v for k, v in report.items() if k in ("status", "reason", "tolerance", "errors", "attention_backend")}


__all__ = ["FIELDS", "ModelCheckError", "TOLERANCES", "check_model", "measure", "summary"]
