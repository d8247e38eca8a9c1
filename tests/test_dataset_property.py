"""Property-based: any malformed dataset ends in the project's own error, never a raw
TypeError / KeyError / JSONDecodeError, and nothing is written under results/."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.paper import facts as data
from utils.paths import output_root

VALID = {"known_id": 0, "subject": "Beats Music", "attribute": "Apple", "template": "{} is owned by",
         "prompt": "Beats Music is owned by", "relation_id": "P127"}
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                           max_size=3),
                           max_leaves=5)


def _valid_records(n):
    return [{**VALID, "known_id": i, "subject": f"S{i}", "prompt": f"S{i} is owned by"} for i in range(n)]


@st.composite
def broken_records(draw):
    """A valid dataset with one or more defects: a missing field, a wrong type, an empty
    string, a duplicate id, or a record that is not an object."""
    records = _valid_records(draw(st.integers(1, 6)))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(records) - 1))
        field = draw(st.sampled_from(data.RECORD_FIELDS))
        defect = draw(st.sampled_from(["missing", "wrong type", "empty", "duplicate", "not an object"]))
        if defect == "missing" and isinstance(records[i], dict):
            records[i].pop(field, None)
        elif defect == "wrong type":
            wrong = draw(json_values.filter(
                lambda v: not (isinstance(v, int) and not isinstance(v, bool)) if field == "known_id"
                else not (isinstance(v, str) and v.strip())))
            records[i] = {**records[i], field: wrong} if isinstance(records[i], dict) else records[i]
        elif defect == "empty":
            if isinstance(records[i], dict) and field != "known_id":
                records[i][field] = draw(st.sampled_from(["", " ", "\n\t"]))
            else:
                records[i] = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        elif defect == "duplicate" and len(records) > 1:
            j = (i + 1) % len(records)
            if isinstance(records[i], dict) and isinstance(records[j], dict):
                records[j] = {**records[j], "known_id": records[i].get("known_id", 0)}
                records[i].setdefault("known_id", 0)
            else:
                records[i] = None
        else:
            records[i] = draw(json_values.filter(lambda v: not isinstance(v, dict)))
    return json.dumps(records)


malformed = st.one_of(
    broken_records(),
    st.builds(json.dumps, json_values.filter(lambda v: not isinstance(v, list))),  # not a list
    st.just("[]"),
    st.builds(lambda text, cut: text[:cut], st.builds(lambda n: json.dumps(_valid_records(n)), st.integers(1, 3)),
              st.integers(0, 40)),  # cut short
    st.text(max_size=30).filter(lambda t: not _parses_to_list(t)),  # anything at all
)


def _parses_to_list(text):
    try:
        return isinstance(json.loads(text), list)
    except ValueError:
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=malformed)
def test_every_malformed_dataset_ends_in_a_dataset_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "facts.json"
        path.write_text(text)
        for call in (lambda: data.load_facts(path), lambda: data.known_set(object(), path)):
            try:
                call()
            except data.DatasetError as err:
                assert "facts.json" in str(err)
            else:
                raise AssertionError(f"accepted a malformed dataset: {text!r}")
    assert not (output_root() / "results").exists()


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 8), keep=st.integers(0, 10))
def test_every_valid_dataset_loads(n, keep):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "facts.json"
        path.write_text(json.dumps(_valid_records(n)))
        facts = data.load_facts(path, keep)
    assert facts.known_id.tolist() == list(range(min(n, keep) if keep else n))
    assert list(facts.columns) == list(data.RECORD_FIELDS)
