"""batch_size="auto": the size follows the (faked) free memory by the stated formula, an
out-of-memory error shrinks it to what fits and the table stays the one an int size gives, and
batching never changes the numbers beyond float rounding (a real model, a few facts)."""

import pandas as pd
import pytest
import torch
from tiny_models import prompt, tiny_model

import utils.paper.facts as facts_module
import utils.paper.information_flow as flow
from utils.core import batching
from utils.paper.information_flow import SOURCE_SETS, FlowSettings, flow_of_fact


def tiny_fact(n=10):
    ids = prompt(n, 1)[0].tolist()
    ids[0] = 1
    return {"known_id": 7, "input_ids": ids, "n_tokens": n, "subject_positions": [2, 3, 4], "subject_first": 2,
            "has_sink": True}


def fake_free(monkeypatch, nbytes):
    monkeypatch.setattr(batching, "free_memory", lambda device: nbytes)


def test_row_bytes_follows_the_stated_formula():
    lm = tiny_model("llama")  # 4 layers, d=64, MLP 128, 4 heads, 2 kv heads of 16, vocab 96, fp32
    shape = batching.model_shape(lm)
    assert shape == {"layers": 4, "width": 64, "mlp": 128, "heads": 4, "kv_heads": 2, "head_dim": 16,
                     "vocab": 96, "bytes": 4}
    n = 10
    assert batching.row_bytes(shape, n, "last") == 2 * 4 * n * 32 * 4 + (6 * 64 + 2 * 128 + 2 * 4 * n) * 4 + 12 * 96
    assert batching.row_bytes(shape, n, "all") == n * (6 * 64 + 256) * 4 + 2 * 4 * n * n * 4 + 2 * n * 32 * 4 + 12 * 96
    # the cached prefix grows with the prompt and the depth
    assert batching.row_bytes(shape, 2 * n) > batching.row_bytes(shape, n)
    assert batching.row_bytes({**shape, "layers": 48}, n) > 10 * batching.row_bytes(shape, n) / 2


def test_auto_fits_the_free_memory_within_the_cap(monkeypatch):
    lm = tiny_model("gpt2")
    row = batching.row_bytes(batching.model_shape(lm), 10)
    fake_free(monkeypatch, int(7.5 * row / batching.SAFETY))
    assert batching.resolve("auto", lm, 10, cap=128) == 7
    fake_free(monkeypatch, 10 ** 12)
    assert batching.resolve("auto", lm, 10, cap=128) == 128  # the cap: the sweep's tuned size on the host
    fake_free(monkeypatch, 1)
    assert batching.resolve("auto", lm, 10, cap=128) == 1  # never zero rows
    assert batching.resolve(16, lm, 10, cap=128) == 16  # an int is taken as given
    for bad in (0, -3, "big", 2.5, True):
        with pytest.raises(ValueError):
            batching.resolve(bad, lm, 10, cap=128)


def test_free_memory_of_the_host_is_positive():
    assert batching.free_memory("cpu") > 2 ** 20


def test_out_of_memory_errors_are_recognized():
    assert batching.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert batching.is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: "
                                                  "can't allocate memory: you tried to allocate 8 GB"))
    assert batching.is_out_of_memory(MemoryError())
    assert not batching.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def oom_above(monkeypatch, limit, sizes):
    """run_last_position as the sweep calls it, failing like CUDA for more than ``limit`` rows."""
    real = flow.run_last_position

    def fake(lm, prefix, rows, *args, **kwargs):
        sizes.append(len(rows))
        if len(rows) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory ({len(rows)} rows)")
        return real(lm, prefix, rows, *args, **kwargs)

    monkeypatch.setattr(flow, "run_last_position", fake)


def test_an_out_of_memory_error_shrinks_auto_to_what_fits_with_the_same_table(monkeypatch):
    lm = tiny_model("gpt2")
    fact = tiny_fact()
    reference = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(3, sets=SOURCE_SETS, batch_size=5)))
    fake_free(monkeypatch, 10 ** 12)  # "auto" asks for the cap, 128: more than the 21 rows
    sizes = []
    oom_above(monkeypatch, 5, sizes)
    shrunk = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(3, sets=SOURCE_SETS, batch_size="auto")))
    assert sizes[:3] == [21, 10, 5], sizes  # 128 -> all 21 rows, then halved until 5 fit
    assert max(sizes[3:]) <= 5
    pd.testing.assert_frame_equal(shrunk, reference)  # the same rows in the same chunks: the same numbers
    assert lm.cache[batching.CEILING] == 5
    sizes.clear()  # the next fact starts at the size that fitted
    flow_of_fact(lm, fact, FlowSettings(3, sets=SOURCE_SETS, batch_size="auto"))
    assert max(sizes) <= 5


