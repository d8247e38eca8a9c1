"""make bench: every sweep gets a row, the ratio is printed only after the batched sweep equals
the loop (a perturbed sweep is refused), and tables record the cores and load at their start."""

import pytest

from utils.companion import bench
from utils.runs import environment
from utils.runs.results import provenance


def test_bench_rows_and_the_equality_guard(smollm, monkeypatch, capsys):
    monkeypatch.setattr(bench, "load_model", lambda *a, **k: smollm)
    table = bench.main(["--n-facts", "1", "--only", "sink comparison"])
    out = capsys.readouterr().out
    assert "load average" in out and "cpus" in out
    row = table.iloc[0]
    assert row.max_abs_diff < bench.TOLERANCE and row.ratio > 1 and 0 <= row.host_share < 1
    assert table.attrs["host_at_start"]["cpu_count"] >= 1

    # the guard: a batched sweep 1e-4 off the loop gets no ratio
    fact = {"known_id": 0, "input_ids": smollm.encode("Michael Jordan plays the sport of", prepend_sink=True),
            "subject_positions": [1, 2], "subject_first": 1, "has_sink": True}
    fact["n_tokens"] = len(fact["input_ids"])
    sweep = bench.sweeps(smollm)[1]
    real = sweep.batched
    sweep.batched = lambda f: [{**r, "p_new": r["p_new"] + 1e-4} for r in real(f)]
    with pytest.raises(AssertionError, match="differs from the loop"):
        bench.measure(smollm, sweep, [fact], profile_host=False)


def test_every_notebook_sweep_is_benchmarked(smollm):
    names = [s.name for s in bench.sweeps(smollm)]
    assert len(names) == 6 and [n[:2] for n in names] == ["01", "01", "02", "02", "03", "03"]


def test_tables_record_cores_and_load_at_start():
    meta = provenance()["host_at_start"]
    assert meta is environment.AT_START
    assert meta["cpu_count"] >= meta["cpus_usable"] >= 1 and len(meta["load_avg"]) == 3


def test_the_profilers_start_and_stop_lines_are_held_back_and_the_rest_kept(capfd):
    """make bench's table is not interleaved with Kineto's "USDT ... profiler_start" lines, and
    whatever else the profiled code writes to stderr still reaches it."""
    import os

    import torch
    from torch.profiler import ProfilerActivity, profile

    with bench.quiet_profiler_lines(), profile(activities=[ProfilerActivity.CPU]):
        torch.ones(8) @ torch.ones(8)
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "a real warning" in err and "USDT" not in err and "profiler_start" not in err
