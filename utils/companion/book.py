"""The reader's edition: a static site of the executed notebooks and the README's findings.

``python -m utils.companion.book --source executed/gemma-3-270m --out build/book`` (``make book``) stages a
Sphinx project (myst-nb renders the notebooks with their outputs, never executing them;
sphinx-book-theme, what jupyter-book 1.x packages) and builds it to ``<out>/html``. Everything the
pages load is on disk: the theme's assets, and MathJax 3 from the ``sphinx-mathjax-offline`` package
(with its own web fonts), so the build needs no network and the pages open offline.
Needs the ``book`` extras (``pip install -e ".[book]"``).

It is staged as a course book, the way readers of d2l or the ARENA pages expect one: while the
notebooks are copied into the source (the committed notebooks are never changed) the setup, the
parameters and papermill's injected parameters are tagged ``remove-cell``, the code that draws a
figure ``hide-input`` (folded under a toggle), and each figure gets a numbered caption (the first
sentence of the markdown cell that introduces it) and opens enlarged on a click. Outputs and code
wrap instead of scrolling sideways (``_static/course.css``), there is one search box, and beside
the chapters stand a "how to use this book" page (prerequisites, a glossary), the exercises (each
chapter links its own) and an instructors' section with the reference solutions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .. import setup as project_setup
from ..paths import PROJECT_ROOT
from ..runs.results import model_slug
from . import lab_figure

FINDINGS = "## What the notebooks find"
"""The README section the landing page shows (up to the next second-level heading)."""

CONF = '''\
project = "Dissecting Recall: a notebook companion"
author = "the dissecting-recall contributors"
extensions = ["myst_nb"]
exclude_patterns = ["_build"]
nb_execution_mode = "off"  # the notebooks are rendered with the outputs they were executed with
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
html_theme = "sphinx_book_theme"
html_title = "Dissecting Recall"
html_theme_options = {{"show_toc_level": 2, "use_download_button": True, "navbar_persistent": []}}
# one search box: the sidebar's (the theme also puts search buttons in the header)
html_sidebars = {{"**": ["navbar-logo.html", "search-button-field.html", "sbt-sidebar-nav.html"]}}
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_js_files = ["course.js"]
html_last_updated_fmt = None
numfig = True  # "Fig. 1", "Fig. 2", ... on every captioned figure
numfig_format = {{"figure": "Fig. %s"}}
# MathJax 3 (CommonHTML output, display equations centred) from the sphinx-mathjax-offline package, copied into
# _static: nothing is loaded from the internet
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {{"chtml": {{"displayAlign": "center"}}, "options": {{"enableMenu": False}}}}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
'''

COURSE_CSS = """\
/* outputs and code wrap: no horizontal scroll at a desktop's 1400 px or a phone's 400 px */
div.highlight pre, div.cell_output pre, .output pre, pre {{ white-space: pre-wrap; overflow-wrap: anywhere;
  overflow-x: hidden; }}
div.cell_output, div.cell_input, div.highlight, .bd-article-container {{ max-width: 100%; overflow-x: hidden; }}
table {{ max-width: 100%; }}
table td, table th {{ overflow-wrap: anywhere; }}
img {{ max-width: 100%; height: auto; }}
/* display math centred, and never wider than the column */
mjx-container[display="true"] {{ display: block; text-align: center !important; max-width: 100%; overflow-x: hidden; }}
/* figures: numbered captions, a click enlarges */
figure img {{ cursor: zoom-in; }}
figure figcaption {{ font-size: 0.95em; }}
img.enlarged {{ position: fixed; inset: 0; width: 100vw; height: 100vh; max-width: none; object-fit: contain;
  background: rgba(255, 255, 255, 0.97); z-index: 3000; cursor: zoom-out; }}
