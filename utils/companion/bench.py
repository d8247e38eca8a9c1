"""``python -m utils.companion.bench``: the batched attention-knockout sweep against the official code's
per-example loop, on the same model, facts and machine, in one run.

Both compute the paper's information-flow configurations (subject, non-subject and last
position, every window centre) for the first known facts of the model. The loop runs one
configuration per forward pass of the whole prompt, batch 1, as the official code does;
the sweep runs them as rows of a few batches that only recompute the last token. The two
are timed fact by fact, alternately, so that a change in the machine's load affects both
alike. The probabilities must agree (fp32) before a speedup is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from unittest import mock

import torch

from ..core import forward
from ..core.models import load_model
from ..paper.facts import as_facts
from ..paper.information_flow import (
    PAPER_SETS,
    FlowSettings,
    default_window,
    flow_of_fact,
    flow_of_fact_unbatched,
    known_facts,
)

TOLERANCE = 1e-5


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(prog="python -m utils.companion.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-facts", type=int, default=50, help="first n known facts of known_1000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model(args.model, device=args.device, dtype="float32")
    k = default_window(lm.n_layers)
    facts = as_facts(known_facts(lm, "known_1000", None, "prepend").head(args.n_facts))
    print(f"{lm.name} fp32 on {args.device}: {len(facts)} known facts, {len(PAPER_SETS)} source sets x "
          f"{lm.n_layers} window centres (k = {k}) = {len(PAPER_SETS) * lm.n_layers} configurations per fact")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads; {_load()} at start")

    settings = FlowSettings(k, sets=PAPER_SETS, batch_size=args.batch_size)

    def one(fact, batched: bool):
        return (flow_of_fact if batched else flow_of_fact_unbatched)(lm, fact, settings)

    host_seconds = [0.0]
    building = forward.intervene

    def timed_intervene(*args, **kwargs):  # the time spent building interventions on the host
        start = time.perf_counter()
        try:
            return building(*args, **kwargs)
        finally:
            host_seconds[0] += time.perf_counter() - start

    one(facts[0], True), one(facts[0], False)  # warm-up, untimed
    seconds = {False: 0.0, True: 0.0}
    host = 0.0
    max_diff = 0.0
    for fact in facts:
        results = {}
        for batched in (False, True):
            start, host_start = time.perf_counter(), host_seconds[0]
            with mock.patch.object(forward, "intervene", timed_intervene):
                results[batched] = one(fact, batched)
            seconds[batched] += time.perf_counter() - start
            if batched:
                host += host_seconds[0] - host_start
        assert [(r["source"], r["layer"]) for r in results[True]] == [(r["source"], r["layer"]) for r in results[False]]
        max_diff = max([max_diff] + [abs(a[key] - b[key]) for a, b in zip(results[True], results[False])
                                     for key in ("p_new", "p_base")])

    print(f"{_load()} at end")
    print(f"per-example loop (batch 1): {seconds[False]:.1f} s, {len(facts) / seconds[False]:.3f} facts/s")
    print(f"batched sweep (batch {args.batch_size}): {seconds[True]:.1f} s, {len(facts) / seconds[True]:.3f} facts/s")
    print(f"max abs difference of probabilities: {max_diff:.2e}")
    print(f"building interventions on the host (masks, hooks): {host:.2f} s, "
          f"{100 * host / seconds[True]:.1f}% of the batched sweep")
    assert max_diff < TOLERANCE, f"the batched sweep differs from the loop by {max_diff:.2e} (> {TOLERANCE})"
    ratio = seconds[False] / seconds[True]
    print(f"speedup: {ratio:.1f}x")
    return ratio


if __name__ == "__main__":
    main()
