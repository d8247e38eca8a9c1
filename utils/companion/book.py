"""The reader's edition: a static site of the executed notebooks and the README's findings.

``python -m utils.companion.book --source executed/gemma-3-270m --out build/book`` (``make book``) stages a
Sphinx project (myst-nb renders the notebooks with their outputs, never executing them;
sphinx-book-theme, what jupyter-book 1.x packages) and builds it to ``<out>/html``. Everything the
pages load is on disk: the theme's assets, and MathJax from the ``jupyter-server-mathjax`` package
(with its own web fonts), so the build needs no network and the pages open offline.
Needs the ``book`` extras (``pip install -e ".[book]"``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..paths import PROJECT_ROOT

FINDINGS = "## What the notebooks find"
"""The README section the landing page shows (up to the next second-level heading)."""

CONF = '''\
project = "Dissecting Recall: a notebook companion"
author = "the dissecting-recall contributors"
extensions = ["myst_nb"]
exclude_patterns = ["_build"]
nb_execution_mode = "off"  # the notebooks are rendered with the outputs they were executed with
nb_merge_streams = True
myst_enable_extensions = ["dollarmath"]
myst_update_mathjax = False  # its MathJax 3 settings (window.MathJax = ...) would stop MathJax 2 from starting
html_theme = "sphinx_book_theme"
html_title = "Dissecting Recall"
html_theme_options = {{"show_toc_level": 2, "use_download_button": True}}
html_static_path = ["_static"]
html_last_updated_fmt = None
# MathJax 2 from the jupyter-server-mathjax package (its one combined configuration and its STIX web fonts, as
# Jupyter itself uses it), copied into _static: nothing is loaded from the internet
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {{"HTML-CSS": {{"availableFonts": [], "imageFont": None, "preferredFont": None, "webFont": "STIX-Web"}},
                   "showMathMenu": False, "messageStyle": "none"}}
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
'''


def _mathjax_dir() -> Path:
    try:
        import jupyter_server_mathjax
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the book needs its extras: pip install -e ".[book]" (make book does it)') from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


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


def _site_links(text: str, stage: Path) -> str:
    """README links rewritten for the site: notebooks become pages, figures are copied beside the
    page, links to source files (not part of the site) become plain text."""
    def link(match):
        bang, label, target = match.group(1), match.group(2), match.group(3)
        if re.match(r"^[a-z]+://|^#", target):
            return match.group(0)
        if target.startswith("notebooks/") and target.endswith(".ipynb"):
            return f"[{label}]({target})"
        source = PROJECT_ROOT / target
        if bang and source.is_file():
            dest = stage / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            return match.group(0)
        return label if not bang else f"*({label}: not part of this site)*"

    text = re.sub(r"!\[([^\]]*)\]\([a-z]+://[^)\s]+\)", r"\1", text)  # an offline site loads no image from the internet
    return re.sub(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)", link, text)


def _copy_notebook(path: Path, dest: Path) -> None:
    """A notebook for the site: links of its markdown to the repository's files (``../utils/x.py``),
    which the site does not carry, become plain text."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            cell["source"] = re.sub(r"(?<!!)\[([^\]]*)\]\((\.\./[^)\s]+)\)", r"\1", text)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False))


def landing_page(source: Path, notebooks: list[Path], stage: Path) -> str:
    readme = (PROJECT_ROOT / "README.md").read_text()
    title = readme.splitlines()[0].lstrip("# ").strip()
    intro = readme.split("\n## ", 1)[0].split("\n", 1)[1].strip()
    params = notebook_parameters(notebooks[0]) if notebooks else {}
    run = ", ".join(f"{k} = {params[k]}" for k in ("model", "dataset", "n_facts") if k in params) or "unknown"
    toc = "\n".join(f"notebooks/{p.stem}" for p in notebooks)
    exercises = sorted((PROJECT_ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb"))
    ex_toc = "\n".join(f"exercises/{p.stem}" for p in exercises)
    findings = readme_section(readme, FINDINGS)
    return "\n\n".join([
        f"# {title}",
        _site_links(intro, stage),
        f"This edition shows the notebooks as executed in `{source.relative_to(PROJECT_ROOT) if source.is_relative_to(PROJECT_ROOT) else source}` "
        f"({run}). The findings below are quoted from the project's README.",
        _site_links(findings.replace("## ", "## ", 1), stage),
        f"```{{toctree}}\n:caption: Notebooks\n:maxdepth: 1\n\n{toc}\n```",
        (f"```{{toctree}}\n:caption: Exercises (unsolved; solutions in exercises/solutions/)\n:maxdepth: 1\n\n{ex_toc}\n```"
         if exercises else ""),
    ]) + "\n"


def stage(source: Path, stage_dir: Path) -> Path:
    """A Sphinx source folder: conf.py, the landing page, the notebooks and the exercises."""
    notebooks = sorted(source.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no executed notebooks in {source}: run `make reproduce` (or pass BOOK_SOURCE=...)")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    (stage_dir / "notebooks").mkdir(parents=True)
    (stage_dir / "exercises").mkdir()
    for nb in notebooks:
        _copy_notebook(nb, stage_dir / "notebooks" / nb.name)
    for nb in sorted((PROJECT_ROOT / "exercises").glob("[0-9][0-9]_*_exercises.ipynb")):
        _copy_notebook(nb, stage_dir / "exercises" / nb.name)
    shutil.copytree(_mathjax_dir(), stage_dir / "_static" / "mathjax")
    (stage_dir / "conf.py").write_text(CONF.format())
    (stage_dir / "index.md").write_text(landing_page(source, notebooks, stage_dir))
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
