"""Reference solutions for exercises/05_reading_results_exercises.ipynb (never imported by it)."""

import pandas as pd

from utils import dissect
from utils.companion.exercises.reading_results import results_root


def flow_reading():
    """05.1 Read off notebook 01's summary for smollm2-135m: where each curve is deepest."""
    summary = pd.read_csv(results_root("smollm2-135m", "information_flow_summary") / "results" / "smollm2-135m"
                          / "information_flow_summary.csv")
    at = summary[(summary.facts_group == "all") & (summary.sink == "prepend")].set_index("source").at_layer
    relation, subject = int(at["non-subject"]), int(at["subject"])
    first = "relation" if relation < subject else "subject" if subject < relation else "same"
    return {"relation_layer": relation, "subject_layer": subject, "first": first}


def claim_8_verdict(share, difference):
    """05.2 The ledger's rule: 'most' needs the share's whole interval above one half, 'more than'
    needs the difference's interval above 0."""
    most, more = share[1] > 0.5, difference[1] > 0
    return "holds" if most and more else "partly" if most else "does not hold"


def my_fact(lm):
    """05.3 A fact of one's own, and what its dissection shows (here read from the Dissection's
    fields; a student reads them off d.figure())."""
    prompt, subject, attribute = "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris"
    d = dissect(lm, prompt, subject=subject, attribute=attribute)
    blocked = d.tables["blocked"].set_index("variant").value  # empty when attention extracts nowhere
    survives = bool(blocked.get("renormalised", 0)) if len(blocked) else None
    return {"prompt": prompt, "subject": subject, "attribute": attribute, "known": d.known,
            "extracting_layer": d.extracting_layer, "survives": survives,
            "differs": f"the attribute is extracted at layer {d.extracting_layer} of {lm.n_layers}, by head "
                       f"{d.extracting_head}, and the prediction is {d.prediction!r}"}
