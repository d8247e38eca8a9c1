"""``batch_size="auto"``: how many rows one forward pass may take, from the device's free memory.

A sweep's rows are independent, so the batch size changes the speed, never the numbers; what
limits it is memory. A fixed 128 is right for a 135M-parameter model on a laptop, too many for
GPT-J on a small GPU and too few for a large one. ``"auto"`` asks the device how much memory is
free (``torch.cuda.mem_get_info`` on CUDA; the host's available memory, psutil's
``virtual_memory().available``, on the CPU) and divides it by what one row costs.

What one row costs (bytes), for a model of ``L`` layers, width ``d``, MLP width ``f``, ``h``
query heads, ``h_kv`` key-value heads of size ``a``, vocabulary ``V``, a prompt of ``n``
tokens and ``b`` bytes per element of the model's dtype:

* a knockout row that recomputes only the last token (:func:`utils.core.forward.run_last_position`,
  ``recompute="last"``) holds its own copy of the cached prefix - each layer's keys and values
  concatenated with the new token's, ``2 L n h_kv a b`` - plus the transient activations of
  one layer for one token, ``(6 d + 2 f + 2 h n) b`` (residual, norms, q/k/v/output, the MLP's
  two hidden tensors, scores and probabilities), plus the head's logits and their fp32
  softmax, ``(b + 8) V``;
* a row that recomputes the whole prompt (``recompute="all"``: the known set's predictions,
  a clean pass) holds the transient activations of one layer for ``n`` tokens,
  ``n (6 d + 2 f) b + 2 h n^2 b``, the keys and values it keeps for the cache-free pass of one
  layer, ``2 n h_kv a b``, and the logits of the last token, ``(b + 8) V``.

The batch is ``floor(safety * free / row)`` rows (``safety`` = 0.5: the allocator's
fragmentation, the weights' own transients and whatever else runs leave room for error), at
least 1 and at most ``cap``. The cap is the sweep's tuned fixed value on the host (so where
memory allows, "auto" runs exactly the batches the committed tables were made with) and
``CUDA_CAP_FACTOR`` times it on a GPU, where wide batches pay.

A formula can still be wrong (a family that materializes more, another process taking
memory), so :func:`in_batches` halves the batch on an out-of-memory error and retries the
same rows, instead of failing a sweep of hours; the smaller size is kept for the rest of the
sweep. Rows are cut into chunks in the same order either way, so a shrunk run gives the table
a run with the smaller size as an int gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import psutil
import torch

SAFETY = 0.5
"""Share of the free memory the rows may take."""
CUDA_CAP_FACTOR = 8
"""A GPU's cap, in multiples of the sweep's host cap."""
CEILING = "batching.ceiling"
"""``lm.cache`` key of the size an out-of-memory error shrank "auto" to: later facts start there."""


def free_memory(device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the host's available memory (what the
    kernel could give without swapping: MemAvailable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


def model_shape(lm) -> dict:
    """The dimensions the formula needs, read from the model's config (any family)."""
    config = lm.text_config
    d = config.hidden_size
    f = (getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None)
         or getattr(config, "n_inner", None) or 4 * d)
    return {"layers": lm.n_layers, "width": d, "mlp": f, "heads": lm.n_heads, "kv_heads": lm.n_kv_heads,
            "head_dim": lm.head_dim, "vocab": config.vocab_size,
            "bytes": torch.empty((), dtype=lm.dtype).element_size()}


def row_bytes(shape: dict, n_tokens: int, recompute: str = "last") -> int:
    """Bytes one row takes (the module docstring's formula)."""
    L, d, f, h = shape["layers"], shape["width"], shape["mlp"], shape["heads"]
    kv, b, V, n = shape["kv_heads"] * shape["head_dim"], shape["bytes"], shape["vocab"], n_tokens
    logits = (b + 8) * V
    if recompute == "last":
        return 2 * L * n * kv * b + (6 * d + 2 * f + 2 * h * n) * b + logits
    if recompute == "all":
        return n * (6 * d + 2 * f) * b + 2 * h * n * n * b + 2 * n * kv * b + logits
    raise ValueError(f"recompute must be 'last' or 'all', not {recompute!r}")


def auto_batch_size(lm, n_tokens: int, cap: int, recompute: str = "last", free: int | None = None) -> int:
    """The largest batch of rows that fits ``SAFETY`` of the device's free memory, 1 .. cap
    (times ``CUDA_CAP_FACTOR`` on a GPU)."""
    device = lm.device
    if device.type == "cuda":
        cap *= CUDA_CAP_FACTOR
    free = free_memory(device) if free is None else free
    fits = math.floor(SAFETY * free / row_bytes(model_shape(lm), n_tokens, recompute))
    return max(1, min(cap, fits, lm.cache.get(CEILING, cap)))


def resolve(batch_size: int | str, lm, n_tokens: int, cap: int, recompute: str = "last") -> int:
    """``batch_size`` as rows per pass: an int as given, ``"auto"`` from free memory."""
    if batch_size == "auto":
        return auto_batch_size(lm, n_tokens, cap, recompute)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto', not {batch_size!r}")
    return batch_size


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's ``torch.OutOfMemoryError``, an older torch's RuntimeError "CUDA out of memory",
    the host allocator's RuntimeError "can't allocate memory", or Python's MemoryError."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(error, (oom, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _release():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def in_batches(items: Sequence, batch_size: int, run: Callable[[Sequence], list], lm=None) -> list:
    """``run`` over consecutive chunks of ``items`` of ``batch_size`` (the concatenated
    results); on an out-of-memory error the chunk is retried at half the size, which is kept
    for the rest (and, with ``lm``, remembered as the ceiling of later "auto" sizes). At one
    row an out-of-memory error is raised: nothing smaller can fit."""
    out, start, size = [], 0, batch_size
    while start < len(items):
        chunk = items[start:start + size]
        try:
            result = run(chunk)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error) or len(chunk) == 1:
                raise
            del error
            _release()
            size = max(1, len(chunk) // 2)  # half of what failed (a short last chunk may be under size)
            if lm is not None:
                lm.cache[CEILING] = size
            continue
        out.extend(result)
        start += len(chunk)
    return out


__all__ = ["CEILING", "CUDA_CAP_FACTOR", "SAFETY", "auto_batch_size", "free_memory", "in_batches",
           "is_out_of_memory", "model_shape", "resolve", "row_bytes"]
