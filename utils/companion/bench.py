"""``python -m utils.companion.bench`` (``make bench``): every notebook sweep's rate, in one run.

One table, a row per sweep the notebooks run over the known facts:

* 01 main: the attention knockouts of the five source sets with the sink token prepended
  (notebook 01's configuration), and 01 sink comparison: the paper's three sets with the official
  code's tokens and sets;
* 02 attributes rate (the projections of every position and layer) and 02 sublayer knockouts
  (MLP / attention windows zeroed, read at the representation layer);
* 03 extraction layers (every measure of a fact's clean pass, blocked attention included) and
  03 patching (the input of each layer patched from other layers).

For each: facts per second of the batched code the notebooks run; where an unbatched reference
exists (the official code's per-example loop, one whole-prompt pass per configuration: both 01
sweeps), its rate and the ratio, reported only after the two are asserted equal to 1e-5
(fp32). The two are timed fact by fact, alternately, so that a change of the machine's load
affects both alike; the ratio is the only figure that transfers to another machine. The host
share is the part of the batched sweep's wall time spent outside torch's operators (Python,
hooks, building masks), measured on one extra fact under ``torch.profiler``: on a CPU the sum of
the operators' self times, on a GPU that of the kernels, against the wall time.

The facts are the first known facts of the model in the project's 50-fact set (``--dataset``
takes known_1000 or a path); the header records the cores and the load at the start, since a
rate means little without them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from ..core.models import load_model
from ..paper import enrichment, extraction
from ..paper.facts import as_facts, build_known_set, known_only, load_facts
from ..paper.information_flow import (
    PAPER_SETS,
    SOURCE_SETS,
    FlowSettings,
    default_window,
    flow_of_fact,
    flow_of_fact_unbatched,
)
from ..runs.environment import host_load

TOLERANCE = 1e-5
DEFAULT_MODEL = os.environ.get("BENCH_MODEL", "gemma-3-270m")


@dataclass
class Sweep:
    name: str
    facts: str
    """Which fact list it runs on: "sink" (sink token prepended) or "official" (tokenized as the tokenizer does)."""
    batched: Callable
    reference: Callable | None = None
    """The unbatched reference (same rows), or None where the notebooks have none."""


def _flow_max_diff(a: list[dict], b: list[dict]) -> float:
    assert [(r["source"], r["layer"]) for r in a] == [(r["source"], r["layer"]) for r in b]
    return max([0.0] + [abs(x[key] - y[key]) for x, y in zip(a, b) for key in ("p_new", "p_base")])


def sweeps(lm, batch_size: int | str = "auto") -> list[Sweep]:
    """The notebooks' sweeps as functions of one fact, with their notebook settings."""
    k = default_window(lm.n_layers)
    main = FlowSettings(k, "prepend", SOURCE_SETS, batch_size)
    official = FlowSettings(k, "official", PAPER_SETS, batch_size)
    settings = enrichment.Settings()
    sources = extraction.scaled_layers(lm.n_layers)
    return [
        Sweep("01 main (5 sets, sink prepended)", "sink", lambda f: flow_of_fact(lm, f, main),
              lambda f: flow_of_fact_unbatched(lm, f, main)),
        Sweep("01 sink comparison (3 sets, official)", "official", lambda f: flow_of_fact(lm, f, official),
              lambda f: flow_of_fact_unbatched(lm, f, official)),
        Sweep("02 attributes rate", "plain", lambda f: enrichment.enrichment_rows(lm, f, None, settings)),
        Sweep("02 sublayer knockouts", "plain", lambda f: enrichment.knockout_rows(lm, f, None, "zero", settings)),
        Sweep("03 extraction layers", "plain", lambda f: extraction.extraction_rows(lm, f, "paper", False)),
        Sweep("03 patching", "plain", lambda f: extraction.patching_rows(lm, f, sources, "paper", False)),
    ]


def fact_lists(lm, dataset: str, n_facts: int) -> dict[str, list]:
    """The first ``n_facts`` known facts, tokenized as each sweep's notebook does: with the sink
    token prepended (01 main), as the tokenizer does (01 sink comparison; 02 and 03, which
    reuse notebook 00's known set). Evaluated here, never read from or written to results/."""
    facts = load_facts(dataset).head(max(10, 10 * n_facts))  # enough for n known facts at a 10% known rate
    adds_sink = lm.sink_token_id is not None and lm.encode("x")[0] == lm.sink_token_id
    out = {}
    for kind, prepend in (("sink", None if adds_sink else True), ("plain", None)):
        table = known_only(build_known_set(lm, facts, prepend, progress=False), lm.name)
        out[kind] = as_facts(table.head(n_facts))
    out["official"] = out["plain"]
    return out


