"""``python -m utils.companion.gpu_check`` (``make gpu-check``): everything a first GPU should tell,
in one command of at most 8 minutes, printed as one table.

1. The dispatch, precision and device tests (``tests/test_dispatch.py``, ``tests/test_precision.py``,
   ``tests/test_models.py``) run under pytest with CUDA visible: pass/fail counts, stopped after
   ``--tests-limit`` seconds (the row says so) so that the sweeps below always get their time.
2. Notebooks 01-03's sweeps (the six of :mod:`utils.companion.bench`) for 20 facts on GPT-2 XL's
   shape with random weights (:mod:`utils.companion.bench_scale`), in fp32 and bf16: facts per
   second, peak GPU memory (``torch.cuda.max_memory_allocated``), host share, and the batch size
   ``"auto"`` chose.
3. CPU against CUDA: every sweep (so every intervention: attention knockouts, uniform-attention
   and zeroed sublayers, patching, blocked re-weighting, head shares) on a tiny random model,
   the largest difference of the numeric columns (fp32; must be below 1e-5).

``--dry`` runs the same code on the CPU with a tiny model and 2 facts (pytest only collects),
so that ``make test`` runs it and it cannot rot (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pandas as pd
import torch

from ..core import batching
from ..paths import PROJECT_ROOT
from ..runs.environment import host_load
from . import bench, bench_scale

DEVICE_TESTS = ["tests/test_dispatch.py", "tests/test_precision.py", "tests/test_models.py"]
TOLERANCE = 1e-5


TESTS_LIMIT_S = 240
"""The device tests' share of the 8 minutes: on this project's 2-core CPU the three files take 24 s
(68 tests); the limit is for a device where something hangs or crawls, not for the expected run."""


def device_tests(dry: bool, limit_s: float = TESTS_LIMIT_S) -> dict:
    """pytest on the device tests: its summary line and return code; a run past ``limit_s`` is
    stopped and reported as such (not ok), with the command that runs them on their own."""
    cmd = [sys.executable, "-m", "pytest", *DEVICE_TESTS, "-q", "-p", "no:randomly", "-x"]
    cmd += ["--collect-only"] if dry else []
    start = time.perf_counter()
    check = "device tests" + (" (collected)" if dry else "")
    try:
        done = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as stopped:
        out = stopped.stdout.decode(errors="replace") if isinstance(stopped.stdout, bytes) else (stopped.stdout or "")
        passed = out.count(".")
        return {"check": check, "result": f"stopped after {limit_s:.0f} s ({passed} passed so far); run them on their "
                f"own: python -m pytest {' '.join(DEVICE_TESTS)}", "ok": False, "seconds": time.perf_counter() - start}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"check": check, "result": lines[-1] if lines else done.stderr[-200:],
            "ok": done.returncode == 0, "seconds": time.perf_counter() - start}


def _reset_peak(device: str):
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None


def sweep_rates(config: str, dtype: torch.dtype, n_facts: int, device: str, tok) -> list[dict]:
    """Each sweep's rate on ``config`` converted to ``dtype``."""
    lm, _ = bench_scale.build(config, device, tok)
    lm.model.to(dtype)
    facts = bench_scale.random_weight_facts(lm, n_facts)
    auto = batching.resolve("auto", lm, max(f["n_tokens"] for f in facts["sink"]), cap=128)
    rows = []
    for sweep in bench.sweeps(lm, "auto"):
        sweep.reference = None
        _reset_peak(device)
        row = bench.measure(lm, sweep, facts[sweep.facts])
        rows.append({"check": f"{sweep.name} [{config} {str(dtype).removeprefix('torch.')}]",
                     "result": f"{row['batched_facts_per_s']:.2f} facts/s, host {row['host_share']:.0%}, "
                               f"auto batch {auto}" + (f", peak {_peak_gb(device):.2f} GB" if _peak_gb(device) else ""),
                     "ok": True, "seconds": row["batched_s"]})
    del lm
    return rows


def _numeric_diff(a: list[dict], b: list[dict]) -> float:
    left, right = pd.DataFrame(a), pd.DataFrame(b)
    assert list(left.columns) == list(right.columns) and len(left) == len(right)
    numeric = left.select_dtypes("number").columns
    diff = (left[numeric].astype(float) - right[numeric].astype(float)).abs().max().max()
    return 0.0 if pd.isna(diff) else float(diff)


def cpu_vs_device(device: str, tok) -> list[dict]:
    """Every sweep on the tiny random model on the CPU and on ``device``: the largest difference."""
    cpu, _ = bench_scale.build("tiny", "cpu", tok)
    other, _ = bench_scale.build("tiny", device, tok)
    other.model.load_state_dict(cpu.model.state_dict())
    facts = bench_scale.random_weight_facts(cpu, 2)
    rows = []
    for here, there in zip(bench.sweeps(cpu, 16), bench.sweeps(other, 16)):
        start = time.perf_counter()
        diff = max(_numeric_diff(here.batched(f), there.batched(f)) for f in facts[here.facts])
        rows.append({"check": f"cpu vs {device}: {here.name}", "result": f"max abs diff {diff:.1e}",
                     "ok": diff < TOLERANCE, "seconds": time.perf_counter() - start})
    return rows


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(prog="python -m utils.companion.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny model, 2 facts, pytest only collects")
    parser.add_argument("--n-facts", type=int, default=20)
    parser.add_argument("--tests-limit", type=float, default=TESTS_LIMIT_S, help="seconds for the device tests")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry else "cuda"
    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry for the CPU rehearsal")
    start = time.perf_counter()
    info = host_load()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    print(f"gpu-check on {name}; torch {torch.__version__}; host {info}", flush=True)
    tok = bench_scale.tokenizer()
    rows = [device_tests(args.dry, args.tests_limit)]
    config, n_facts = ("tiny", 2) if args.dry else ("gpt2-xl-shape", args.n_facts)
    for dtype in (torch.float32, torch.bfloat16):
        rows += sweep_rates(config, dtype, n_facts, device, tok)
    rows += cpu_vs_device(device, tok)
    table = pd.DataFrame(rows)
    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        print(table.to_string(index=False, formatters={"seconds": "{:.1f}".format}))
    print(f"total {time.perf_counter() - start:.0f} s; all ok: {bool(table.ok.all())}")
    return table


if __name__ == "__main__":
    main()