"""

COURSE_JS = """\
// a figure opens enlarged on a click (and closes on a second click or Escape)
document.addEventListener("DOMContentLoaded", () => {{
  document.querySelectorAll("figure img").forEach(img => img.addEventListener("click", () =>
    img.classList.toggle("enlarged")));
  document.addEventListener("keydown", e => {{ if (e.key === "Escape")
    document.querySelectorAll("img.enlarged").forEach(i => i.classList.remove("enlarged")); }});
}});
"""

GLOSSARY = {
    "sink": "the first token of a prompt (a BOS or end-of-text token) that receives much of every head's attention; "
            "this project keeps it out of every position set (``sink=\"prepend\"``), the official code counts it as "
            "a non-subject position (``sink=\"official\"``).",
    "logit lens": "reading a hidden state (or a sublayer's update) as a distribution over the vocabulary by applying "
                  "the model's final norm and output head to it; the paper's projection skips the final norm.",
    "attention knockout": "removing the edges from the last position to a set of positions (subject, relation, last) "
                          "for all heads, in a window of layers, before the softmax; the measure is the relative "
                          "change of the probability of the model's prediction.",
    "knockout window": "the k consecutive layers around a centre layer in which an intervention acts; the official "
                       "window is asymmetric for even k.",
    "attributes rate": "the share of the top tokens of a hidden state's projection (after dropping stopwords and "
                       "short tokens) that belong to the subject's attribute set (tokens of paragraphs about it).",
    "extraction event": "a sublayer update at the last position whose projection ranks the model's prediction "
                        "first: the attribute is extracted at that layer, by attention or by the MLP.",
    "W_V W_O map": "a head's value and output matrices read as one map from a (subject) token's embedding to the "
                   "vocabulary: which tokens the head writes when it attends to that token.",
}

FORMULAS = r"""
The measures, as the chapters define them. The relative change of the prediction's probability under a knockout
(chapter 01), with $p$ the probability of the model's own prediction:

$$\Delta = 100 \cdot \frac{p_\text{knocked out} - p_\text{clean}}{p_\text{clean}} \;\%.$$

The attention knockout adds $-\infty$ to the pre-softmax scores of the blocked edges at the layers of the window
$W$: with $S$ the blocked positions and $N$ the last position,

$$M^{\ell}_{N j} = \begin{cases} -\infty & \ell \in W,\ j \in S \\ 0 & \text{otherwise.} \end{cases}$$

The attributes rate of a hidden state $h$ (chapter 02), with $T_k(h)$ the top $k$ tokens of its projection after the
token filter and $A_s$ the subject's attribute set:

$$\text{rate}(h) = \frac{|T_k(h) \cap A_s|}{k}.$$

An extraction event at layer $\ell$ (chapter 03) for an update $u^\ell$ (attention or MLP) at the last position and
the prediction $t^*$:

$$\operatorname{arg\,max}_t \; \operatorname{proj}(u^{\ell})_t = t^*.$$

A head's W_V W_O map sends a token $x$ to $\operatorname{proj}(e_x W_V^{h} W_O^{h})$, read by its top tokens.
"""



def _mathjax_dir() -> Path:
    """MathJax 3 (3.2.2 in sphinx-mathjax-offline 0.0.2), whose distribution installs as the folder
    ``sphinx-mathjax-offline`` (a name with hyphens, so it is found, not imported)."""
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.origin:
        raise ModuleNotFoundError('the book needs its extras: pip install -e ".[book]" (make book does it)')
    return Path(spec.origin).parent / "static" / "mathjax"


def notebook_parameters(path: Path) -> dict:
    """The parameters papermill injected into an executed notebook (model, dataset, ...)."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            return {m[1]: m[2].strip().strip("\"'") for m in re.finditer(r"^(\w+) = (.+)$", source, re.M)}
    return {}


def readme_section(readme: str, heading: str) -> str:
    """One second-level section of the README, heading included."""
    start = readme.find(heading)
    if start < 0:
        raise ValueError(f"the README has no section starting with {heading!r}")
    end = readme.find("\n## ", start + len(heading))
    return readme[start:end if end >= 0 else None].strip()


def _page(path: str) -> str | None:
    """The site's page for a repository file (a path from the repository's root), or None."""
    if re.fullmatch(r"notebooks/[0-9][0-9]_\w+\.ipynb|exercises/[0-9][0-9]_\w+_exercises\.ipynb", path):
        return path
    return LAB_PAGE + ".md" if path == LAB.relative_to(PROJECT_ROOT).as_posix() else None


