"""The model check: on every load, the invariants every analysis rests on, verified for the
loaded model, attention access path and dtype on one short prompt.

A registry entry that points at the wrong module, an attention class that bypasses the
interventions, a sublayer that adds the residual itself, a captured tensor the model later
changes in place: each of these gives wrong numbers without an error. The check makes them
fail loudly, before any analysis runs, naming the invariant, the measured error, the
model_type and the registry field to look at:

1. ``clean``: with no intervention, this project's forward pass (our attention functions,
   hooks and batching) gives exactly the logits of the model run with the stock attention.
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
6. ``uniform`` (where the official attention knockout is declared supported,
   :func:`capabilities`): ``ZeroSublayer('attn', variant='official')`` gives the last query the
   attention update of uniform weights over the keys it may see, recomputed from the captured
   values (catches a query entry or ``qkv_layout`` that zeroes the wrong columns, or a copy
   edited instead of the queries: a knockout that silently did nothing).
7. ``mlp_official`` (where the official MLP knockout is declared supported): its logits equal
   those of the model's own forward pass with every weight matrix of that layer's MLP set to
   0 (biases kept), found without the registry's ``mlp_out`` (catches an ``mlp_out`` that is
   one expert's or the shared expert's projection of a mixture of experts).
8. ``final_norm``: the last layer's output through the registry's final norm and the output
   head (:func:`utils.core.projection.project`, the logit lens) gives the model's own logits
   (catches a wrong ``final_norm`` at load, not mid-analysis).

Each costs one short pass on the tiny prompt (the knockouts at the middle layer only).

The report (passed, tolerances, errors, seconds) goes into every result table's metadata.
"""

from __future__ import annotations

import time

import torch

from .forward import Capture, run
from .heads import head_contributions, reweight, update_from_weights
from .interventions import BlockAttention, PatchHidden, ZeroSublayer
from .projection import project

TOLERANCES = {torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}
"""Relative error allowed (error norm over the norm of the compared vector), by dtype."""

