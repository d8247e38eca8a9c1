import hashlib
import json

import pandas as pd
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from utils.core.models import LoadedModel
from utils.paper import facts as data

CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "Beats Music is owned by Apple. Apple makes the iPhone.",
    "Marshall Islands speak Marshallese and English.",
] * 20


def _trained(kind: str) -> PreTrainedTokenizerFast:
    """Small real tokenizers: byte-level BPE (GPT-2 style) and Metaspace (SentencePiece style, with BOS)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    if kind == "bpe":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<bos>"], initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")
    if kind == "sentencepiece":
        from tokenizers.processors import TemplateProcessing

        fast._tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return fast


def _lm(tokenizer, sink=None):
    return LoadedModel(name="t", model=None, tokenizer=tokenizer, arch=None, attn_implementation="sdpa", sink_token=sink)


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
@pytest.mark.parametrize("prepend_sink", [None, True, False])
def test_subject_positions_from_offsets(kind, prepend_sink):
    lm = _lm(_trained(kind), sink="<bos>")
    prompt, subject = "Beats Music is owned by", "Beats Music"
    ids, spans = lm.encode(prompt, prepend_sink=prepend_sink, offsets=True)
    positions = data.subject_positions(spans, prompt, subject)
    text = lm.tokenizer.decode([ids[p] for p in positions]).replace("\u2581", " ").strip()
    assert text == subject
    has_bos = ids[0] == lm.sink_token_id
    assert has_bos == (prepend_sink if prepend_sink is not None else kind == "sentencepiece")
    assert positions[0] == int(has_bos)


def test_subject_inside_the_prompt_and_not_found():
    lm = _lm(_trained("bpe"))
    prompt = "The Eiffel Tower is located in the city of"
    ids, spans = lm.encode(prompt, offsets=True)
    positions = data.subject_positions(spans, prompt, "Eiffel Tower")
    assert lm.tokenizer.decode([ids[p] for p in positions]).strip() == "Eiffel Tower"
    assert positions[0] > 0 and positions[-1] < len(ids) - 1
    with pytest.raises(data.SubjectNotFound):
        data.subject_positions(spans, prompt, "Louvre")


def test_facts_with_missing_subject_are_skipped_with_reason():
    lm = _lm(_trained("bpe"))
    facts = data.load_facts("small", 3).copy()
    facts.loc[1, "subject"] = "Notre-Dame"
    prepared, skipped = data.tokenize_facts(lm, facts)
    assert len(prepared) == 2 and skipped["known_id"].tolist() == [1]
    assert "does not occur" in skipped["reason"].item()


def test_small_fact_set_has_the_dataset_schema():
    facts = data.load_facts("small")
    assert len(facts) == 50 and facts.relation_id.nunique() >= 15
    assert all(s in p for s, p in zip(facts.subject, facts.prompt))


def test_bad_fact_file_gets_a_clear_error(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([{"subject": "x", "prompt": "x is"}]))
    with pytest.raises(data.DatasetError, match=r"(?s)facts.json.*record 0 \(known_id None\): missing known_id"):
        data.load_facts(path)


# --- one validation step for every dataset: bad files, bad records, duplicate ids ---

SMALL = json.loads(data.SMALL_FACTS.read_text())


def _file(tmp_path, content, name="facts.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_duplicate_known_ids_are_refused(tmp_path):
    facts = [dict(f) for f in SMALL[:5]]
    facts[3]["known_id"] = facts[1]["known_id"]
    with pytest.raises(data.DatasetError, match=r"(?s)facts.json.*record 3 \(known_id 1\): duplicate known_id "
                                                r"\(also record 1\)"):
        data.load_facts(_file(tmp_path, facts))


def test_one_bad_record_is_named(tmp_path):
    facts = [dict(f) for f in SMALL[:5]]
    facts[2]["subject"] = None
    del facts[4]["template"]
    with pytest.raises(data.DatasetError) as err:
        data.load_facts(_file(tmp_path, facts))
    message = str(err.value)
    assert "facts.json" in message and "record 2 (known_id 2): subject is null" in message
    assert "record 4 (known_id 4): missing template" in message


@pytest.mark.parametrize("content, says", [
    ("[{\"known_id\": 0,", "is not valid JSON (line 1"),
    ("", "is not valid JSON"),
    ("[]", "holds no facts"),
    ('{"known_id": 0}', "must be a JSON list of fact records, not an object"),
    ("[1, 2]", "record 0: a number, not an object"),
    ('[{"known_id": "0", "subject": "a", "attribute": "b", "template": "{} c", "prompt": "a c", '
     '"relation_id": "P1"}]', "record 0 (known_id '0'): known_id must be an integer"),
    ('[{"known_id": true, "subject": "a", "attribute": "b", "template": "{} c", "prompt": "a c", '
     '"relation_id": "P1"}]', "known_id must be an integer, not true"),
    ('[{"known_id": 0, "subject": " ", "attribute": "b", "template": "{} c", "prompt": "a c", '
     '"relation_id": "P1"}]', "subject is an empty string"),
])
def test_malformed_datasets_get_the_project_error(tmp_path, content, says):
    with pytest.raises(data.DatasetError, match="facts.json") as err:
        data.load_facts(_file(tmp_path, content))
    assert says in str(err.value)


def test_a_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(data.DatasetError, match="no-such.json"):
        data.load_facts(tmp_path / "no-such.json")


@pytest.mark.parametrize("bad", [-1, -5, 1.5, "ten", "-1", True, [3]])
def test_n_facts_must_be_a_non_negative_integer(bad):
    with pytest.raises(data.DatasetError, match="n_facts must be a non-negative integer"):
        data.load_facts("small", bad)
    with pytest.raises(data.DatasetError, match="n_facts must be a non-negative integer"):
        data.known_set(object(), "small", bad)  # refused before the model is touched


@pytest.mark.parametrize("given, n, kept", [(0, 0, 50), (None, 0, 50), (3, 3, 3), ("3", 3, 3), (3.0, 3, 3),
                                           ("0", 0, 50), (500, 500, 50)])
def test_n_facts_from_papermill_or_python(given, n, kept):
    assert data.check_n_facts(given) == n
    assert len(data.load_facts("small", given)) == kept


def test_known_set_records_the_n_facts_it_used(tmp_path):
    from tiny_models import save_tiny_folder

    from utils import load_model
    from utils.runs.results import output_dir

    lm = load_model(str(save_tiny_folder(tmp_path / "model")), device="cpu")
    table = data.known_set(lm, "small", "4")  # as papermill may pass it
    meta = json.loads((output_dir("results", lm.name) / "facts_evaluated.meta.json").read_text())
    assert len(table) == 4 and meta["params"]["n_facts"] == 4
    assert meta["params"]["dataset_sha256"] == hashlib.sha256(data.SMALL_FACTS.read_bytes()).hexdigest()


def test_download_checks_sha256(tmp_path):
    src = tmp_path / "src.json"
    src.write_text("[1, 2, 3]")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = data.download(src.as_uri(), tmp_path / "cache" / "f.json", good)
    assert dest.read_text() == "[1, 2, 3]"
    with pytest.raises(ValueError, match="sha256"):
        data.download(src.as_uri(), tmp_path / "cache" / "g.json", "0" * 64)
    assert not (tmp_path / "cache" / "g.json").exists() and not list((tmp_path / "cache").glob("*.part"))


def test_a_failed_download_says_how_to_work_offline(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def no_network(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv(data.KNOWN_1000_ENV, raising=False)
    monkeypatch.setenv("DISSECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(ConnectionError, match=f"Name or service not known.*{data.KNOWN_1000_ENV}.*DATASET=small"):
        data.known_1000_path()
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_known_1000_path_rejects_a_wrong_file(tmp_path, monkeypatch):
    wrong = tmp_path / "known_1000.json"
    wrong.write_text("[]")
    monkeypatch.setenv(data.KNOWN_1000_ENV, str(wrong))
    with pytest.raises(ValueError, match="sha256"):
        data.known_1000_path()


def test_known_1000_loads(known_1000_path):
    facts = data.load_facts("known_1000")
    assert len(facts) == 1209 and facts.relation_id.nunique() == 33
    assert facts.loc[1, "prompt"] == "Beats Music is owned by"


@pytest.mark.slow
def test_known_set_on_the_real_model(smollm):
    table = data.known_set(smollm, "small")
    known = table[table.known]
    assert 10 <= len(known) <= 40  # SmolLM2 knows a part of these facts, not all
    eiffel = table.set_index("subject").loc["Eiffel Tower"]
    assert eiffel.known and eiffel.pred_token == " Paris" and 0.5 < eiffel.pred_prob < 0.9
    assert (known.pred_token_id == known.attribute_token).all()
    # the cached copy is identical and reused
    again = data.known_set(smollm, "small")
    assert again.pred_prob.tolist() == table.pred_prob.tolist()
    assert again.subject_positions.tolist() == table.subject_positions.tolist()


def official_find_token_range(tokenizer, token_array, substring):
    """The official code's utils.find_token_range (decode tokens, join, first occurrence)."""
    toks = [tokenizer.decode([t]) for t in token_array]
    whole_string = "".join(toks)
    char_loc = whole_string.index(substring)
    loc, tok_start, tok_end = 0, None, None
    for i, t in enumerate(toks):
        loc += len(t)
        if tok_start is None and loc > char_loc:
            tok_start = i
        if tok_end is None and loc >= char_loc + len(substring):
            tok_end = i + 1
            break
    return tok_start, tok_end


