"""Preprocessing presets and their application to raw pixel arrays and PIL images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from rescompile.errors import UsageError


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs; recorded in the manifest and checked at validation."""

    name: str
    size: int  # final H = W
    resize: int | None  # shorter side resized to this before the center crop (images only)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int  # 1 = grayscale, 3 = RGB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess("imagenet", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 3),
    "cifar": Preprocess("cifar", 32, None, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 3),
    "grayscale": Preprocess("grayscale", 28, None, (0.5,), (0.5,), 1),
    "fashion-mnist": Preprocess("fashion-mnist", 28, None, (0.2860,), (0.3530,), 1),
}


def get_preset(name: str, *, size: int | None = None, channels: int | None = None) -> Preprocess:
    if name not in PRESETS:
        raise UsageError(f"unknown preprocessing preset {name!r}", hint="one of: " + ", ".join(PRESETS))
    p = PRESETS[name]
    if size is not None and size != p.size:
        p = replace(p, size=size, resize=None if p.resize is None else round(size * p.resize / p.size))
    if channels is not None and channels != p.channels:
        if channels == 1:
            p = replace(p, channels=1, mean=(float(np.mean(p.mean)),), std=(float(np.mean(p.std)),))
        elif channels == 3 and len(p.mean) == 1:
            p = replace(p, channels=3, mean=p.mean * 3, std=p.std * 3)
        else:
            raise UsageError(f"preset {name!r} cannot serve {channels} input channels")
    return p


def normalize_pixels(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 pixels N,C,H,W -> float32 model inputs (scale to [0, 1], subtract mean, divide std)."""
    x = pixels.astype(np.float32) / 255.0
    mean = np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    return (x - mean) / std


def load_image(path: Any, pre: Preprocess) -> np.ndarray:
    """One image file -> uint8 C,H,W after resize and center crop (torchvision's order)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if pre.channels == 1 else "RGB")
            if pre.resize is not None:
                w, h = im.size
                s = pre.resize / min(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            w, h = im.size
            if (w, h) != (pre.size, pre.size):
                if min(w, h) < pre.size:
                    im = im.resize((pre.size, pre.size), Image.BILINEAR)
                    w, h = im.size
                left, top = (w - pre.size) // 2, (h - pre.size) // 2
                im = im.crop((left, top, left + pre.size, top + pre.size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
