"""FP32 reference outputs: computed from a runner, or saved to / loaded from ``ref.npz``.

A saved reference holds the preprocessed inputs, the labels and the FP32 logits, so a
machine without PyTorch (a Jetson with only TensorRT) validates a candidate against logits
computed on a workstation. The file loads without pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.errors import UsageError
from rescompile.io import _umask

REFERENCE_SCHEMA = "rescompile.reference/1"
Batches = Iterator[tuple[np.ndarray, np.ndarray | None]]


@dataclass
class ValidationInputs:
    """Preprocessed validation inputs, streamed in batches as often as needed."""

    name: str
    count: int
    batches: Callable[[int], Batches]
    class_names: list[str] = field(default_factory=list)
    part: Callable[[int, int], ValidationInputs] | None = None  # samples start:stop (a shard, for Ray tasks)
    pick: Callable[[np.ndarray], ValidationInputs] | None = None  # the samples at ascending positions (a split)

    @classmethod
    def from_source(cls, source: Any, pre: Any) -> ValidationInputs:
        """From a DataSource and its Preprocess (images are decoded and normalized per batch)."""

        def part(start: int, stop: int) -> ValidationInputs:
            from rescompile.data.sources import take

            return cls.from_source(take(source, np.arange(start, stop), source.name), pre)

        def pick(idx: np.ndarray) -> ValidationInputs:
            from rescompile.data.sources import take

            return cls.from_source(take(source, np.asarray(idx), source.name), pre)

        return cls(source.name, source.count, lambda bs: source.batches(pre, bs), list(source.class_names), part, pick)

    @classmethod
    def from_arrays(cls, name: str, inputs: np.ndarray, labels: np.ndarray | None) -> ValidationInputs:
        def batches(bs: int) -> Batches:
            for s in range(0, len(inputs), bs):
                yield inputs[s : s + bs], None if labels is None else labels[s : s + bs]

        def part(start: int, stop: int) -> ValidationInputs:
            return cls.from_arrays(name, inputs[start:stop], None if labels is None else labels[start:stop])

        def pick(idx: np.ndarray) -> ValidationInputs:
            return cls.from_arrays(name, inputs[idx], None if labels is None else labels[idx])

        return cls(name, len(inputs), batches, part=part, pick=pick)

    def outputs(
        self,
        runner: Any,
        batch_size: int,
        *,
        keep_inputs: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``runner.infer`` over every batch, in order: ``(logits, labels or None, inputs or None)``.

        The inputs are kept (as float32) only with ``keep_inputs``; ``on_batch(n)`` follows each batch of n.
        """
        logits, labels, kept = [], [], []
        for x, y in self.batches(batch_size):
            logits.append(runner.infer(x))
            if y is not None:
                labels.append(y)
            if keep_inputs:
                kept.append(np.asarray(x, np.float32))
            if on_batch is not None:
                on_batch(len(x))
        return (np.concatenate(logits), np.concatenate(labels) if labels else None, np.concatenate(kept) if keep_inputs else None)

    def select(self, idx: np.ndarray, name: str | None = None) -> ValidationInputs:
        """The samples at positions ``idx`` (ascending), same class names; ``name``: the subset's name."""
        if self.pick is None:
            raise ValueError(f"{self.name}: these inputs cannot be subset")
        out = self.pick(np.asarray(idx, dtype=np.int64))
        out.name, out.class_names = name or self.name, list(self.class_names)
        return out

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` inputs (fewer when the set is smaller)."""
        parts, got = [], 0
        for x, _ in self.batches(max(1, min(n, 256))):
            parts.append(x[: n - got])
            got += len(parts[-1])
            if got >= n:
                break
        return np.concatenate(parts)


@dataclass
class ReferenceOutputs:
    """FP32 logits for a validation set, with its labels and (when kept) its inputs."""

    logits: np.ndarray  # N x classes, float32
    labels: np.ndarray | None
    inputs: np.ndarray | None  # N x C x H x W float32, preprocessed
    meta: dict[str, Any] = field(default_factory=dict)  # runner, source, preprocess, model
    seconds: float | None = None  # time the reference took here (None when loaded from a file)

    @property
    def runner(self) -> str:
        return str(self.meta.get("runner", "reference"))

    def select(self, idx: np.ndarray) -> ReferenceOutputs:
        """The reference of the samples at positions ``idx`` (meta shared, no time of its own)."""
        idx = np.asarray(idx, dtype=np.int64)
        return ReferenceOutputs(
            self.logits[idx],
            None if self.labels is None else self.labels[idx],
            None if self.inputs is None else self.inputs[idx],
            dict(self.meta),
        )

    def as_inputs(self) -> ValidationInputs:
        if self.inputs is None:
            raise UsageError("this reference holds no inputs to validate a candidate on")
        inputs = ValidationInputs.from_arrays(str(self.meta.get("source", "saved reference")), self.inputs, self.labels)
        inputs.class_names = [str(n) for n in self.meta.get("class_names") or []]
        return inputs


def save_reference(path: Path, ref: ReferenceOutputs) -> None:
    """Write ``ref`` (with its inputs) as a compressed .npz, atomically.

    Raises:
        UsageError: the reference was computed without keeping its inputs.
    """
    if ref.inputs is None:
        raise UsageError("cannot save a reference without its inputs")
    path = Path(path)
    if path.suffix != ".npz":
        raise UsageError(f"--save-reference needs a .npz path, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "inputs": np.ascontiguousarray(ref.inputs, np.float32),
        "logits": np.ascontiguousarray(ref.logits, np.float32),
        "meta": np.asarray(json.dumps({"schema": REFERENCE_SCHEMA, **ref.meta}, sort_keys=True, default=str)),
    }
    if ref.labels is not None:
        arrays["labels"] = np.ascontiguousarray(ref.labels, np.int64)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_reference(path: Path) -> ReferenceOutputs:
    """Read a reference written by :func:`save_reference` (no pickle, no PyTorch).

    Raises:
        UsageError: missing or unreadable file, wrong schema, inconsistent arrays.
    """
    from rescompile.readers import load_npz, parse_json

    z = load_npz(path, "rescompile reference (.npz)")
    missing = [k for k in ("inputs", "logits", "meta") if k not in z]
    if missing:
        raise UsageError(
            f"{path} is not a rescompile reference (missing {', '.join(missing)})", hint="write one with --save-reference ref.npz"
        )
    if z["meta"].dtype.kind != "U" or z["meta"].ndim != 0:
        raise UsageError(f"{path} is not a rescompile reference ('meta' is not a JSON string)")
    meta = parse_json(str(z["meta"]), f"{path} 'meta'", "rescompile reference")
    if not isinstance(meta, dict):
        raise UsageError(f"{path} is not a rescompile reference ('meta' is not a JSON object)")
    for k, kinds in (("inputs", "fiu"), ("logits", "fiu"), ("labels", "iu")):
        if k in z and z[k].dtype.kind not in kinds:
            raise UsageError(f"{path}: array {k!r} is {z[k].dtype}, expected numbers")
    inputs, logits = z["inputs"].astype(np.float32), z["logits"].astype(np.float32)
    labels = z["labels"].astype(np.int64) if "labels" in z else None
    if meta.get("schema") != REFERENCE_SCHEMA:
        raise UsageError(f"{path}: reference schema {meta.get('schema')!r}, expected {REFERENCE_SCHEMA!r}")
    shapes_ok = inputs.ndim == 4 and logits.ndim == 2 and len(inputs) == len(logits)
    if not shapes_ok or (labels is not None and (labels.ndim != 1 or len(labels) != len(logits))):
        raise UsageError(f"{path}: inconsistent arrays (inputs {inputs.shape}, logits {logits.shape})")
    if not (np.isfinite(inputs).all() and np.isfinite(logits).all()):
        raise UsageError(f"{path}: inputs or logits hold NaN or Inf")
    if len(logits) == 0 or logits.shape[1] == 0:
        raise UsageError(f"{path}: the reference holds no samples")
    if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise UsageError(f"{path}: labels must be class indices 0..{logits.shape[1] - 1}")
    meta.pop("schema")
    return ReferenceOutputs(logits, labels, inputs, meta)
