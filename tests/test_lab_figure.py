"""The lab's slide figure (``make lab-figure``) draws the layers the ledger locates, read from the
committed results (no model is loaded): the relation's and the subject's dips (claims 1 and 2),
the enrichment peak (claim 5) and the layer with the most attention extraction events (claim 8's
note counts them on its own route). A doctored results table whose subject dip moves moves the
figure's layer with it, and the caption then says the layers are not in the paper's order."""

import json
import re
import shutil

import pytest

from utils.companion import lab_figure
from utils.companion.plotting import plt, recall_schematic
from utils.paper import ledger
from utils.paths import PROJECT_ROOT
from utils.runs.results import load_table, write_table

MODELS = ["smollm2-135m", "gemma-3-270m"]


def committed(model: str) -> bool:
    return all((PROJECT_ROOT / "results" / model / f"{name}.csv").exists() for name in lab_figure.TABLES)


def drawn_layers(fig) -> dict[str, int]:
    """The layer of each step's main marker, read back from the figure (its ``gid``)."""
    found = {}
    for line in fig.axes[0].lines:
        if line.get_gid() in ("enrichment", "relation", "subject", "extraction"):
            assert line.get_gid() not in found, f"two markers for {line.get_gid()}"
            found[line.get_gid()] = int(line.get_xdata()[0])
    return found


def ledger_layers(r: ledger.ModelResults) -> dict[str, int]:
    """The layers as the ledger's claims report them, parsed from their cells' words."""
    boot = {"n_boot": 10}
    relation = re.search(r"deepest at layer (\d+)", ledger.claim_1(r, **boot).note)
    subject = re.search(r"deepest at layer (\d+)", ledger.claim_2(r, **boot).note)
    band_peak = re.search(r"baseline \(layer (\d+)\)", ledger.claim_5(r, **boot).measures[0].name)
    events = {int(k): int(v) for k, v in re.findall(r"layer (\d+): (\d+)", ledger.claim_8(r, **boot).note)}
    most = max(sorted(events), key=events.get)
    return {"relation": int(relation[1]), "subject": int(subject[1]), "enrichment": int(band_peak[1]),
            "extraction": most}


def copy_results(model: str, root):
    """The model's three tables and their metadata under ``root/results/<model>/``."""
    folder = root / "results" / model
    folder.mkdir(parents=True)
    for name in lab_figure.TABLES:
        for suffix in (".csv", ".meta.json"):
            shutil.copy2(PROJECT_ROOT / "results" / model / f"{name}{suffix}", folder / f"{name}{suffix}")
    return folder


@pytest.mark.parametrize("model", MODELS)
def test_the_schematic_draws_the_layers_the_ledger_locates(model):
    if not committed(model):
        pytest.skip(f"no committed results for {model}")
    r = ledger.ModelResults.load(model, PROJECT_ROOT, names=lab_figure.TABLES)
    fig = recall_schematic(lab_figure.steps(model, PROJECT_ROOT))
    try:
        assert drawn_layers(fig) == ledger_layers(r)
        assert fig.axes[0].get_title(loc="left").startswith(f"{model} ({r.n_layers} layers)")
        texts = " ".join(t.get_text() for t in fig.texts + fig.axes[0].texts)
        for words in ("subject enrichment (MLPs, last subject token)", "relation propagation to the last position",
                      "attribute extraction (attention heads)", "information_flow_prepend", "attributes_rate",
                      "extraction_layers"):
            assert words in " ".join(texts.split()), words
    finally:
        plt.close(fig)


def test_the_command_writes_the_figure(tmp_path, monkeypatch, capsys):
    model = "smollm2-135m"
    if not committed(model):
        pytest.skip(f"no committed results for {model}")
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(tmp_path))
    copy_results(model, tmp_path)
    lab_figure.main(["--model", model])
    for suffix in (".png", ".pdf"):
        path = tmp_path / "figures" / model / f"{lab_figure.NAME}{suffix}"
        assert path.exists() and path.stat().st_size > 10_000, path
    assert str(tmp_path / "figures" / model) in capsys.readouterr().out


def test_the_command_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("DISSECT_OUTPUT_ROOT", str(tmp_path))
    with pytest.raises(SystemExit, match="no results for no-such-model"):
        lab_figure.main(["--model", "no-such-model"])


def test_a_moved_subject_dip_moves_the_schematic(tmp_path):
    """A guard that can fail: the subject's curve doctored so that blocking the subject hurts most
    at another layer (before the relation's dip) moves the drawn layer there, the ledger's
    claim 2 agrees, the relation stays, and the caption says it is not the paper's order."""
    model = "smollm2-135m"
    if not committed(model):
        pytest.skip(f"no committed results for {model}")
    folder = copy_results(model, tmp_path)
    before = lab_figure.steps(model, tmp_path)
    target = 2  # a window centre well before both dips
    assert target not in (before.subject.layer, before.relation.layer)
    name = "information_flow_prepend"
    table = load_table(name, model, root=tmp_path)
    table.loc[(table.source == "subject") & (table.layer == target), "relative_change"] = -99.0
    meta = {k: v for k, v in json.loads((folder / f"{name}.meta.json").read_text()).items()
            if k not in ("table", "rows", "json_columns", "csv_sha256")}
    write_table(table, folder, name, meta)

    after = lab_figure.steps(model, tmp_path)
    fig = recall_schematic(after)
    try:
        drawn = drawn_layers(fig)
        caption = " ".join(" ".join(t.get_text() for t in fig.texts).split())
    finally:
        plt.close(fig)
    r = ledger.ModelResults.load(model, tmp_path, names=lab_figure.TABLES)
    assert drawn["subject"] == after.subject.layer == target == ledger_layers(r)["subject"]
    assert drawn["relation"] == before.relation.layer
    assert after.papers_order is False and before.papers_order is True
    assert "not the paper's order" in caption


def test_every_model_with_results_has_its_slide_figure():
    """``make lab-figure`` was run for the embedded models (the book's lab page shows one)."""
    models = [m for m in ledger.available_models(PROJECT_ROOT) if committed(m)]
    if not models:
        pytest.skip("no committed results")
    missing = [m for m in models if not (PROJECT_ROOT / "figures" / m / f"{lab_figure.NAME}.png").exists()]
    assert not missing, f"run make lab-figure MODEL=... for {missing}"
