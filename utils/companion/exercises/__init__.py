"""Checkers for the exercise notebooks in ``exercises/``, one module per notebook.

Each ``check_*`` runs a student's function against this library on real facts (the embedded
smollm2-135m and ``data/facts_small.json``) and either prints what passed or raises
:class:`ExerciseFailed` saying which input went wrong, what was expected, what came back and a
hint. An unsolved stub (``raise NotImplementedError``) gives :class:`NotImplementedYet`, a
failure of its own. The reference solutions are in ``exercises/solutions/``; the notebooks never
import them.
"""

from .attribute_extraction import (
    check_extraction_event,
    check_head_mapping,
    check_head_shares,
    check_sublayer_updates,
)
from .common import ExerciseFailed, NotImplementedYet, model, small_facts, small_known_facts
from .information_flow import (
    check_flow_curve,
    check_knockout_probs,
    check_relative_change,
    check_position_sets,
    check_window,
)
from .interventions import check_blocked_update, check_knocked_out_state, check_patched_update
from .known_facts import check_attribute_first_token, check_next_token, check_subject_positions
from .reading_results import check_claim_8_verdict, check_flow_reading, check_my_fact, results_root
from .subject_enrichment import check_attributes_rate, check_clean_tokens, check_hidden_state, check_knockout_windows

EXERCISES = {
    "00.1": ("subject_positions", check_subject_positions),
    "00.2": ("attribute_first_token", check_attribute_first_token),
    "00.3": ("next_token", check_next_token),
    "01.1": ("window", check_window),
    "01.2": ("position_sets", check_position_sets),
    "01.3": ("knockout_probs", check_knockout_probs),
    "01.4": ("relative_change", check_relative_change),
    "01.5": ("flow_curve", check_flow_curve),
    "02.1": ("hidden_state", check_hidden_state),
    "02.2": ("clean_tokens", check_clean_tokens),
    "02.3": ("attributes_rate", check_attributes_rate),
    "02.4": ("knockout_windows", check_knockout_windows),
    "03.1": ("sublayer_updates", check_sublayer_updates),
    "03.2": ("extraction_event", check_extraction_event),
    "03.3": ("head_shares", check_head_shares),
    "03.4": ("head_mapping", check_head_mapping),
    "04.1": ("blocked_update", check_blocked_update),
    "04.2": ("patched_update", check_patched_update),
    "04.3": ("knocked_out_state", check_knocked_out_state),
    "05.1": ("flow_reading", check_flow_reading),
    "05.2": ("claim_8_verdict", check_claim_8_verdict),
    "05.3": ("my_fact", check_my_fact),
}
"""Exercise id -> (the function the student writes, its checker)."""

__all__ = ["EXERCISES", "ExerciseFailed", "NotImplementedYet", "model", "results_root", "small_facts",
           "small_known_facts"] + sorted(
    checker.__name__ for _, checker in EXERCISES.values())
