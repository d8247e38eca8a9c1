"""The figures say what the tables say: the ledger figure colours every claim x model cell by
its verdict, and the cross-model attributes figure draws each model's control and baseline
(without them a model that is not enriched looks enriched)."""

import matplotlib.colors as mcolors
import pandas as pd
import pytest

from utils.companion import plotting
from utils.companion.plotting import plt
from utils.paper.ledger import ModelResults

LONG = pd.DataFrame([
    # claim, model, measure, value, ci_low, ci_high, n, verdict, note, unit (the first row per cell is the main one)
    ("1", "a", "deepest mean change (%)", -42.5, -45.9, -39.6, 490, "holds", "", "%"),
    ("1", "a", "a second measure", 1.0, 0.5, 1.5, 490, "holds", "", "%"),
    ("1", "b", "deepest mean change (%)", -4.0, -9.0, 1.0, 354, "does not hold", "", "%"),
    ("5b", "a", "rate minus control at the peak (points)", 6.1, 3.0, 8.5, 120, "partly", "", "points"),
    ("5b", "b", None, None, None, None, 3, "not measured", "too few facts", None),
], columns=["claim", "model", "measure", "value", "ci_low", "ci_high", "n", "verdict", "note", "unit"])


def _cells(ax):
    """The coloured rectangles of the grid, by (row, column)."""
    return {(int(p.get_y()), int(p.get_x())): mcolors.to_hex(p.get_facecolor())
            for p in ax.patches if isinstance(p, plt.Rectangle) and p.get_width() == 1}


def test_ledger_figure_colours_each_cell_by_its_verdict():
    fig, verdicts = plotting.ledger_figure(LONG, {"1": "Blocking the relation hurts"})
    ax = fig.axes[0]
    cells = _cells(ax)
    plt.close(fig)
    assert verdicts.shape == (2, 2) and list(verdicts.index) == ["1", "5b"] and list(verdicts.columns) == ["a", "b"]
    assert len(cells) == 4  # one cell per claim x model, no more
    for i, claim in enumerate(verdicts.index):
        for j, model in enumerate(verdicts.columns):
            assert cells[(i, j)] == mcolors.to_hex(plotting.VERDICT_COLOURS[verdicts.loc[claim, model]])
    texts = [t.get_text() for t in ax.texts]
    assert any("-42.5%" in t and "[-45.9, -39.6]" in t and "n = 490" in t for t in texts)  # value, interval, unit, n
    assert any("not measured: too few facts" in t for t in texts)
    assert len(set(plotting.VERDICT_COLOURS.values())) == len(plotting.VERDICT_COLOURS)  # one colour per verdict


def _rates(model, lift, control_lift):
    rows = []
    for fact in range(4):
        rows.append({"known_id": fact, "position": "static embedding", "layer": -1, "attributes_rate": 5.0,
                     "control_rate": None})
        for layer in range(6):
            rows.append({"known_id": fact, "position": "subject last", "layer": layer,
                         "attributes_rate": 5.0 + lift * layer + fact - 1.5,
                         "control_rate": 5.0 + control_lift * layer})
    return ModelResults(model, {"attributes_rate": pd.DataFrame(rows)}, n_layers=6)


@pytest.mark.parametrize("control_lift", [0.0, 2.0])
def test_atlas_attributes_draws_each_models_control_and_baseline(control_lift):
    results = [_rates("enriched", 2.0, 0.0), _rates("not-enriched", 2.0, control_lift)]
    fig = plotting.atlas_attributes(results, ["enriched", "not-enriched"])
    panels = [ax for ax in fig.axes if ax.get_lines()]
    plt.close(fig)
    assert len(panels) == 2 and "Attributes rate" in fig._suptitle.get_text()
    for ax in panels:
        styles = {line.get_linestyle() for line in ax.get_lines()}
        assert {"-", "--", ":"} <= styles  # the curve, the control (dashed), the baseline (dotted)
        control = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
        assert control.get_ydata()[-1] == pytest.approx(5.0 + [0.0, control_lift][panels.index(ax) == 1] * 5)
    gap = panels[1].texts[0].get_text()
    assert ("+0.0" in gap) == (control_lift == 2.0)  # the panel says how far the curve is over its control


def test_token_labels_show_spaces_without_brackets():
    labels = plotting.token_labels(["<bos>", "The", " Big", " Bang", "  "], [2, 3])
    assert labels == ["0: <bos>", "1: The", "2: \u2423Big  (subject)", "3: \u2423Bang  (subject)", "4: \u2423\u2423"]
    assert not any("[" in label or "'" in label for label in labels)


def test_flow_example_shows_increases_on_a_scale_centred_at_zero():
    heat = pd.DataFrame([[-90.0, -90.0], [-40.0, 2.0], [0.0, 0.0]], columns=[1, 2], index=["0: <bos>", "1: a", "2: b"])
    fig = plotting.flow_example(heat, model="toy", title="t", k=3, has_sink=True)
    mesh = fig.axes[0].collections[0]
    plt.close(fig)
    norm = mesh.norm
    assert norm.vmin == -40.0 and norm.vmax == 2.0 and norm(0.0) == pytest.approx(0.5)  # the sink row left out
    assert norm(2.0) == pytest.approx(1.0)  # a rise of 2% gets the full colour of its side, not near-white


def test_extraction_heads_mark_skipped_layers():
    by_head = pd.DataFrame({"layer": [23, 27, 28], "head": [4, 4, 2], "events": [6, 2, 1]})
    fig = plotting.extraction_heads(by_head, model="toy", n_heads=5, n_events=9, note="")
    ax = fig.axes[0]
    gaps = [line.get_xdata()[0] for line in ax.get_lines()]
    plt.close(fig)
    assert gaps == [1]  # between 23 and 27, not between 27 and 28
    assert "skipped" in ax.get_xlabel()


def test_rate_by_position_draws_a_band_for_the_control_and_the_baseline_dotted():
    data = _rates("m", 2.0, 1.0).table("attributes_rate")
    fig = plotting.rate_by_position(data, "attributes_rate", model="m", title="t", ylabel="%", note="n",
                                    order=["subject last"], baseline=5.0, control=True)
    ax = fig.axes[0]
    plt.close(fig)
    assert len(ax.collections) == 2  # the curve's band and the control's
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--", ":"]
    assert ax.get_lines()[2].get_color() != ax.get_lines()[1].get_color()  # baseline and control tell apart


@pytest.mark.parametrize("differs", [False, True])
def test_information_flow_sink_draws_one_row_when_both_sink_choices_agree(differs):
    rows = [{"known_id": f, "source": s, "layer": layer, "relative_change": -10.0 * (s == "subject") + f,
             "subject": "starts the prompt"} for f in range(3) for s in ("subject", "last") for layer in range(4)]
    one = pd.DataFrame(rows)
    other = one.assign(relative_change=one.relative_change - 5.0 * differs)
    both = pd.concat([one.assign(sets="sink kept out"), other.assign(sets="official sets")], ignore_index=True)
    fig = plotting.information_flow_sink(both, model="toy", k=3)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    plt.close(fig)
    assert len(panels) == (2 if differs else 1)
