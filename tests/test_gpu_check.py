"""make gpu-check rehearsed on the CPU (--dry: a tiny random model, 2 facts), so that the one
command meant for a first GPU runs every code path in every `make test` and cannot rot."""

import os
import time

from utils.companion import gpu_check


def test_gpu_check_dry_run_prints_one_table_of_passing_checks(capsys):
    # 60 s on a quiet machine; a shared one gets its load's share (measured: 280 s at load 18 on 2 cores)
    limit = 60 * max(1.0, os.getloadavg()[0] / os.cpu_count())
    start = time.perf_counter()
    table = gpu_check.main(["--dry"])
    out = capsys.readouterr().out
    assert "all ok: True" in out
    assert table.ok.all(), table[~table.ok]
    sweeps = [c for c in table.check if c.startswith(("01", "02", "03"))]
    assert len(sweeps) == 12  # six sweeps, fp32 and bf16
    assert sum(c.startswith("cpu vs") for c in table.check) == 6
    assert time.perf_counter() - start < limit
