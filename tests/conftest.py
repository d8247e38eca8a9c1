import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # tiny_models

SHARED_KNOWN_1000 = ROOT.parent / "shared" / "data" / "known_1000.json"
if "DISSECT_KNOWN_1000" not in os.environ and SHARED_KNOWN_1000.exists():
    os.environ["DISSECT_KNOWN_1000"] = str(SHARED_KNOWN_1000)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path, monkeypatch):
    """Tests write results and figures under a temporary root, never into the repo."""
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(tmp_path / "outputs"))


@pytest.fixture(scope="session")
def smollm():
    from utils import load_model

    return load_model("smollm2-135m", device="cpu", dtype="float32")


@pytest.fixture
def known_1000_path():
    path = os.environ.get("DISSECT_KNOWN_1000")
    if not path or not Path(path).exists():
        pytest.skip("known_1000.json not available offline (set DISSECT_KNOWN_1000)")
    return Path(path)
