"""make bench-scale on its smallest configuration: every sweep gets a row with its seconds per
fact, its peak memory (this configuration's own, not the process's so far), the ratio to the
loop and to the arithmetic floor, and the batch size "auto" chose; the plot is written."""

import numpy as np

from utils.companion import bench_scale


def test_tiny_configuration_gives_every_sweep_a_row(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_scale.tempfile, "mkdtemp", lambda prefix="": str(tmp_path))
    table = bench_scale.main(["--configs", "tiny", "--n-facts", "1"])
    assert len(table) == 6 and set(table.config) == {"tiny"}
    assert (table.s_per_fact > 0).all() and (table.floor_ratio > 1).all()
    assert table.auto_batch.between(1, 128).all()
    assert (table.loop_ratio[table.sweep.str.startswith("01")] > 0).all()
    assert (table.peak_rss_gb >= table.rss_start_gb).all()
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_the_peak_memory_restarts_per_configuration():
    """A check that can fail: without the reset, a large allocation freed before the next
    configuration would still count as that configuration's peak."""
    before = bench_scale.reset_peak_rss()
    big = np.ones(2 ** 27)  # 1 GiB
    big[::4096] = 2.0
    assert bench_scale.peak_rss_gb() > before + 0.9
    del big
    after = bench_scale.reset_peak_rss()
    assert after < before + 0.5 and bench_scale.peak_rss_gb() < before + 0.5


def test_the_written_table_carries_its_provenance(tmp_path, monkeypatch):
    from utils.runs.results import load_meta

    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(tmp_path))
    bench_scale.main(["--configs", "tiny", "--n-facts", "1", "--only", "patching", "--write"])
    meta = load_meta("scale", "bench", tmp_path)
    assert meta["params"]["configs"] == "tiny" and meta["versions"]["torch"] and meta["host_at_start"]["cpu_count"]
    assert (tmp_path / "results" / "bench" / "scale.png").stat().st_size > 0