def test_one_row_that_does_not_fit_still_fails(monkeypatch):
    lm = tiny_model("gpt2")
    oom_above(monkeypatch, 0, [])
    with pytest.raises(torch.OutOfMemoryError):
        flow_of_fact(lm, tiny_fact(), FlowSettings(3, sets=SOURCE_SETS, batch_size=4))


def test_other_errors_are_not_retried():
    calls = []

    def broken(chunk):
        calls.append(len(chunk))
        raise RuntimeError("shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        batching.in_batches(list(range(8)), 8, broken)
    assert calls == [8]


def test_auto_from_small_memory_gives_the_table_of_that_int(monkeypatch):
    lm = tiny_model("llama")
    fact = tiny_fact()
    row = batching.row_bytes(batching.model_shape(lm), fact["n_tokens"])
    fake_free(monkeypatch, int(3 * row / batching.SAFETY) + 1)
    sizes = []
    oom_above(monkeypatch, 10 ** 6, sizes)
    auto = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(3, sets=SOURCE_SETS, batch_size="auto")))
    assert set(sizes) == {3}
    fixed = pd.DataFrame(flow_of_fact(lm, fact, FlowSettings(3, sets=SOURCE_SETS, batch_size=3)))
    pd.testing.assert_frame_equal(auto, fixed)


def test_known_set_predictions_shrink_on_out_of_memory(monkeypatch):
    lm = tiny_model("gpt2")
    g = torch.Generator().manual_seed(0)
    prepared = pd.DataFrame({"input_ids": [torch.randint(3, 96, (6,), generator=g).tolist() for _ in range(9)],
                             "n_tokens": 6, "attribute_token": list(range(3, 12))})
    monkeypatch.setattr(facts_module, "decode_ids", lambda lm, ids: [str(i) for i in ids])  # no tokenizer
    reference = facts_module.predict_next_token(lm, prepared, batch_size=2, progress=False)
    real, sizes = facts_module.run, []

    def fake(lm, ids, *args, **kwargs):
        sizes.append(len(ids))
        if len(ids) > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real(lm, ids, *args, **kwargs)

    monkeypatch.setattr(facts_module, "run", fake)
    fake_free(monkeypatch, 10 ** 12)
    shrunk = facts_module.predict_next_token(lm, prepared, batch_size="auto", progress=False)
    assert sizes[:3] == [9, 4, 2] and max(sizes[3:]) <= 2, sizes
    pd.testing.assert_frame_equal(shrunk, reference)


def test_batch_size_never_changes_a_real_models_numbers(smollm):
    """SmolLM2 fp32, two facts: batches of 128 and 16 agree to float rounding (1e-5, the
    project's fp32 tolerance; measured 2.6e-6 at most), and "auto" on a host with room is 128
    bit for bit (the committed tables are made with 128)."""
    texts = [("The Eiffel Tower is located in the city of", "The Eiffel Tower"),
             ("Michael Jordan plays the sport of", "Michael Jordan")]
    from utils.paper.facts import subject_positions

    for i, (text, subject) in enumerate(texts):
        ids, spans = smollm.encode(text, prepend_sink=True, offsets=True)
        positions = subject_positions(spans, text, subject)
        fact = {"known_id": i, "input_ids": ids, "n_tokens": len(ids), "subject_positions": positions,
                "subject_first": positions[0], "has_sink": True}
        k = flow.default_window(smollm.n_layers)
        big, small, auto = [pd.DataFrame(flow_of_fact(smollm, fact, FlowSettings(k, sets=SOURCE_SETS, batch_size=size)))
                            for size in (128, 16, "auto")]
        assert (small.p_new - big.p_new).abs().max() < 1e-5
        assert (small.p_base - big.p_base).abs().max() < 1e-6
        pd.testing.assert_frame_equal(auto, big)
