"""What the exercise checkers share: the model and the small facts they run on (loaded once per
process), calling a student's function, and reporting a pass or a failure with its hint."""

from __future__ import annotations

import functools

import torch

from ...core.models import load_model
from ...paper.facts import build_known_set, load_facts, tokenize_facts

MODEL = "smollm2-135m"


class ExerciseFailed(AssertionError):
    """The student's function gives a wrong answer (the message says where and why)."""


class NotImplementedYet(ExerciseFailed):
    """The exercise's stub still raises NotImplementedError."""


# --------------------------------------------------------------------------------------
# Shared helpers: the model, the facts, calling and reporting


@functools.cache
def _default_model():
    return load_model(MODEL, device="cpu", dtype="float32")


def model(lm=None):
    """The model the checkers use: ``lm``, or smollm2-135m (loaded once per process)."""
    return lm if lm is not None else _default_model()


_CACHE: dict = {}


def _cached(key, compute):
    if key not in _CACHE:
        _CACHE[key] = compute()
    return _CACHE[key]


def small_facts(lm, prepend_sink: bool | None = None) -> list[dict]:
    """The small facts tokenized for ``lm`` (subject positions, sink flag), as dicts."""
    return _cached(("facts", id(lm), prepend_sink),
                   lambda: tokenize_facts(lm, load_facts("small"), prepend_sink)[0].to_dict("records"))


def small_known_facts(lm, prepend_sink: bool | None = None) -> list[dict]:
    """The small facts ``lm`` knows (its top-1 next token is the attribute's first token)."""
    def compute():
        table = build_known_set(lm, load_facts("small"), prepend_sink, progress=False)
        return table[table.known].to_dict("records")

    return _cached(("known", id(lm), prepend_sink), compute)


def _tokens(lm, ids) -> list[str]:
    return [lm.tokenizer.decode([int(i)]) for i in ids]


def _show(value, limit: int = 12) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= limit:
            return repr([round(x, 4) for x in value.flatten().tolist()])
        head = ", ".join(f"{x:.4f}" for x in value.flatten()[:4].tolist())
        return f"tensor of shape {tuple(value.shape)}: [{head}, ...], norm {value.float().norm():.4f}"
    if isinstance(value, (list, tuple)) and len(value) > limit:
        return f"{list(value[:limit])} ... ({len(value)} items)"
    return repr(value)


def _call(exercise: str, fn, *args):
    """The student's ``fn(*args)``; a stub or a crash becomes the checker's own failure."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise NotImplementedYet(f"{exercise}: `{fn.__name__}` is not implemented yet. Write it in the cell "
                                "above (replace `raise NotImplementedError`), run that cell, then this one.") from None
    except Exception as err:
        raise ExerciseFailed(f"{exercise}: `{fn.__name__}` raised {type(err).__name__}: {err}\n"
                             "(the traceback above points to the line)") from err


def _fail(exercise: str, case: str, expected, got, hint: str = "") -> None:
    lines = [f"{exercise}: wrong answer for {case}", f"  expected: {_show(expected)}", f"  got:      {_show(got)}"]
    if hint:
        lines.append(f"  hint: {hint}")
    raise ExerciseFailed("\n".join(lines))


def _passed(exercise: str, what: str) -> None:
    print(f"PASSED {exercise}: {what}")


def _as_tensor(exercise: str, value, shape, what: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value).detach().float().cpu()
    except Exception:
        raise ExerciseFailed(f"{exercise}: expected {what} (a tensor), got {type(value).__name__}") from None
    if tuple(t.shape) != tuple(shape):
        raise ExerciseFailed(f"{exercise}: expected {what} of shape {tuple(shape)}, got shape {tuple(t.shape)}")
    return t


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    a, b = a.float().cpu(), b.float().cpu()
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol))


# --------------------------------------------------------------------------------------
# 00 · The model and the facts it knows


# --------------------------------------------------------------------------------------
# 01 · Information flow


# --------------------------------------------------------------------------------------
# 02 · Subject enrichment


# --------------------------------------------------------------------------------------
# 03 · Attribute extraction
