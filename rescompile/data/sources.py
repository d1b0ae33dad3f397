"""Data sources for calibration and validation: the shipped demo set, .npy/.npz, image folders.

A source yields batches of model-ready float32 inputs (and labels when known). Image folders
and ``.npy`` files are read batch by batch from disk, so memory does not grow with the number
of samples; ``.npz`` archives are loaded whole (they are compressed, so they cannot be read
in pieces). Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.data.layout import check_layout
from rescompile.data.preprocess import Preprocess, load_image, normalize_pixels
from rescompile.errors import UsageError, environment_fault

ASSETS = Path(__file__).resolve().parents[1] / "assets"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_IMAGE_KEYS = ("images", "inputs", "x", "data")
_LABEL_KEYS = ("labels", "y", "targets")


class NpyFile:
    """A ``.npy`` array read row by row from disk (no pickle, no memory map, no full load)."""

    def __init__(self, path: Path) -> None:
        from rescompile.readers import check_file, describe

        self.path = check_file(path, "array file")
        with open(self.path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"unsupported .npy format version {version}")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
            except Exception as exc:  # numpy parses the header with ast/tokenize: any of their errors means a corrupt header
                fh.seek(0)
                head = fh.read(64)
                if head.startswith(b"PK"):
                    raise UsageError(
                        f"{self.path} is a zip archive (an .npz?), not a NumPy .npy array", hint=f"rename it to {self.path.stem}.npz"
                    ) from None
                if not head.startswith(b"\x93NUMPY"):
                    raise UsageError(f"{self.path} is not a NumPy .npy array: it is {describe(head)}") from None
                raise UsageError(f"cannot read {self.path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            self.offset = fh.tell()
        if dtype.hasobject:
            raise UsageError(f"{self.path} holds Python objects; rescompile loads arrays without pickle")
        if fortran and len(shape) > 1:
            raise UsageError(f"{self.path} is stored in Fortran order; save it with np.save(np.ascontiguousarray(a))")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        # Python integers: a forged header's dimensions must not overflow into a small, plausible size
        row_bytes = int(np.prod(shape[1:], dtype=object)) * dtype.itemsize if shape else 0
        expected = self.offset + row_bytes * (shape[0] if shape else 0)
        if self.path.stat().st_size < expected:
            raise UsageError(f"{self.path} is truncated: {self.path.stat().st_size} bytes, the header promises {expected}")
        self.row_bytes = row_bytes

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (ascending) as an in-memory array; contiguous runs are read with one call."""
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        if len(idx) == 0:
            return out
        flat = out.reshape(len(idx), -1).view(np.uint8).reshape(len(idx), self.row_bytes)
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        with open(self.path, "rb") as fh:
            for run in np.split(np.arange(len(idx)), breaks):
                fh.seek(self.offset + int(idx[run[0]]) * self.row_bytes)
                n = fh.readinto(flat[run[0] : run[-1] + 1].data.cast("B"))
                if n != len(run) * self.row_bytes:
                    raise UsageError(f"{self.path} is truncated")
        return out

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()


Arrays = np.ndarray | NpyFile