INVARIANT_FIELDS = {
    "clean": "the attention access path (utils.core.attention): this project's attention function changed a clean pass",
    "decomposition": "attn_update / mlp_update (the modules whose outputs are the updates) or layers",
    "heads": "attn_out (its input must be the per-head outputs) or attn_post_norm",
    "block": "attention (the module the knockout reaches); outside the attention interface also value and "
             "qkv_layout",
    "zero": "attn_update / mlp_update",
    "patch": "layers",
    "uniform": "query and qkv_layout (outside the attention interface: the columns the official attention knockout "
               "zeroes must be the queries) or attention",
    "mlp_official": "mlp_out (the official MLP knockout zeroes its input: it must be the MLP's only output "
                    "projection, not one expert's or a shared expert's; None refuses the knockout)",
    "final_norm": "final_norm (the norm before the output head, relative to the model)",
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
def measure(lm) -> tuple[dict[str, float], dict[str, str]]:
    """The error of each invariant on this model (see the module docstring), and for each
    invariant whose measurement itself failed, the exception (its error is then infinite)."""
    ids = torch.tensor([_prompt(lm)])
    errors, problems = {}, {}

    def attempt(name, fn):
        try:
            errors[name] = fn()
        except Exception as err:  # a wrong entry often fails as a shape or lookup error: report it as this invariant
            errors[name], problems[name] = float("inf"), f"{type(err).__name__}: {err}"

    def clean():
        config = lm.model.config
        ours_impl, config._attn_implementation = config._attn_implementation, lm.attn_implementation  # the stock function
        try:
            own = lm.model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1).logits
        finally:
            config._attn_implementation = ours_impl
        state["own"] = own
        ours = run(lm, ids).logits.to(own.device)
        return 0.0 if torch.equal(ours, own) else max(_rel(ours, own), 1e-30)

    state = {"layer": lm.n_layers // 2, "last": ids.shape[1] - 1}
    attempt("clean", clean)

    def capture():
        full = Capture(resid=True, attn=True, mlp=True, heads=True, attn_weights=True, values=True)
        try:
            state["clean"] = run(lm, ids, capture=full)
        except Exception as err:  # reading probabilities and values is the knockouts' business: blame them there
            state["clean"] = run(lm, ids, capture=Capture(resid=True, attn=True, mlp=True, heads=True))
            state["read_error"] = f"reading attention probabilities and values failed: {type(err).__name__}: {err}"
        state["acts"] = {k: v[0] for k, v in state["clean"].acts.items()}

    attempt("decomposition", lambda: (capture(), _decomposition(lm, state["acts"]))[1])
    if "acts" not in state:
        for name in ("heads", "block", "zero", "patch", *_declared(lm), "final_norm"):
            errors[name], problems[name] = float("inf"), "the clean capture failed: " + problems["decomposition"]
        return errors, problems
    attempt("heads", lambda: _heads(lm, state["acts"]))
    try:
        if "read_error" in state:
            raise RuntimeError(state["read_error"])
        try:  # the declared official knockouts ride in the same batch (rows 4 and 5): no extra pass
            _intervened(lm, ids, state, _declared(lm))
        except Exception:  # measured on their own instead, so that an error is blamed on the right invariant
            _intervened(lm, ids, state, [])
    except Exception as err:
        state["hit_error"] = f"{type(err).__name__}: {err}"

    def need_hit():
        if "hit" not in state:
            raise RuntimeError("the batched pass with interventions failed: " + state["hit_error"])
        return state

    attempt("block", lambda: _block(lm, need_hit()))
    attempt("zero", lambda: _zero(lm, need_hit()))
    attempt("patch", lambda: _patch(need_hit()))
    declared = _declared(lm)
    if "uniform" in declared:
        attempt("uniform", lambda: _uniform(lm, ids, state))
    if "mlp_official" in declared and not _offloaded(lm, state["layer"]):  # offloaded weights cannot be zeroed in place
        attempt("mlp_official", lambda: _mlp_official(lm, ids, state))
    attempt("final_norm", lambda: _final_norm(lm, ids, state))
    return errors, problems


def _declared(lm) -> list[str]:
    """The official knockouts :func:`capabilities` declares supported, by invariant name."""
    can = capabilities(lm)
    return [name for name, key in (("uniform", "uniform attention knockout"), ("mlp_official", "official MLP knockout"))
            if can[key] == "yes"]


def _stock_logits(lm, ids) -> torch.Tensor:
    """The model's own last-position logits, with the stock attention function."""
    config = lm.model.config
    ours_impl, config._attn_implementation = config._attn_implementation, lm.attn_implementation
    try:
        return lm.model(input_ids=ids.to(lm.device), use_cache=False, logits_to_keep=1).logits[0, -1]
    finally:
        config._attn_implementation = ours_impl


def _uniform(lm, ids, state) -> float:
    """The official attention knockout at the middle layer against uniform weights over the
    keys the last query attends to in the clean pass, times the captured values."""
    if "read_error" in state:
        raise RuntimeError(state["read_error"])
    a, layer, last = state["acts"], state["layer"], state["last"]
    visible = (a["attn_weights"][layer][:, last].float() > 0).float()  # (H, n): the mask, sliding windows included
    expected = update_from_weights(lm, layer, visible / visible.sum(-1, keepdim=True), a["values"][layer])
    if _rel(a["attn"][layer, last].to(expected.device), expected) <= TOLERANCES.get(lm.dtype, 1e-4):
        return float("nan")  # clean attention is already uniform: a knockout doing nothing would pass unseen
    if "uniform" in state.get("rows", {}):
        got = state["hit"].acts["attn"][state["rows"]["uniform"], layer, last].float()
    else:
        hit = run(lm, ids, [[ZeroSublayer("attn", [layer], variant="official")]], capture=Capture(attn=True))
        got = hit.acts["attn"][0, layer, last].float()
    return _rel(got, expected.to(got.device))


def _mlp_params(lm, layer: int) -> list[torch.nn.Parameter]:
    """Every weight matrix of the layer outside its attention module (the MLP's, experts and
    routers included), found without the registry's ``mlp_out``."""
    block, attention = lm.layers[layer], lm.sub(layer, lm.arch.attention)
    inside = {id(p) for p in attention.parameters()}
    return [p for p in block.parameters() if p.ndim >= 2 and id(p) not in inside]


def _offloaded(lm, layer) -> bool:
    return layer is None or any(p.device.type == "meta" for p in _mlp_params(lm, layer))


def _mlp_official(lm, ids, state) -> float:
    """The official MLP knockout at the middle layer against the model's own forward pass with
    that MLP's weight matrices zeroed in place (and put back)."""
    layer = state["layer"]
    params = _mlp_params(lm, layer)
    if not params:
        raise RuntimeError(f"layer {layer} has no weight matrix outside `attention`")
    saved = [p.detach().clone() for p in params]
    try:
        for p in params:
            p.data.zero_()
        expected = _stock_logits(lm, ids).float()
    finally:
        for p, s in zip(params, saved):
            p.data.copy_(s)
    clean = state.get("own")
    clean = _stock_logits(lm, ids) if clean is None else clean[0, -1]
    if _rel(clean.float().to(expected.device), expected) <= TOLERANCES.get(lm.dtype, 1e-4):
        return float("nan")  # the MLP did not matter: a knockout doing nothing would pass unseen
    if "mlp_official" in state.get("rows", {}):
        got = state["hit"].logits[state["rows"]["mlp_official"], -1].float()
    else:
        got = run(lm, ids, [[ZeroSublayer("mlp", [layer], variant="official")]]).logits[0, -1].float()
    return _rel(got.to(expected.device), expected)


def _final_norm(lm, ids, state) -> float:
    """The last layer's output read through the registry's final norm and the head (the logit
    lens) against the model's own logits."""
    own = state.get("own")
    own = _stock_logits(lm, ids) if own is None else own[0, -1]
    lens = project(lm, state["acts"]["resid"][lm.n_layers, -1], "logit_lens")
    return _rel(lens.to(own.device), own.float())


def _decomposition(lm, a) -> float:
    device = a["resid"].device
    total = a["resid"][0] + a["attn"].to(device).sum(0) + a["mlp"].to(device).sum(0)
    return _rel(total, a["resid"][lm.n_layers])


def _heads(lm, a) -> float:
    device = a["resid"].device
    worst = 0.0
    for layer in range(lm.n_layers):
        shares, rest = head_contributions(lm, layer, a["heads"][layer].flatten(-2))
        worst = max(worst, _rel(shares.sum(-2).to(device) + rest.to(device), a["attn"][layer].to(device)))
    return worst


def _intervened(lm, ids, state, official: list[str]) -> None:
    """One batched pass for ``block``, ``zero`` and ``patch``: row 0 blocks the edge from the
    last position that matters most at the middle layer; row 1 zeroes the last MLP; row 2 one
    layer's attention; row 3 patches that layer's input with its own clean value; then one row
    per name in ``official`` (``uniform``, ``mlp_official``): that knockout at the middle layer."""
    a, n, L = state["acts"], ids.shape[1], lm.n_layers
    layer, last = state["layer"], state["last"]
    weights = a["attn_weights"][layer][:, last].float().mean(0).clone()  # (n,) over heads
    weights[last] = -1
    key = int(weights.argmax())
    blocked = torch.zeros(n, dtype=torch.bool, device=a["attn_weights"].device)
    blocked[key] = True
    state["expected"] = update_from_weights(
        lm, layer, reweight(a["attn_weights"][layer][:, last], blocked, "renormalised"), a["values"][layer])
    rows = [[BlockAttention([layer], [last], [key])],
            [ZeroSublayer("mlp", [L - 1])],
            [ZeroSublayer("attn", [layer])],
            [PatchHidden(layer, range(n), a["resid"][layer])]]
    extra = {"uniform": ZeroSublayer("attn", [layer], variant="official"),
             "mlp_official": ZeroSublayer("mlp", [layer], variant="official")}
    state["rows"] = {name: len(rows) + i for i, name in enumerate(official)}
    rows += [[extra[name]] for name in official]
    state["hit"] = run(lm, ids, rows, capture=Capture(resid=True, attn=True, mlp=True))


def _block(lm, state) -> float:
    a, h, expected = state["acts"], state["hit"].acts, state["expected"]
    layer, last = state["layer"], state["last"]
    if _rel(a["attn"][layer, last].to(expected.device), expected) <= TOLERANCES.get(lm.dtype, 1e-4):
        return float("nan")  # the edge did not matter: a knockout doing nothing would pass unseen
    got = h["attn"][0, layer, last].float()
    return _rel(got, expected.to(got.device))


def _zero(lm, state) -> float:
    a, h, L, layer = state["acts"], state["hit"].acts, lm.n_layers, state["layer"]
    device = h["resid"].device
    zero_mlp = _rel(h["resid"][1, L], (a["resid"][L] - a["mlp"][L - 1].to(a["resid"].device)).to(device))
    attn_left = float(h["attn"][2, layer].float().norm() / a["attn"][layer].float().norm().clamp_min(1e-12))
    consistent = _rel(h["resid"][2, layer + 1], h["resid"][2, layer] + h["mlp"][2, layer].to(device))
    return max(zero_mlp, attn_left, consistent)


def _patch(state) -> float:
    logits = state["hit"].logits
    return _rel(logits[3, -1], state["clean"].logits[0, -1].to(logits.device))


def check_model(lm, raise_on_failure: bool = True) -> dict:
    """Run the invariants; returns the report, and raises :class:`ModelCheckError` naming the
    first failed invariant (unless ``raise_on_failure=False``)."""
    started = time.perf_counter()
    tolerance = TOLERANCES.get(lm.dtype, 1e-4)
    errors, problems = measure(lm)
    failed = [name for name, error in errors.items() if not error <= tolerance]  # NaN fails too
    report = {"status": "failed" if failed else "passed", "dtype": str(lm.dtype).replace("torch.", ""),
              "attention_access": getattr(lm.attention_access, "name", None), "tolerance": tolerance,
              "errors": {k: float(f"{v:.3g}") for k, v in errors.items()}, "failed": failed,
              "seconds": round(time.perf_counter() - started, 3)}
    if failed and raise_on_failure:
        name = failed[0]
        error = errors[name]
        if name in problems:
            what = f"measuring it raised {problems[name]}"
        elif error != error:
            what = ("the knockout did not change the reference (the clean attention was already uniform, or the MLP "
                    "did not matter)" if name in ("uniform", "mlp_official") else
                    "the blocked edge did not change the reference") + ", so the knockout could not be checked"
        else:
            what = f"measured relative error {error:.3g} > tolerance {tolerance:g}"
        raise ModelCheckError(
            f"Model check failed for {lm.name} (model_type {lm.config.model_type!r}, {report['dtype']}, "
            f"{lm.attn_implementation} attention reached through the {report['attention_access']} path): invariant {name!r}, "
            f"{what}. Registry field(s) to look at: {INVARIANT_FIELDS[name]}. All errors: {report['errors']}. "
            "To run anyway (the metadata will say the check was skipped), load with check=False.")
    return report


def capabilities(lm) -> dict[str, str]:
    """What runs on this model, read off the loaded model and its registry entry (the README's
    table of families is checked against this)."""
    interface = lm.attention_access.name == "interface"
    arch = lm.arch
    return {
        "attention reached": "interface" if interface else "hooks",
        "cached prefix": "yes" if lm.attention_access.prefix_cache else "no",
        "uniform attention knockout": "yes" if interface or arch.query else "refused",
        "official MLP knockout": "yes" if arch.mlp_out else "refused",
        "attention values": "yes" if interface or arch.value else "refused",
    }


def summary(report: dict | None) -> dict | None:
    """The part of a check report that goes into result metadata."""
    if report is None:
        return None
    return {k: v for k, v in report.items() if k in ("status", "reason", "tolerance", "errors", "failed",
                                                     "attention_access")}


__all__ = ["INVARIANT_FIELDS", "ModelCheckError", "TOLERANCES", "capabilities", "check_model", "measure", "summary"]