KINETO_NOISE = ("USDT:", "STAGE:")
"""The prefixes of the lines the profiler's C++ side (Kineto) writes to stderr at every start and
stop, whatever its log level: two per sweep, in the middle of the table."""


@contextlib.contextmanager
def quiet_profiler_lines():
    """Holds file descriptor 2 in a temporary file while the profiler runs, then writes back every
    line that is not Kineto's start/stop notice (a warning or an error is kept, in order)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(KINETO_NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def host_share(lm, fn: Callable, fact) -> float:
    """Share of ``fn(fact)``'s wall time outside torch's operators (see the module docstring)."""
    cuda = lm.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with quiet_profiler_lines(), profile(activities=activities) as prof:
        start = time.perf_counter()
        fn(fact)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    if cuda:
        busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    else:
        busy = sum(e.self_cpu_time_total for e in events)
    return max(0.0, 1 - busy / 1e6 / wall)


def _sync(lm):
    if lm.device.type == "cuda":
        torch.cuda.synchronize()


def measure(lm, sweep: Sweep, facts: list, profile_host: bool = True) -> dict:
    """One sweep's row: facts/s batched (and unbatched, alternately per fact, after a warm-up
    of each), the largest difference to the reference, the host share."""
    sweep.batched(facts[0])
    if sweep.reference:
        sweep.reference(facts[0])
    seconds = {"batched": 0.0, "reference": 0.0}
    max_diff = 0.0
    for fact in facts:
        results = {}
        for kind in ("reference", "batched") if sweep.reference else ("batched",):
            fn = sweep.reference if kind == "reference" else sweep.batched
            _sync(lm)
            start = time.perf_counter()
            results[kind] = fn(fact)
            _sync(lm)
            seconds[kind] += time.perf_counter() - start
        if sweep.reference:
            max_diff = max(max_diff, _flow_max_diff(results["batched"], results["reference"]))
    row = {"sweep": sweep.name, "facts": len(facts), "batched_s": seconds["batched"],
           "batched_facts_per_s": len(facts) / seconds["batched"]}
    if sweep.reference:
        assert max_diff < TOLERANCE, f"{sweep.name}: batched differs from the loop by {max_diff:.2e} (> {TOLERANCE})"
        row.update(unbatched_facts_per_s=len(facts) / seconds["reference"], max_abs_diff=max_diff,
                   ratio=seconds["reference"] / seconds["batched"])
    if profile_host:
        row["host_share"] = host_share(lm, sweep.batched, facts[-1])
    return row


def header(lm, device: str, start_load: dict) -> str:
    return (f"{lm.name} {str(lm.dtype).removeprefix('torch.')} on {device}; machine {platform.machine()}, "
            f"{start_load['cpu_count']} cpus ({start_load['cpus_usable']} usable), load average "
            f"{start_load['load_avg']} at start; torch {torch.__version__} with {torch.get_num_threads()} threads")


def format_table(rows: list[dict]) -> str:
    table = pd.DataFrame(rows).set_index("sweep")
    formats = {"batched_s": "{:.2f}".format, "batched_facts_per_s": "{:.3f}".format,
               "unbatched_facts_per_s": "{:.3f}".format, "max_abs_diff": "{:.1e}".format,
               "ratio": "{:.1f}x".format, "host_share": "{:.0%}".format}
    for column, fmt in formats.items():
        if column in table:
            table[column] = [("-" if pd.isna(v) else fmt(v)) for v in table[column]]
    return table.to_string()


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python -m utils.companion.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: $BENCH_MODEL or gemma-3-270m "
                        "(smollm2-135m for a quicker run)")
    parser.add_argument("--n-facts", type=int, default=5, help="known facts per sweep (default 5)")
    parser.add_argument("--dataset", default="small", help="small (default), known_1000 or a path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", default="auto", help='"auto" (default, as the notebooks) or an int')
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", default="", help="run only the sweeps whose name contains this")
    args = parser.parse_args(argv)
    start_load = host_load()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)

    lm = load_model(args.model, device=args.device, dtype="float32")
    facts = fact_lists(lm, args.dataset, args.n_facts)
    print(header(lm, args.device, start_load))
    rows = [measure(lm, sweep, facts[sweep.facts]) for sweep in sweeps(lm, batch_size) if args.only in sweep.name]
    print(format_table(rows))
    print(f"load average {host_load()['load_avg']} at end; ratio = unbatched seconds / batched seconds, "
          f"alternating per fact; batched equal to the loop to {TOLERANCE:g} before a ratio is printed")
    table = pd.DataFrame(rows)
    table.attrs.update(model=lm.name, device=args.device, host_at_start=start_load)
    return table


if __name__ == "__main__":
    main()
