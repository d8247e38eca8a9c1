"""make gpu-check rehearsed on the CPU (--dry: a tiny random model, 2 facts), so that the one
command meant for a first GPU runs every code path in every `make test` and cannot rot."""

from utils.companion import gpu_check


def test_gpu_check_dry_run_prints_one_table_of_passing_checks(capsys):
    table = gpu_check.main(["--dry"])
    out = capsys.readouterr().out
    assert "all ok: True" in out
    assert table.ok.all(), table[~table.ok]
    sweeps = [c for c in table.check if c.startswith(("01", "02", "03"))]
    assert len(sweeps) == 12  # six sweeps, fp32 and bf16
    assert sum(c.startswith("cpu vs") for c in table.check) == 6


def test_device_tests_past_their_limit_are_stopped_and_reported(monkeypatch):
    """The device tests cannot eat the sweeps' minutes: past the limit the row says so, not ok."""
    monkeypatch.setattr(gpu_check, "DEVICE_TESTS", ["tests/test_models.py"])
    row = gpu_check.device_tests(dry=False, limit_s=2)
    assert not row["ok"]
    assert row["result"].startswith("stopped after 2 s") and "python -m pytest tests/test_models.py" in row["result"]
    assert row["seconds"] < 30
