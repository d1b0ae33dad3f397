"""Exact merge of streaming statistics collected apart (shards of one calibration set).

Every field of :class:`TensorStats` is a function of the set of images alone (see
:mod:`rescompile.calibrate.collect`): min and max merge by min and max, counts by sums, the
histograms by re-binning each to the widest edge (groups of 2^k bins, exact) and adding. The
merged statistics are those of one process over all images, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from rescompile.calibrate.collect import TensorStats, rebin
from rescompile.errors import UsageError


def merge_tensor(parts: Sequence[TensorStats]) -> TensorStats:
    """One tensor's statistics over the union of the images of ``parts``.

    Raises:
        UsageError: the parts disagree on the tensor name or the number of bins.
    """
    if not parts:
        raise UsageError("nothing to merge: no statistics")
    first = parts[0]
    if any(p.name != first.name or p.bins != first.bins for p in parts):
        raise UsageError(f"cannot merge statistics of {first.name!r}: the shards differ in tensor or bins")
    seen = [p for p in parts if p.hist.size]
    edge = max((p.edge for p in seen), default=0.0)
    hist = np.zeros(2 * first.bins, np.int64) if seen else np.zeros(0, np.int64)
    for p in seen:
        hist += rebin(p.hist, int(round(edge / p.edge))) if p.edge != edge else p.hist
    return dataclasses.replace(
        first,
        min=min((p.min for p in parts), default=math.inf),
        max=max((p.max for p in parts), default=-math.inf),
        count=sum(p.count for p in parts),
        hist=hist,
        edge=edge,
        hist_count=sum(p.hist_count for p in parts),
        runs=max(p.runs for p in parts),
    )


def merge_stats(parts: Sequence[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """``{tensor: TensorStats}`` of all shards, in the first shard's tensor order.

    Raises:
        UsageError: the shards calibrated different tensors.
    """
    if not parts:
        raise UsageError("nothing to merge: no shards")
    names = list(parts[0])
    if any(list(p) != names for p in parts[1:]):
        raise UsageError("cannot merge calibration shards that calibrated different tensors")
    return {n: merge_tensor([p[n] for p in parts]) for n in names}
