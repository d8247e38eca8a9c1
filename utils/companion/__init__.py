"""What is built around the paper: ``plotting`` (figures in one style), ``findings`` (the
README's section, generated from the results), ``timings`` (the README's run times, read from
the executed notebooks' papermill records), ``book`` (the reader's edition), ``bench``
(every notebook sweep's rate), ``bench_scale`` (the sweeps on the paper's model shapes, random
weights), ``gpu_check`` (one command for a first GPU), ``dissect`` (the paper's three steps on
one prompt of one's own, one figure), ``lab_figure`` (the lab's slide: the paper's Figure 1 on
the model's own layers), ``exercises`` (the checkers of the exercise notebooks).
"""
