"""Runs and provenance: ``results`` (tables with their metadata, cached tables, resumable sweeps
journaled fact by fact), ``runid`` (which run and which model each table comes from, and the
refusal to combine unlike ones), ``store`` (files written atomically, the locks that keep two
runs from writing one folder at once), ``environment`` (the pinned versions), ``progress`` (one
line per loop).

It knows nothing of models or of the paper: a table's metadata comes from the model's own
``describe()``; it imports nothing of this package but :mod:`utils.paths`.
"""