def _site_links(text: str, stage: Path, base: Path = PROJECT_ROOT) -> str:
    """Links of a repository file in ``base`` (the README's, by default) rewritten for a page at the
    site's top: notebooks and the lab become pages, figures are copied beside the page, links to
    source files (not part of the site) become plain text."""
    def link(match):
        bang, label, target = match.group(1), match.group(2), match.group(3)
        if re.match(r"^[a-z]+://|^#", target):
            return match.group(0)
        source = (base / target).resolve()
        if not source.is_relative_to(PROJECT_ROOT):
            return label if not bang else f"*({label}: not part of this site)*"
        target = source.relative_to(PROJECT_ROOT).as_posix()
        if not bang and _page(target):
            return f"[{label}]({_page(target)})"
        if bang and source.is_file():  # a numbered figure, its alt text the caption
            dest = stage / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            return f"```{{figure}} {target}\n:alt: {label}\n\n{label[:1].upper() + label[1:]}.\n```"
        return label if not bang else f"*({label}: not part of this site)*"

    text = re.sub(r"!\[([^\]]*)\]\([a-z]+://[^)\s]+\)", r"\1", text)  # an offline site loads no image from the internet
    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", link, text)


HIDDEN = {"setup", "parameters", "injected-parameters"}
"""Cell tags of the boilerplate a reader of the book does not need (the setup cell, the parameters and
papermill's injected parameters): staged as ``remove-cell``."""


def _caption(cells: list[dict], index: int) -> str:
    """A figure's caption: the first sentence of the markdown cell that introduces it (headings
    dropped), else of the one after it."""
    for k in (index - 1, index + 1):
        if 0 <= k < len(cells) and cells[k]["cell_type"] == "markdown":
            text = " ".join(line for line in "".join(cells[k]["source"]).splitlines() if not line.startswith("#"))
            text = re.sub(r"\$\$.*?\$\$", "", " ".join(text.split()))
            sentence = re.split(r"(?<=[.:;])\s", text, maxsplit=1)[0].strip().rstrip(":;")
            if sentence:
                return sentence if len(sentence) <= 300 else sentence[:297].rsplit(" ", 1)[0] + " ..."
    return "Figure"


LAB = PROJECT_ROOT / "exercises" / "LAB.md"
"""The 90-minute lab's handout, staged as the first page of the exercises."""
LAB_PAGE = "lab"


def _lab_figure(model: str | None, stage: Path) -> str:
    """The book's model's slide figure (``make lab-figure``), copied into the site, as a numbered
    figure; or a line saying how to draw it."""
    slug = model_slug(model) if model else None
    source = PROJECT_ROOT / "figures" / (slug or "") / f"{lab_figure.NAME}.png"
    if slug is None or not source.is_file():
        return f"*(No slide figure for {slug or 'this model'} yet: `make lab-figure MODEL={slug or '...'}` draws it.)*"
    target = f"figures/{slug}/{source.name}"
    (stage / target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, stage / target)
    return (f"```{{figure}} {target}\n:alt: the paper's Figure 1 on {slug}'s layers\n:name: fig-lab-schematic\n\n"
            f"The slide: the paper's Figure 1 redrawn on {slug}'s own layers, each step located in its results by "
            f"the ledger (`make lab-figure MODEL={slug}`).\n```")


def lab_page(model: str | None, stage: Path) -> str:
    """The lab handout (exercises/LAB.md) as a page, the slide figure of the book's model placed
    under the line that names it (at the end when no line does)."""
    lines = _site_links(LAB.read_text(), stage, LAB.parent).rstrip("\n").splitlines()
    at = next((k + 1 for k, line in enumerate(lines) if lab_figure.NAME in line), len(lines))
    lines[at:at] = ["", _lab_figure(model, stage)]
    return "\n".join(lines) + "\n"


