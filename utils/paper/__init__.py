"""The paper: ``facts`` (the dataset, a typed fact, known sets, position sets), ``attributes``
(the attribute sets of §4), one module per section (``information_flow`` §3, ``enrichment`` §4,
``extraction`` §5), ``by_layer`` (§5 split by extracting layer and head, derived from the raw
tables), ``rules`` (the pre-stated rules that judge the claims), ``ledger`` (the claims on every
model) and ``conclusions`` (each notebook's closing text, generated from its tables and the
ledger). Built on :mod:`utils.core` and :mod:`utils.runs`.
"""
