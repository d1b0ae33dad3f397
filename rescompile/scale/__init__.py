"""Running on Ray (optional extra ``[ray]``): connecting (``cluster.py``) and fault-tolerant task groups (``tasks.py``).

Only the foundations below it: the work itself (calibration and validation shards, sweeps) lives with its layer
(``calibrate/on_ray.py``, ``validate/on_ray.py``, ``sweep/``) and hands its tasks to these.
"""
