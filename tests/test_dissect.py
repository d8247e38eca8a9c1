"""dissect: each panel's numbers are the library's sweeps for the same fact, on tiny random
models of three families; bad input gets a clear DissectError; a real model draws three panels."""

import numpy as np
import pandas as pd
import pytest
import transformers
from tiny_models import saved_random_model

from utils.companion.dissect import MAX_PROMPT_CHARS, MAX_PROMPT_TOKENS, DissectError, dissect
from utils.paper import extraction as ex
from utils.paper.enrichment import attributes_rate_sweep
from utils.paper.facts import NoPrediction, as_facts, build_known_set, tokenize_facts
from utils.paper.information_flow import FlowSettings, information_flow, position_heatmap
from utils.runs.results import sweep

PROMPT, SUBJECT, ABOUT = "Beats Music is owned by", "Beats Music", "Beats Music is a music streaming service owned by Apple."

FAMILIES = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, n_positions=128, initializer_range=0.2),
    "llama": lambda: transformers.LlamaConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128,
                                              max_position_embeddings=128, initializer_range=0.2),
    "qwen3": lambda: transformers.Qwen3Config(num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
                                              num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                              max_position_embeddings=128, initializer_range=0.2),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny(request, tmp_path_factory):
    return saved_random_model(tmp_path_factory.mktemp(f"dissect-{request.param}"), FAMILIES[request.param]())


def _known_set(lm, d):
    """The same fact through the known-set route the notebooks take."""
    facts = pd.DataFrame([{"known_id": 0, "subject": SUBJECT, "prompt": PROMPT, "attribute": "Apple"}])
    prepend = True if d.fact["has_sink"] and lm.encode("x")[0] != lm.sink_token_id else None
    return build_known_set(lm, facts, prepend, progress=False)


def test_panels_equal_the_library_sweeps(tiny):
    lm = tiny
    d = dissect(lm, PROMPT, SUBJECT, attribute="Apple", about=ABOUT)
    known = _known_set(lm, d)
    fact = as_facts(known)[0]
    assert fact["input_ids"] == d.fact["input_ids"] and fact["pred_token_id"] == d.fact["pred_token_id"]
    assert d.known == bool(known.known.iloc[0])

    # step 1: the heatmap and the three curves
    pd.testing.assert_frame_equal(d.tables["heatmap"], position_heatmap(lm, fact["input_ids"], d.window))
    flow = information_flow(lm, known, FlowSettings(k=d.window, sets=("subject", "non-subject", "last")),
                            dataset="dissect-test", progress=False)
    ours = d.tables["flow_curves"].set_index(["source", "layer"]).relative_change.sort_index()
    theirs = flow.set_index(["source", "layer"]).relative_change.sort_index()
    np.testing.assert_allclose(ours.values, theirs.values, rtol=1e-6)
    assert list(ours.index) == list(theirs.index)

    # step 2: the attributes rate and the prediction's rank at the last subject token, both projections
    assert d.attribute_source in ("the paragraph given",) or d.attribute_source.startswith("offline")
    for mode in ("paper", "logit_lens"):
        from utils.paper.attributes import attribute_set
        table = attributes_rate_sweep(lm, known, {SUBJECT: attribute_set(lm, ABOUT)}, {"dataset": "dissect-test"},
                                      mode=mode, name=f"rate_{mode}")
        table = table[table.position == "subject last"].set_index("layer")
        mine = d.tables["enrichment"].query("projection == @mode").set_index("layer")
        if d.attribute_source == "the paragraph given":
            np.testing.assert_allclose(mine.attributes_rate.values, table.attributes_rate.values)
        assert (mine.attribute_rank.values == table.attribute_rank.values).all()

    # step 3: extraction rows, ranks against events, the extracting layer and its heads
    rows = sweep("extraction_layers", lm, {"dissect": 1}, [fact], lambda f: ex.extraction_rows(lm, f, d.projection),
                 progress=False)
    cols = ["projection", "layer", "measure", "head", "value"]
    pd.testing.assert_frame_equal(d.tables["extraction_rows"][cols].reset_index(drop=True),
                                  rows[cols].reset_index(drop=True), check_dtype=False)
    events = rows[(rows.measure == "attn") & (rows.projection == d.projection)].set_index("layer").value
    ranks = d.tables["extraction"].query("sublayer == 'attn'").set_index("layer")["rank"]
    assert ((ranks == 0) == events.astype(bool)).all()
    assert d.extracting_found == bool(events.any())
    if d.extracting_found:
        assert d.extracting_layer == int(events[events == 1].index.min())
        heads = rows[(rows.measure == "head") & (rows.layer == d.extracting_layer)].set_index("head").value
        assert ((d.tables["heads"].set_index("head")["rank"] == 0) == heads.astype(bool)).all()
    else:
        assert d.extracting_layer == int(ranks.idxmin())
    mapping = ex.head_mapping_rows(lm, d.extracting_layer, [d.extracting_head], [fact], d.projection)
    assert d.tables["head_mapping"].rank_best.iloc[0] == mapping[0]["rank_best"]
    assert "dissected in" in d.summary()


def test_bad_inputs_say_what_is_wrong(tiny):
    lm = tiny
    with pytest.raises(DissectError, match="not in the prompt .*looked for as an exact substring"):
        dissect(lm, PROMPT, "Apple")
    with pytest.raises(DissectError, match="case-sensitive"):
        dissect(lm, PROMPT, "beats music")
    with pytest.raises(DissectError, match="prompt is empty"):
        dissect(lm, "   ", SUBJECT)
    with pytest.raises(DissectError, match=f"limit is {MAX_PROMPT_CHARS} characters"):
        dissect(lm, SUBJECT + " is" * 300, SUBJECT)
    with pytest.raises(DissectError, match=f"the limit is {MAX_PROMPT_TOKENS}"):
        dissect(lm, SUBJECT + " is" * 60 + " owned by", SUBJECT)
    with pytest.raises(DissectError, match="ends the prompt"):
        dissect(lm, "Owned by Beats Music", SUBJECT)
    d = dissect(lm, PROMPT, SUBJECT, attribute="Apple Incorporated Computers")
    assert "is 3 tokens" in d.summary() or "tokens; its first token" in d.summary()
    assert d.known is not None
    saved = lm.check
    try:
        lm.check = {"status": "failed", "failed": ["clean"]}
        with pytest.raises(DissectError, match="failed its model check \\(clean\\)"):
            dissect(lm, PROMPT, SUBJECT)
    finally:
        lm.check = saved


def test_a_tokenized_fact_without_its_prediction_is_a_clear_error(tiny):
    """The route the issue tried: tokenize_facts, then a measure (a bare KeyError before)."""
    facts = pd.DataFrame([{"known_id": 0, "subject": SUBJECT, "prompt": PROMPT, "attribute": "Apple"}])
    fact = as_facts(tokenize_facts(tiny, facts)[0])[0]
    with pytest.raises(NoPrediction, match="run predict_next_token"):
        ex.extraction_rows(tiny, fact)


def test_real_model_figure_has_three_panels(smollm):
    from utils import dissect as exported

    d = exported(smollm, PROMPT, SUBJECT, attribute="Apple")
    fig = d.figure()
    assert len(fig.subfigs) == 3
    assert all(sub.axes for sub in fig.subfigs)
    if not d.known:
        assert "WRONG" in fig._suptitle.get_text()
    assert d.prediction and 0 < d.probability <= 1 and d.seconds > 0
