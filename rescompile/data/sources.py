"""Data sources for calibration and validation: the shipped demo set, .npy/.npz, image folders.

A source yields batches of model-ready float32 inputs (and labels when known) without
holding the whole set in memory when it comes from image files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rescompile.data.preprocess import Preprocess, load_image, normalize_pixels
from rescompile.errors import UsageError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class DataSource:
    """A sized set of samples; ``batches`` preprocesses lazily."""

    name: str
    count: int
    arrays: np.ndarray | None = None  # N,C,H,W (uint8 pixels or float32 ready inputs)
    files: list[Path] = field(default_factory=list)
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)

    def batches(self, pre: Preprocess, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            if self.arrays is not None:
                chunk = self.arrays[start:stop]
                x = normalize_pixels(chunk, pre) if chunk.dtype == np.uint8 else chunk.astype(np.float32)
            else:
                x = normalize_pixels(np.stack([load_image(f, pre) for f in self.files[start:stop]]), pre)
            if not np.isfinite(x).all():
                raise UsageError(f"{self.name}: samples {start}..{stop - 1} contain NaN or Inf")
            yield x, None if self.labels is None else self.labels[start:stop]

    def fingerprint(self) -> str:
        """Content hash of the samples (for caches and the manifest)."""
        import hashlib

        h = hashlib.sha256()
        if self.arrays is not None:
            h.update(str(self.arrays.shape).encode() + str(self.arrays.dtype).encode())
            h.update(np.ascontiguousarray(self.arrays).tobytes())
        for f in self.files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


def _from_arrays(name: str, images: np.ndarray, labels: np.ndarray | None, layout: str) -> DataSource:
    if images.ndim == 3:  # N,H,W grayscale
        images = images[:, None]
    elif images.ndim == 4 and layout == "nhwc":
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim != 4:
        raise UsageError(f"{name}: expected images of shape N,C,H,W or N,H,W,C, got {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"{name}: images must be uint8 pixels or float inputs, got {images.dtype}")
    if labels is not None and len(labels) != len(images):
        raise UsageError(f"{name}: {len(images)} images but {len(labels)} labels")
    return DataSource(name, len(images), arrays=np.ascontiguousarray(images),
                      labels=None if labels is None else labels.astype(np.int64))  # fmt: skip


def _load_npz(path: Path, layout: str) -> DataSource:
    try:
        if path.suffix == ".npy":
            return _from_arrays(str(path), np.load(path, allow_pickle=False), None, layout)
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            img_key = next((k for k in ("images", "inputs", "x", "data") if k in z), keys[0] if len(keys) == 1 else None)
            if img_key is None:
                raise UsageError(f"{path}: no 'images' array (found {', '.join(keys) or 'none'})")
            lab_key = next((k for k in ("labels", "y", "targets") if k in z), None)
            return _from_arrays(str(path), z[img_key], None if lab_key is None else z[lab_key], layout)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def _load_folder(path: Path) -> DataSource:
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    if subdirs:
        for i, d in enumerate(subdirs):
            found = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [i] * len(found)
    else:
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    return DataSource(str(path), len(files), files=files,
                      labels=np.asarray(labels, np.int64) if subdirs else None,
                      class_names=[d.name for d in subdirs])  # fmt: skip


def open_source(spec: str | Path, *, layout: str = "nchw", limit: int | None = None, seed: int = 0) -> DataSource:
    """Open ``demo-calib``/``demo-val``, a .npy/.npz file, or an image folder.

    Args:
        spec: the source; ``limit`` picks a seeded subset (stratified when labels exist).

    Raises:
        UsageError: missing path, unreadable file, or no samples.
    """
    if str(spec) in ("demo-calib", "demo-val"):
        src = _load_npz(ASSETS / f"demo_{str(spec)[5:]}.npz", "nchw")
        src.name = str(spec)
    else:
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"data path not found: {path}")
        if path.is_dir():
            src = _load_folder(path)
        elif path.suffix.lower() in (".npy", ".npz"):
            src = _load_npz(path, layout)
        else:
            raise UsageError(f"{path}: expected a folder of images or a .npy/.npz file")
    if src.count == 0:
        raise UsageError(f"{src.name} holds no samples", hint="a folder needs .jpg/.png/.bmp/.webp files")
    if limit is not None and limit < src.count:
        src = subset(src, limit, seed)
    return src


def subset(src: DataSource, n: int, seed: int) -> DataSource:
    """A seeded subset of ``n`` samples, stratified by label when labels exist; order preserved."""
    rng = np.random.default_rng(seed)
    if src.labels is None:
        idx = np.sort(rng.choice(src.count, n, replace=False))
    else:
        classes, counts = np.unique(src.labels, return_counts=True)
        quota = np.floor(counts / src.count * n).astype(int)
        for i in np.argsort(-(counts / src.count * n - quota))[: n - quota.sum()]:
            quota[i] += 1
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(src.labels == c), q, replace=False)
                                      for c, q in zip(classes, quota, strict=True)]))  # fmt: skip
    return DataSource(
        f"{src.name}[{n}]", n,
        arrays=None if src.arrays is None else src.arrays[idx],
        files=[src.files[i] for i in idx] if src.files else [],
        labels=None if src.labels is None else src.labels[idx], class_names=src.class_names,
    )  # fmt: skip


def check_shape(src: DataSource, pre: Preprocess, input_shape: tuple[int, int, int]) -> None:
    """Raise UsageError when the source's samples cannot feed a model taking ``input_shape``."""
    if src.arrays is not None:
        got = tuple(src.arrays.shape[1:])
        if got != tuple(input_shape):
            raise UsageError(f"{src.name}: samples are {got} (C,H,W) but the model takes {tuple(input_shape)}")
    elif (pre.channels, pre.size, pre.size) != tuple(input_shape):
        raise UsageError(
            f"preprocessing {pre.name!r} gives {(pre.channels, pre.size, pre.size)} but the model takes {tuple(input_shape)}"
        )
