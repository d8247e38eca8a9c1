"""``python -m utils.companion.bench_scale`` (``make bench-scale``): the sweeps on the paper's model
sizes, with random weights, on this machine's CPU.

GPT-2 XL and GPT-J have never run here; their cost per fact, their memory and the batch size
``"auto"`` picks for them can be measured without their weights, since the sweeps' cost depends
only on the shapes. The models are built offline from transformers' configs (no hub):

* ``tiny``: GPT-2, 4 layers, d = 64 (fp32);
* ``smollm2-135m`` and ``gemma-3-270m``: the embedded models themselves (fp32);
* ``gpt2-xl-shape``: GPT-2 XL's 48 layers, d = 1600, 25 heads, fp32 (~6.2 GB with its vocabulary);
* ``gptj-width-4l``: GPT-J's width (d = 4096, 16 heads, rotary dimension 64) with 4 of its 28
  layers, in bfloat16; ``s_per_fact_28l`` scales the measured time by 28 / 4 (an upper bound:
  the embedding and head are not per layer).

The random models use SmolLM2's tokenizer, and a vocabulary of its size (49,152, against GPT-2's
50,257 and GPT-J's 50,400: within 3% of the head's cost). Random-weight facts: a handful of the
project's prompts (``data/facts_small.json``) with the model's own prediction as the attribute,
which is all the sweeps read (token ids, subject positions, the predicted token); the
attributes rate has no attribute sets (it is timed, not meaningful).

Per configuration and sweep: seconds per fact, the process's peak resident memory since the
configuration was built (Linux's high-water mark, reset per configuration; ``rss_start_gb`` is what
the process held before, which the peak includes), the ratio to the per-example loop (01's sweeps,
on the configurations of ``--loop-on``), the ratio to the arithmetic floor (the FLOPs of the rows
the sweep actually computes, counted by ``torch.utils.flop_counter`` on one fact, over the machine's
rate of ``F.linear`` at the model's width measured at the start), and the batch size ``"auto"``
chose. The table is printed, and written to ``results/bench/scale.csv`` (with its ``.meta.json``:
parameters, package versions, commit, the host's cores and load at the start) and a plot of seconds
per fact against parameters only with ``--write`` (results/ is committed output); otherwise the plot
goes to a temporary folder.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import transformers
from matplotlib.figure import Figure
from torch.utils.flop_counter import FlopCounterMode

from ..core import batching
from ..core.models import load_model, wrap_model
from ..core.sources import convert_embedded
from ..paper.facts import as_facts, load_facts, predict_next_token, tokenize_facts
from ..paths import output_root
from ..runs.environment import host_load
from ..runs.results import provenance, write_table
from . import bench

VOCAB_FROM = "smollm2-135m"
GPTJ_LAYERS = 4


def _random_configs(vocab: int) -> dict:
    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2)
    return {
        "tiny": (transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=256, **common), torch.float32, 4),
        "gpt2-xl-shape": (transformers.GPT2Config(n_layer=48, n_embd=1600, n_head=25, n_positions=1024, **common),
                          torch.float32, 48),
        "gptj-width-4l": (transformers.GPTJConfig(n_layer=GPTJ_LAYERS, n_embd=4096, n_head=16, rotary_dim=64,
                                                  n_positions=2048, **common), torch.bfloat16, 28),
    }


CONFIGS = ("tiny", "smollm2-135m", "gemma-3-270m", "gpt2-xl-shape", "gptj-width-4l")
RANDOM = ("tiny", "gpt2-xl-shape", "gptj-width-4l")


def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(convert_embedded(VOCAB_FROM))


def build(name: str, device: str = "cpu", tok=None):
    """A LoadedModel for a configuration name, and the layer count its time is scaled to."""
    if name not in RANDOM:
        return load_model(name, device=device, dtype="float32"), None
    tok = tok or tokenizer()
    config, dtype, paper_layers = _random_configs(len(tok))[name]
    torch.manual_seed(0)
    attn = "eager" if config.model_type == "gptj" else "sdpa"
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)
    model = model.eval().requires_grad_(False)
    lm = wrap_model(model, tok, name=name, weights_id=f"random-{name}-seed0", check=name == "tiny")
    return lm, paper_layers


def random_weight_facts(lm, n_facts: int) -> dict[str, list]:
    """The project's first prompts, each with the model's prediction as its attribute (see the
    module docstring), tokenized with and without the sink token, as :func:`bench.fact_lists`."""
    facts = load_facts("small").head(max(n_facts * 2, 4))
    out = {}
    for kind, prepend in (("sink", True if lm.sink_token_id is not None else None), ("plain", None)):
        prepared, _ = tokenize_facts(lm, facts, prepend)
        evaluated = predict_next_token(lm, prepared, progress=False)
        evaluated["attribute_token"] = evaluated["pred_token_id"]
        evaluated["known"] = True
        out[kind] = as_facts(evaluated.head(n_facts))
    out["official"] = out["plain"]
    return out


def matmul_gflops(size: int = 1024, dtype=torch.float32, device: str = "cpu", seconds: float = 1.0,
                  rows: int = 512) -> float:
    """The machine's measured rate of the product the models run, ``F.linear`` of ``rows`` tokens
    through a ``size`` x ``size`` weight (the floor's denominator). A square ``a @ b`` is not that
    product: in bfloat16 on a CPU without bf16 units it takes a path about 20 times slower than
    ``F.linear``'s, which would put a bf16 sweep "below its floor"."""
    x = torch.randn(rows, size, dtype=dtype, device=device)
    w = torch.randn(size, size, dtype=dtype, device=device)
    torch.nn.functional.linear(x, w)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.nn.functional.linear(x, w)
        n += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * rows * size * size * n / (time.perf_counter() - start) / 1e9


def flops_of(fn, fact) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(fact)
    return float(counter.get_total_flops())


def peak_rss_gb() -> float:
    """The peak resident memory since :func:`reset_peak_rss` (Linux's VmHWM), else since the start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def reset_peak_rss() -> float:
    """Frees what the last configuration left and restarts the peak at the current resident memory
    (``/proc/self/clear_refs``), so that each configuration's peak is its own, not the largest so
    far; returns that starting memory (GB), which the peak includes."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return peak_rss_gb()


def scale_rows(name: str, n_facts: int, loop: bool, rates: dict, tok=None, device: str = "cpu",
               only: str = "") -> list[dict]:
    rss_start = reset_peak_rss()
    lm, paper_layers = build(name, device, tok)
    facts = random_weight_facts(lm, n_facts)
    n_tokens = max(f["n_tokens"] for f in facts["sink"])
    auto = batching.resolve("auto", lm, n_tokens, cap=128)
    params = sum(p.numel() for p in lm.model.parameters())
    per_layer = sum(p.numel() for p in lm.layers[0].parameters())
    params_paper = params + ((paper_layers or lm.n_layers) - lm.n_layers) * per_layer  # GPT-J: its 28 layers
    width = min(int(lm.model.get_input_embeddings().weight.shape[-1]), 4096)
    rate = rates.setdefault((lm.dtype, width), matmul_gflops(width, dtype=lm.dtype, device=device))
    rows = []
    for sweep in bench.sweeps(lm, "auto"):
        if only not in sweep.name:
            continue
        if not loop:
            sweep.reference = None
        row = bench.measure(lm, sweep, facts[sweep.facts], profile_host=False)
        s_per_fact = row["batched_s"] / row["facts"]
        floor = flops_of(sweep.batched, facts[sweep.facts][-1]) / (rate * 1e9)
        rows.append({"config": name, "params_m": params / 1e6, "params_m_paper": params_paper / 1e6,
                     "dtype": str(lm.dtype).removeprefix("torch."), "layers": lm.n_layers,
                     "paper_layers": paper_layers or lm.n_layers, "sweep": sweep.name, "s_per_fact": s_per_fact,
                     "s_per_fact_scaled": s_per_fact * paper_layers / lm.n_layers if paper_layers else None,
                     "peak_rss_gb": peak_rss_gb(), "rss_start_gb": rss_start, "loop_ratio": row.get("ratio"),
                     "floor_ratio": s_per_fact / floor if floor else None, "auto_batch": auto,
                     "matmul_gflops": rate})
        print(rows[-1], flush=True)
    del lm
    return rows


def plot(table: pd.DataFrame, path: Path) -> Path:
    """Seconds per fact against parameters, one line per sweep; GPT-J's 4-layer time scaled to its
    28 layers is drawn beside it, hollow (an upper bound), and each configuration is named."""
    fig = Figure(figsize=(7, 4.5))  # no pyplot: no backend, nothing left open
    ax = fig.subplots()
    for sweep, group in table.groupby("sweep", sort=False):
        group = group.sort_values("params_m")
        line, = ax.plot(group.params_m, group.s_per_fact, marker="o", label=sweep)
        scaled = group[group.s_per_fact_scaled.notna() & (group.s_per_fact_scaled > group.s_per_fact * 1.01)]
        ax.scatter(scaled.params_m_paper, scaled.s_per_fact_scaled,
                   facecolors="none", edgecolors=line.get_color(), zorder=3)
    for config, group in table.groupby("config", sort=False):
        row = group.iloc[group.s_per_fact.argmax()]
        ax.annotate(config, (row.params_m, row.s_per_fact), textcoords="offset points", xytext=(0, 8), fontsize=7,
                    ha="center")
    ax.set(xscale="log", yscale="log", xlabel="parameters (millions; hollow: GPT-J's 28 layers, scaled from 4)",
           ylabel="seconds per fact (CPU)", title=f"Sweeps' cost per fact against model size "
           f"({table.attrs.get('host_at_start', {}).get('cpus_usable', '?')} CPU cores)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python -m utils.companion.bench_scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--n-facts", type=int, default=3)
    parser.add_argument("--loop-on", default="tiny,smollm2-135m", help="configurations timed against the loop")
    parser.add_argument("--only", default="", help="only the sweeps whose name contains this")
    parser.add_argument("--write", action="store_true", help="write results/bench/scale.csv and scale.png")
    args = parser.parse_args(argv)
    start = host_load()
    print(f"host at start: {start}", flush=True)
    tok, rates, rows = tokenizer(), {}, []
    for name in args.configs.split(","):
        rows += scale_rows(name, args.n_facts, name in args.loop_on.split(","), rates, tok, only=args.only)
    table = pd.DataFrame(rows)
    table.attrs["host_at_start"] = start
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    folder = output_root() / "results" / "bench" if args.write else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    if args.write:
        folder.mkdir(parents=True, exist_ok=True)
        params = {"configs": args.configs, "n_facts": args.n_facts, "loop_on": args.loop_on, "only": args.only,
                  "vocab_from": VOCAB_FROM, "gptj_layers": GPTJ_LAYERS}
        write_table(table, folder, "scale", {"params": params, **provenance()})
    print(f"plot: {plot(table, folder / 'scale.png')}")
    return table


if __name__ == "__main__":
    main()