@pytest.mark.slow
def test_subject_positions_agree_with_the_official_code_on_byte_level_bpe(smollm, known_1000_path):
    """On a GPT-2-style byte-level BPE tokenizer, offsets give the official code's spans."""
    facts = data.load_facts("known_1000")
    disagree = []
    for fact in facts.itertuples():
        ids, spans = smollm.encode(fact.prompt, offsets=True)
        ours = data.subject_positions(spans, fact.prompt, fact.subject)
        start, end = official_find_token_range(smollm.tokenizer, ids, fact.subject)
        if ours != list(range(start, end)):
            disagree.append(fact.known_id)
    assert disagree == []


def test_known_only_says_when_a_model_knows_nothing():
    table = pd.DataFrame({"known_id": [0, 1, 2], "known": [False, True, False]})
    assert data.known_only(table, "m").known_id.tolist() == [1]
    with pytest.raises(data.NoKnownFacts, match="m knows none of the 2 facts evaluated"):
        data.known_only(table.iloc[[0, 2]], "m")


@pytest.mark.parametrize("notebook", sorted((data.PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")),
                         ids=lambda p: p.name)
def test_every_notebook_refuses_a_bad_n_facts_before_loading_a_model(notebook, tmp_path):
    """papermill passes `-p n_facts -1` as -1 (and `-r n_facts x` as text): each notebook
    checks it right after its parameters, before the model (here a name that does not
    exist) is loaded."""
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(notebook), str(tmp_path / notebook.name), cwd=str(notebook.parent),
                                   parameters={"model": "no-such-model", "n_facts": -1}, kernel_name="python3",
                                   progress_bar=False)
    assert err.value.ename == "DatasetError" and "n_facts must be a non-negative integer" in err.value.evalue
