"""One rulebook: the paper's claims are judged only by utils/paper/rules.py and
utils/paper/ledger.py. A notebook that judges a claim with a threshold of its own (notebook
03's closing cells once did: ``attn_any >= 2 * mlp_any``, ``left["subject"] < 0.5``) gives
its reader another answer than notebook 04's reader gets for the same model; these tests fail
when a notebook's code defines a verdict, and when what a section notebook prints differs from
``results/ledger.csv``."""

import re
from pathlib import Path

import nbformat
import pytest

from utils.paper import ledger, rules
from utils.paths import PROJECT_ROOT
from utils.runs.results import load_meta, load_table

NOTEBOOKS = PROJECT_ROOT / "notebooks"
SECTION_NOTEBOOKS = {"01": "01_information_flow", "02": "02_subject_enrichment", "03": "03_attribute_extraction"}
VERDICT_WORDS = re.compile(r"holds|does not hold|partly|verdict|as the paper found|unlike what the paper|"
                           r"\bdef claim\b|\bclaim\(", re.IGNORECASE)
"""Words that judge a claim (or a helper that does), in a notebook's code."""
LEDGER_CALL = re.compile(r"ledger\.section_(report|rows)\(lm\.name, \"(\d\d)\"\)")


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def rule_makers(path: Path) -> list[str]:
    """The code lines of a notebook that judge a claim outside the ledger's own call: a
    verdict word, or a helper named after claims. Comments are code's prose, not rules, but
    are scanned too (a verdict written into a comment is a verdict the reader sees)."""
    found = []
    for cell in code_cells(path):
        if LEDGER_CALL.search(cell.source):
            continue
        found += [line.strip() for line in cell.source.splitlines() if VERDICT_WORDS.search(line)]
    return found


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("0[0-3]_*.ipynb")))
def test_no_notebook_defines_a_rule(name):
    found = rule_makers(NOTEBOOKS / f"{name}.ipynb")
    assert not found, f"{name} judges claims itself (use ledger.section_report):\n" + "\n".join(found)


@pytest.mark.parametrize("section,name", sorted(SECTION_NOTEBOOKS.items()))
def test_each_section_notebook_ends_with_the_ledgers_rows(section, name):
    """One cell calls the ledger for its own section, after every table of the notebook is saved."""
    cells = code_cells(NOTEBOOKS / f"{name}.ipynb")
    calls = [(i, m.group(2)) for i, c in enumerate(cells) for m in [LEDGER_CALL.search(c.source)] if m]
    assert [s for _, s in calls] == [section], calls
    saves = [i for i, c in enumerate(cells) if "save_table(" in c.source]
    assert saves and calls[0][0] > max(saves)


def committed_ledger():
    long = load_table("ledger", None, root=PROJECT_ROOT)
    meta = load_meta("ledger", None, PROJECT_ROOT)
    if long is None or meta is None:
        pytest.skip("no results/ledger.csv")
    return long, meta["params"]


@pytest.mark.parametrize("section", sorted(SECTION_NOTEBOOKS))
def test_section_rows_are_the_committed_ledgers(section):
    """What a section notebook prints (:func:`ledger.section_rows`, computed from the model's
    results folder) is results/ledger.csv's rows for that model and those claims."""
    long, params = committed_ledger()
    for model in params["models"]:
        rows = ledger.section_rows(model, section, PROJECT_ROOT, n_boot=params["n_boot"], seed=params["seed"])
        committed = long[(long.model == model) & long.claim.isin(rules.SECTIONS[section])]
        text = ["claim", "measure", "verdict", "unit", "rule"]
        assert rows[text].fillna("").astype(str).reset_index(drop=True).equals(
            committed[text].fillna("").astype(str).reset_index(drop=True)), (model, section)
        assert list(rows.n) == list(committed.n) and rows.value.round(9).fillna(-1).tolist() == \
            committed.value.astype(float).round(9).fillna(-1).tolist()


def printed_verdicts(text: str) -> dict[str, str]:
    """``{claim: verdict}`` from :func:`ledger.section_report`'s text."""
    found = {}
    for claim, words in rules.CLAIM_TEXT.items():
        m = re.search(rf"^{re.escape(claim)}\. {re.escape(words)}: (.+)$", text, re.MULTILINE)
        if m:
            found[claim] = m.group(1).strip()
    return found


@pytest.mark.parametrize("section,name", sorted(SECTION_NOTEBOOKS.items()))
def test_executed_notebooks_print_the_committed_verdicts(section, name):
    """The executed notebooks of a full run (executed/<model>/) print the verdicts of results/ledger.csv."""
    long, params = committed_ledger()
    checked = 0
    for model in params["models"]:
        path = PROJECT_ROOT / "executed" / model / f"{name}.ipynb"
        if not path.exists():
            continue
        cell = next((c for c in code_cells(path) if LEDGER_CALL.search(c.source)), None)
        assert cell is not None, f"{path} predates the ledger's closing cell: re-execute it (make reproduce)"
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        committed = long[long.model == model].drop_duplicates("claim").set_index("claim").verdict
        expected = {c: committed[c] for c in rules.SECTIONS[section]}
        assert printed_verdicts(text) == expected, (model, section)
        checked += 1
    if not checked:
        pytest.skip("no executed notebook of a model in results/ledger.csv")


def test_the_scan_catches_a_notebook_rule(tmp_path):
    """The closing cell notebook 03 once had is caught (a guard that can fail)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        'claim(f"attention extracts far more often ({a:.3f} vs {m:.3f})", a >= 2 * m)\n'
        'claims.append(f"[{\'holds\' if ok else \'does not hold\'}] {text}")')]
    path = tmp_path / "03_x.ipynb"
    nbformat.write(nb, path)
    assert len(rule_makers(path)) == 2


def test_section_rows_are_the_ledgers_rows():
    """Independent of what is committed: a section's rows are the full ledger's rows for its claims."""
    model = "gemma-3-270m"
    if not (PROJECT_ROOT / "results" / model / "extraction_layers.csv").exists():
        pytest.skip("no committed results")
    full = ledger.build([model], PROJECT_ROOT, n_boot=50)
    for section, claims in rules.SECTIONS.items():
        rows = ledger.section_rows(model, section, PROJECT_ROOT, n_boot=50)
        part = full[full.claim.isin(claims)].reset_index(drop=True)
        assert rows[["claim", "measure", "verdict", "unit", "rule"]].equals(
            part[["claim", "measure", "verdict", "unit", "rule"]]), section


def test_a_table_from_another_run_is_left_out_not_judged(tmp_path):
    """A run of notebook 03 that writes no head mappings is not judged on an earlier run's."""
    import json
    import shutil
    model = "gemma-3-270m"
    source = PROJECT_ROOT / "results" / model
    if not (source / "extraction_head_mappings.csv").exists():
        pytest.skip("no committed results")
    shutil.copytree(source, tmp_path / "results" / model)
    meta_path = tmp_path / "results" / model / "extraction_head_mappings.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["n_facts"] = 7  # as an earlier run on 7 facts would have written it
    if "run" in meta:  # the run id every table's metadata carries
        meta["run"]["n_facts"] = 7
    meta_path.write_text(json.dumps(meta))
    rows = ledger.section_rows(model, "03", tmp_path, n_boot=20)
    eleven = rows[rows.claim == "11"].iloc[0]
    assert eleven.verdict == "not measured" and "missing" in eleven.note
