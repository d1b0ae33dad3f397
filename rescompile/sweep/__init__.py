"""``rescompile sweep``: a grid of builds on Ray (``grid.py``) and its summary (``summary.py``).

Above the pipeline, whose builds it runs.
"""
