"""What is built around the paper: ``plotting`` (figures in one style), ``findings`` (the
README's section, generated from the results), ``timings`` (the README's run times, read from
the executed notebooks' papermill records), ``book`` (the reader's edition), ``bench``
(benchmarks), ``exercises`` (the checkers of the exercise notebooks).
"""
