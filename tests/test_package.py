from pathlib import Path

import utils


def test_utils_is_this_repo():
    # PyPI has an unrelated package named `utils`; the notebooks must get this one.
    root = Path(__file__).resolve().parent.parent
    assert Path(utils.__file__).resolve().parent == root / "utils"
    assert hasattr(utils, "load_model") and hasattr(utils, "BlockAttention")