@dataclass
class DataSource:
    """A sized set of samples; ``batches`` reads and preprocesses lazily.

    Exactly one of ``arrays`` (N,C,H,W / N,H,W,C / N,H,W, uint8 pixels or float32 model inputs)
    and ``files`` is set. ``index`` selects rows of ``arrays`` (a subset) without copying them.
    """

    name: str
    count: int
    arrays: Any = None  # np.ndarray | NpyFile
    files: list[Path] = field(default_factory=list)
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    layout: str = "nchw"  # layout of ``arrays`` when 4-D
    index: np.ndarray | None = None
    root: Path | None = None  # image folder (file names in the fingerprint are relative to it)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """C,H,W of one array sample as the model will see it; None for image files."""
        if self.arrays is None:
            return None
        s = tuple(self.arrays.shape[1:])
        if len(s) == 2:
            return (1, *s)
        return (s[2], s[0], s[1]) if self.layout == "nhwc" and len(s) == 3 else s

    def _array_rows(self, start: int, stop: int) -> np.ndarray:
        rows = np.arange(start, stop) if self.index is None else self.index[start:stop]
        a = (
            self.arrays.rows(rows)
            if isinstance(self.arrays, NpyFile)
            else (self.arrays[start:stop] if self.index is None else self.arrays[rows])
        )
        if a.ndim == 3:
            a = a[:, None]
        elif self.layout == "nhwc":
            a = a.transpose(0, 3, 1, 2)
        return a

    def batches(self, pre: Preprocess, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield ``(inputs float32 N,C,H,W, labels or None)``.

        Raises:
            UsageError: an unreadable image (named), or NaN/Inf in float inputs (sample named).
        """
        pool = None
        if self.files:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=2)  # Pillow decodes without the GIL
        try:
            for start in range(0, self.count, batch_size):
                stop = min(start + batch_size, self.count)
                if self.arrays is not None:
                    chunk = self._array_rows(start, stop)
                    if chunk.dtype == np.uint8:
                        x = normalize_pixels(chunk, pre)
                    else:
                        with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: refused below
                            x = np.ascontiguousarray(chunk, dtype=np.float32)
                        _check_finite(x, self.name, start)
                elif pool is not None:
                    x = normalize_pixels(np.stack(list(pool.map(lambda f: load_image(f, pre), self.files[start:stop]))), pre)
                else:
                    raise UsageError(f"{self.name} holds neither arrays nor image files")
                yield x, None if self.labels is None else self.labels[start:stop]
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def fingerprint(self) -> str:
        """Content hash of the samples and labels (for caches and the manifest)."""
        h = hashlib.sha256()
        h.update(f"layout={self.layout};count={self.count};".encode())
        if isinstance(self.arrays, NpyFile):
            h.update(f"{self.arrays.shape}{self.arrays.dtype}".encode() + self.arrays.sha256().encode())
        elif self.arrays is not None:
            h.update(f"{self.arrays.shape}{self.arrays.dtype}".encode())
            h.update(np.ascontiguousarray(self.arrays).tobytes())
        if self.index is not None:
            h.update(b"index" + np.ascontiguousarray(self.index, np.int64).tobytes())
        for f in self.files:
            rel = f.relative_to(self.root).as_posix() if self.root is not None else f.name
            h.update(rel.encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        if self.labels is not None:
            h.update(b"labels" + np.ascontiguousarray(self.labels, np.int64).tobytes())
        return h.hexdigest()


def _check_finite(x: np.ndarray, name: str, start: int) -> None:
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UsageError(f"{name}: sample {start + i} holds NaN or Inf", hint="calibration and validation data must be finite numbers")


def _from_arrays(name: str, images: Arrays, labels: np.ndarray | None, layout: str) -> DataSource:
    check_layout(layout)
    if images.ndim not in (3, 4):
        raise UsageError(f"{name}: expected images of shape N,C,H,W or N,H,W,C (or N,H,W), got {tuple(images.shape)}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"{name}: images must be uint8 pixels or float model inputs, got {images.dtype}")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(images):
            raise UsageError(f"{name}: {len(images)} images but labels of shape {tuple(labels.shape)}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise UsageError(f"{name}: labels must be integers, got {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= 1 << 31):
            raise UsageError(f"{name}: labels must be class indices 0..N-1, found {labels.min()}..{labels.max()}")
        labels = labels.astype(np.int64)
    if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
        for start in range(0, len(images), 4096):
            part = images[start : start + 4096]
            with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: refused as such
                part32 = np.asarray(part, np.float32)
            _check_finite(part32, name, start)
    return DataSource(name, len(images), arrays=images, labels=labels, layout=layout)


def _load_arrays(path: Path, layout: str) -> DataSource:
    if path.suffix.lower() == ".npy":
        return _from_arrays(str(path), NpyFile(path), None, layout)
    from rescompile.readers import load_npz, short

    arrays = load_npz(path, "NumPy archive of images (.npz)")
    keys = list(arrays)
    img_key = next((k for k in _IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if img_key is None:
        raise UsageError(
            f"{path}: no 'images' array (found {short(keys) if keys else 'none'})",
            hint="name the images array 'images' (and the labels 'labels'): np.savez(p, images=x, labels=y)",
        )
    lab_key = next((k for k in _LABEL_KEYS if k in keys), None)
    images, labels = arrays[img_key], None if lab_key is None else arrays[lab_key]
    return _from_arrays(str(path), images, labels, layout)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file())


def _load_folder(path: Path) -> DataSource:
    """Class subfolders (labels = index of the sorted folder names, as torchvision's ImageFolder) or a flat folder."""
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    if subdirs:
        for i, d in enumerate(subdirs):
            found = _images_in(d, recursive=True)
            if not found:
                raise UsageError(f"class folder {d} holds no images", hint="every class subfolder needs .jpg/.jpeg/.png/.bmp/.webp files")
            files += found
            labels += [i] * len(found)
    else:
        files = _images_in(path, recursive=False)
    return DataSource(
        str(path),
        len(files),
        files=files,
        root=path,
        labels=np.asarray(labels, np.int64) if subdirs else None,
        class_names=[d.name for d in subdirs],
    )


def open_source(spec: str | Path, *, layout: str = "nchw", limit: int | None = None, seed: int = 0) -> DataSource:
    """Open ``demo-calib``/``demo-val``, a .npy/.npz file, or an image folder.

    Args:
        spec: the source.
        layout: layout of 4-D arrays in .npy/.npz files: ``nchw`` or ``nhwc``.
        limit: pick a seeded subset of this many samples (stratified by label when labels exist).
        seed: the subset's seed.

    Raises:
        UsageError: missing path, unreadable file, an empty folder, or no samples.
    """
    if str(spec) in ("demo-calib", "demo-val"):
        asset = ASSETS / f"demo_{str(spec)[5:]}.npz"
        if not asset.is_file():
            raise UsageError(f"the shipped demo set {asset.name} is missing from {ASSETS}")
        src = _load_arrays(asset, "nchw")
        src.name = str(spec)
        from rescompile.data.fashion_mnist import CLASSES

        src.class_names = list(CLASSES)  # the demo is Fashion-MNIST: reports say "6 (Shirt)", not "6"
    else:
        path = Path(spec)
        if not path.exists():
            raise UsageError(f"data path not found: {path}")
        if path.is_dir():
            try:
                src = _load_folder(path)
            except OSError as exc:  # an unreadable subfolder, a symlink loop (an I/O error is the machine's: exit 5)
                reason = f"{exc.strerror or exc} ({exc.filename})"
                raise environment_fault(exc, path) or UsageError(f"cannot list images under {path}: {reason}") from None
        elif path.suffix.lower() in (".npy", ".npz"):
            src = _load_arrays(path, layout)
        else:
            raise UsageError(f"{path}: expected a folder of images or a .npy/.npz file")
    if src.count == 0:
        raise UsageError(f"{src.name} holds no samples", hint="a folder needs .jpg/.jpeg/.png/.bmp/.webp files")
    if limit is not None and limit < src.count:
        src = subset(src, limit, seed)
    return src


def subset(src: DataSource, n: int, seed: int) -> DataSource:
    """A seeded subset of ``n`` samples, stratified by label when labels exist; order preserved."""
    return take(src, subset_indices(src, n, seed), f"{src.name}[{n}]")


def subset_indices(src: DataSource, n: int, seed: int) -> np.ndarray:
    """Positions (ascending) of a seeded subset of ``n`` of ``src``'s samples, stratified by label when labels exist."""
    if n < 1:
        raise UsageError(f"a subset needs at least one sample, not {n}")
    rng = np.random.default_rng(seed)
    if src.labels is None:
        return np.sort(rng.choice(src.count, n, replace=False))
    classes, counts = np.unique(src.labels, return_counts=True)
    quota = np.floor(counts / src.count * n).astype(int)
    for i in np.argsort(-(counts / src.count * n - quota), kind="stable")[: n - quota.sum()]:
        quota[i] += 1
    return np.sort(
        np.concatenate([rng.choice(np.flatnonzero(src.labels == c), q, replace=False) for c, q in zip(classes, quota, strict=True)])
    )


def take(src: DataSource, idx: np.ndarray, name: str) -> DataSource:
    """The samples of ``src`` at positions ``idx`` (ascending), named ``name``; arrays are not copied."""
    rows = idx if src.index is None else src.index[idx]
    return replace(
        src,
        name=name,
        count=len(idx),
        index=rows if src.arrays is not None else None,
        files=[src.files[i] for i in idx] if src.files else [],
        labels=None if src.labels is None else src.labels[idx],
    )


def check_shape(src: DataSource, pre: Preprocess, input_shape: tuple[int, int, int]) -> None:
    """Raise UsageError when the source's samples cannot feed a model taking ``input_shape`` (C,H,W)."""
    want = tuple(int(d) for d in input_shape)
    got = src.sample_shape
    if got is not None:
        if got == want:
            if src.arrays.dtype == np.uint8:  # pixels: the recipe's normalization must fit them too
                _check_made(pre, want)
            return
        hint = None
        raw = tuple(src.arrays.shape[1:])
        if len(raw) == 3:
            other = (raw[2], raw[0], raw[1]) if src.layout == "nchw" else raw
            if other == want:
                hint = "the arrays look channels-last: pass --layout nhwc"
            elif src.layout == "nhwc" and raw == want:
                hint = "the arrays look channels-first: pass --layout nchw"
        if hint is None and got[0] != want[0]:
            hint = f"the model takes {want[0]} channel(s); convert the data or export the model for {got[0]}"
        raise UsageError(
            f"{src.name}: samples are {'x'.join(map(str, got))} (C x H x W) but the model takes {'x'.join(map(str, want))} (C x H x W)",
            hint=hint,
        )
    _check_made(pre, want)


def _check_made(pre: Preprocess, want: tuple[int, ...]) -> None:
    made = (pre.channels, pre.size, pre.size)
    if made != want:
        raise UsageError(
            f"preprocessing {pre.name!r} makes {'x'.join(map(str, made))} inputs but the model takes "
            f"{'x'.join(map(str, want))} (C x H x W)",
            hint="use --size/--channels (or a preset) that match the model's input",
        )
