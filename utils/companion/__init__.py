"""What is built around the paper: ``plotting`` (figures in one style), ``findings`` (the
README's section, generated from the results), ``book`` (the reader's edition), ``bench``
(benchmarks), ``dissect`` (the paper's three steps on one prompt of one's own, one figure),
``exercises`` (the checkers of the exercise notebooks).
"""
