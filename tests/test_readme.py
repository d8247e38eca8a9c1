"""The README's findings are the results' numbers: regenerating the section from results/
changes nothing, a number edited by hand is caught, and the committed ledger is what the
committed raw tables give. Its timings are the executed notebooks' own records, and its first
screen is for readers."""

import shutil

import numpy as np
import pytest

import json

from utils.companion import findings, timings
from utils.paper import ledger
from utils.paths import PROJECT_ROOT
from utils.runs.results import load_meta, load_table, write_table


@pytest.fixture(scope="module")
def readme():
    return findings.README.read_text()


@pytest.fixture(scope="module")
def section(readme):
    return findings.render(PROJECT_ROOT)


def test_readme_findings_are_generated_from_results(readme, section):
    """Run `make readme` after the results change."""
    assert findings.BEGIN in readme and findings.END in readme
    assert findings.updated(readme, section=section) == readme, "README findings differ from results/: run `make readme`"


def test_a_number_edited_in_the_readme_is_caught(readme, section):
    begin = readme.index(findings.BEGIN)
    edited = readme[:begin] + readme[begin:].replace("% of facts, MLP updates", "1% of facts, MLP updates", 1)
    assert edited != readme
    assert findings.updated(edited, section=section) != edited


def test_a_changed_result_changes_the_findings(tmp_path, section):
    shutil.copytree(PROJECT_ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns(".journal"))
    table = load_table("extraction_patched", "gemma-3-270m", root=tmp_path)
    table.loc[table.positions == "subject", "extracted"] = 0  # patching the subject now stops every extraction
    meta = load_meta("extraction_patched", "gemma-3-270m", tmp_path)  # as a run that found so would write it
    write_table(table, tmp_path / "results" / "gemma-3-270m", "extraction_patched", meta)
    changed = findings.render(tmp_path)
    assert changed != section and "cuts extraction from 0.37 to 0.00" in " ".join(changed.split())


def test_committed_ledger_is_what_the_raw_tables_give():
    """results/ledger.csv recomputed from the committed tables (notebook 04 writes it)."""
    committed = load_table("ledger", None, root=PROJECT_ROOT)
    params = load_meta("ledger", None, PROJECT_ROOT)["params"]
    fresh = ledger.build([ledger.ModelResults.load(m, PROJECT_ROOT) for m in params["models"]],
                         n_boot=params["n_boot"], seed=params["seed"])
    text = ["claim", "model", "measure", "verdict", "note"]
    assert committed[text].fillna("").astype(str).equals(fresh[text].fillna("").astype(str))
    assert not load_meta("ledger", None, PROJECT_ROOT)["json_columns"]  # a plain CSV, readable without the project
    for column in ("value", "ci_low", "ci_high", "n"):
        np.testing.assert_allclose(committed[column].astype(float), fresh[column].astype(float), rtol=1e-9)


def test_readme_timings_are_the_executed_notebooks_records(readme):
    """Run `make readme` after the executed notebooks change."""
    assert timings.BEGIN in readme and timings.END in readme
    assert timings.updated(readme) == readme, "README timings differ from executed/: run `make readme`"


def test_a_changed_duration_changes_the_timings(tmp_path):
    source = PROJECT_ROOT / "executed" / timings.MODEL
    (tmp_path / "executed").mkdir()
    shutil.copytree(source, tmp_path / "executed" / timings.MODEL)
    path = tmp_path / "executed" / timings.MODEL / "01_information_flow.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][5].setdefault("metadata", {}).setdefault("papermill", {})["duration"] = 6000.0
    path.write_text(json.dumps(nb))
    changed = timings.render(root=tmp_path)
    assert changed != timings.render() and "| 01_information_flow | 1" in changed


def test_no_hand_written_timing_in_the_readme(readme):
    outside = readme.replace(readme[readme.index(timings.BEGIN):readme.index(timings.END)], "")
    for phrase in ("about 19 min", "under a minute", "7.5 min", "minutes from scratch"):
        assert phrase not in outside, phrase


def test_the_first_screen_says_what_it_is_what_it_found_and_how_to_start(readme):
    first = "\n".join(readme.splitlines()[:60])
    assert "Dissecting Recall" in first and "<!-- summary:begin -->" in first and "<!-- summary:end -->" in first
    assert "make reproduce MODEL=smollm2-135m DATASET=small" in first and "DISSECT_OUTPUT_ROOT=build/quick" in first
    assert "make book" in first and "00_known_facts" in first and "CONTRIBUTING.md" in first
    assert readme.index(findings.BEGIN) < readme.index("## Layout")
    for developer in ("requirements.lock", "make atlas MODELS", "| `gpt2` |", "make bench", "nbval"):
        assert developer not in readme[:readme.index(findings.BEGIN)], developer


def test_readme_opens_with_the_summary_of_what_replicates(readme):
    """Three lines near the top, one per step of the paper, from the ledger (`make readme`)."""
    begin, end = readme.index(findings.SUMMARY_BEGIN), readme.index(findings.SUMMARY_END)
    assert begin < readme.index("\n## ") and begin < end
    lines = [line for line in readme[begin:end].splitlines() if line.startswith("- **§")]
    assert len(lines) == 3 and all(m in line for line in lines for m in findings.MODELS.values())
    assert readme[begin + len(findings.SUMMARY_BEGIN) + 1:end] == findings.summary(PROJECT_ROOT)


def test_a_changed_verdict_changes_the_summary(tmp_path):
    shutil.copytree(PROJECT_ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns(".journal"))
    long = load_table("ledger", None, root=tmp_path)
    before = findings.summary(tmp_path)
    long.loc[(long.claim == "1") & (long.model == "gemma-3-270m"), "verdict"] = "does not hold"
    write_table(long, tmp_path / "results", "ledger", load_meta("ledger", None, tmp_path))
    after = findings.summary(tmp_path)
    assert after != before and "gemma-3-270m replicates in part (3 of 4 claims hold; does not hold: 1)" in after


def test_the_findings_split_claim_8_by_extracting_layer(section):
    """No pooled "still extract" share without the ledger's per-layer rows beside it."""
    long = load_table("ledger", None, root=PROJECT_ROOT)
    layered = long[(long.claim == "8") & long.measure.fillna("").str.contains(", at layer ")]
    for model in set(layered.model) & set(findings.MODELS.values()):
        if model == findings.MODELS["g"]:
            for measure in layered[layered.model == model].measure:
                assert f"at layer {measure.rsplit(' ', 1)[1]} (" in " ".join(section.split())