def _exercises_for(path: Path) -> list[Path]:
    """The exercise notebooks for a chapter: those whose opening cell links to it (the exercises
    of 04 are for chapters 02 and 03, those of 05 for 01, 04 and 05)."""
    found = []
    for nb in sorted((PROJECT_ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb")):
        first = next((c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown"), None)
        if first is not None and f"../notebooks/{path.name}" in "".join(first["source"]):
            found.append(nb)
    return found


def _copy_notebook(path: Path, dest: Path, chapter: bool = False) -> dict:
    """A notebook for the site: links of its markdown to the repository's files (``../utils/x.py``),
    which the site does not carry, become plain text; the boilerplate cells are removed, the code of
    each figure folded and the figure captioned (numbered by Sphinx); a chapter links its exercises.
    Returns what was done (counts), for the build's report."""
    nb = json.loads(path.read_text())
    # a form's widgets (notebook 05) cannot run in a static page, and their state would make the
    # site load the widget manager from a CDN: the page keeps their text and drops the widgets
    nb.get("metadata", {}).pop("widgets", None)
    cells, done = nb["cells"], {"removed": 0, "folded": 0, "figures": 0}
    for cell in cells:
        for out in cell.get("outputs", []):
            out.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), None)
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            cell["source"] = re.sub(r"(?<!!)\[([^\]]*)\]\((\.\./[^)\s]+)\)", r"\1", text)
            continue
        if cell["cell_type"] != "code":
            continue
        meta = cell.setdefault("metadata", {})
        tags = meta.setdefault("tags", [])
        if HIDDEN & set(tags) or (i == first_code and "".join(cell["source"]).startswith("# Setup")):
            tags.append("remove-cell")
            done["removed"] += 1
            continue
        images = sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
        if images:
            tags.append("hide-input")
            done["folded"] += 1
            done["figures"] += images
            meta.setdefault("mystnb", {})["figure"] = {"caption": _caption(cells, i), "name": f"fig-{path.stem[:2]}-{i}"}
    exercises = _exercises_for(path) if chapter else []
    if exercises:
        title = next((k for k, c in enumerate(cells) if c["cell_type"] == "markdown"), -1)
        links = ", ".join(f"[{e.stem.replace('_', ' ')}](../exercises/{e.name})" for e in exercises)
        cells.insert(title + 1, {"cell_type": "markdown", "id": f"exercises-{path.stem[:2]}", "metadata": {}, "source":
                                 f"**Exercises for this chapter:** {links} (solutions in the "
                                 f"[instructors' section](../instructors.md)).\n"})
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    return done


def landing_page(source: Path, notebooks: list[Path], stage: Path) -> str:
    """The book's first page, written for readers: what the paper found and what the chapters do,
    the run the pages show, the findings (from the README), and the contents."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    title = readme.splitlines()[0].lstrip("# ").strip()
    intro = readme.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    params = notebook_parameters(notebooks[0]) if notebooks else {}
    run = ", ".join(f"{k} = {params[k]}" for k in ("model", "dataset", "n_facts") if k in params) or "unknown"
    toc = "\n".join(f"notebooks/{p.stem}" for p in notebooks)
    exercises = sorted((PROJECT_ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb"))
    ex_toc = "\n".join(([LAB_PAGE] if LAB.is_file() else []) + [f"exercises/{p.stem}" for p in exercises])
    findings = readme_section(readme, FINDINGS)
    findings = re.sub(r" ?\([^()]*`make readme`[^()]*\)", "", findings)  # maintainers' notes, not for readers
    where = source.relative_to(PROJECT_ROOT) if source.is_relative_to(PROJECT_ROOT) else source
    return "\n\n".join([
        f"# {title}",
        _site_links(intro, stage),
        f"Each chapter is one notebook, shown as it ran on `{where}` ({run}): the text, the results and the figures, "
        "with the code that drew each figure folded under it. Start with [how to use this book](how_to_use.md): "
        "what to know beforehand, and the words the chapters use.",
        _site_links(findings, stage),
        "```{toctree}\n:caption: Start here\n:maxdepth: 1\n\nhow_to_use\n```",
        f"```{{toctree}}\n:caption: Chapters\n:maxdepth: 1\n\n{toc}\n```",
        (f"```{{toctree}}\n:caption: Exercises\n:maxdepth: 1\n\n{ex_toc}\n```" if ex_toc else ""),
        "```{toctree}\n:caption: For instructors\n:maxdepth: 1\n\ninstructors\n```",
    ]) + "\n"


def how_to_use_page() -> str:
    """Prerequisites, how the chapters are built, the glossary, the measures' formulas, and how to
    run a chapter yourself (Colab only once the repository's address is set)."""
    glossary = "\n\n".join(f"{term}\n: {text}" for term, text in GLOSSARY.items())
    if project_setup.published():
        colab = (f"Each notebook opens in Colab from {project_setup.repository_url()}: its first cell clones the "
                 "repository and installs what is missing.")
    else:
        colab = ("There is no Colab link yet: this copy's repository address is the placeholder "
                 f"`{project_setup.PLACEHOLDER}`. Maintainers set `REPOSITORY` in `utils/setup.py` and run "
                 "`python -m utils.setup sync`; a notebook opened in Colab before then says what to do.")
    return f"""# How to use this book

## Prerequisites

- Python and PyTorch at the level of reading a forward hook and indexing a tensor of shape (batch, position, hidden).
- The transformer's residual stream: each layer adds an attention update and an MLP update to it; a head attends
  from a query position to key positions through a softmax over scores.
- The paper itself helps but is not required: each chapter states the claim it tests before testing it.

## How a chapter is built

Each chapter reproduces one section of the paper. It first writes the measure out in plain PyTorch on one fact, checks
it against the project's library, then runs the library over every fact the model knows, draws the paper's figure
(the code is folded under each figure: click to show it, click a figure to enlarge it) and ends with verdicts: whether
the paper's claim holds on this model, with a 95% confidence interval over facts. Layers are counted from 0; the
paper's figures count from 1. The exercises ask you to write the same pieces yourself, with a checker under each.

## Glossary

{glossary}

## The measures

{FORMULAS.strip()}

## Running a chapter yourself

Clone the repository, run `make venv`, and open `notebooks/` in Jupyter with the `.venv` kernel; or run every chapter
at once on a small model with `make reproduce MODEL=smollm2-135m DATASET=small N_FACTS=5 DISSECT_OUTPUT_ROOT=build/quick`.
{colab}
"""


def instructors_page() -> str:
    """The reference solutions of the exercises, one section per exercise notebook."""
    parts = ["# For instructors: the solutions",
             "The reference solutions of every exercise, as the checkers test them (each passes its checker, and one "
             "plausible wrong answer per exercise fails with a hint). The exercise notebooks never import them."]
    for path in sorted((PROJECT_ROOT / "exercises" / "solutions").glob("[0-9][0-9]_*.py")):
        parts.append(f"## {path.stem.replace('_', ' ')}\n\n```python\n{path.read_text().rstrip()}\n```")
    return "\n\n".join(parts) + "\n"


def stage(source: Path, stage_dir: Path) -> Path:
    """A Sphinx source folder: conf.py, the landing page, the how-to page, the chapters, the lab and the
    exercises, and the instructors' solutions."""
    notebooks = sorted(source.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks in {source}: run `make reproduce` (or pass BOOK_SOURCE=...)")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    (stage_dir / "notebooks").mkdir(parents=True)
    (stage_dir / "exercises").mkdir()
    for nb in notebooks:
        _copy_notebook(nb, stage_dir / "notebooks" / nb.name, chapter=True)
    for nb in sorted((PROJECT_ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb")):
        _copy_notebook(nb, stage_dir / "exercises" / nb.name)
    shutil.copytree(_mathjax_dir(), stage_dir / "_static" / "mathjax")
    (stage_dir / "_static" / "course.css").write_text(COURSE_CSS.format())
    (stage_dir / "_static" / "course.js").write_text(COURSE_JS.format())
    (stage_dir / "conf.py").write_text(CONF.format())
    (stage_dir / "index.md").write_text(landing_page(source, notebooks, stage_dir))
    (stage_dir / "how_to_use.md").write_text(how_to_use_page())
    (stage_dir / "instructors.md").write_text(instructors_page())
    if LAB.is_file():
        model = notebook_parameters(notebooks[0]).get("model")
        (stage_dir / f"{LAB_PAGE}.md").write_text(lab_page(model, stage_dir))
    return stage_dir


def build(source: str | Path, out: str | Path, quiet: bool = True) -> Path:
    """Stage and build the site; returns the folder holding index.html."""
    source, out = Path(source).resolve(), Path(out).resolve()
    src = stage(source, out / "src")
    html = out / "html"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-j", "1", str(src), str(html)]
    result = subprocess.run(cmd + (["-q"] if quiet else []), capture_output=quiet, text=True)
    if result.returncode:
        raise RuntimeError(f"sphinx-build failed ({result.returncode}):\n{result.stderr if quiet else ''}")
    return html


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="executed/gemma-3-270m", help="folder of executed notebooks")
    parser.add_argument("--out", default="build/book", help="output folder (the site lands in OUT/html)")
    args = parser.parse_args(argv)
    try:
        html = build(PROJECT_ROOT / args.source if not Path(args.source).is_absolute() else args.source,
                     PROJECT_ROOT / args.out if not Path(args.out).is_absolute() else args.out, quiet=False)
    except (FileNotFoundError, ModuleNotFoundError, RuntimeError) as err:
        sys.exit(f"make book: {err}")
    print(f"the site: {html / 'index.html'}")


if __name__ == "__main__":
    main()
