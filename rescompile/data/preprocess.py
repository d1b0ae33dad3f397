"""Preprocessing: presets, custom recipes (flags or YAML), and their application to pixels and image files.

A :class:`Preprocess` is the whole recipe from a stored image to a model input. It is
recorded in the manifest and in ``ranges.json``; :func:`check_matches` refuses to validate
or reuse calibration with a recipe that differs from the recorded one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.data.layout import check_layout
from rescompile.errors import UsageError

CHANNEL_ORDERS = ("rgb", "bgr")
MAX_SIZE = 8192  # pixels per side of a model input or of the resize before the crop


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model inputs; recorded in the manifest and checked at validation."""

    name: str
    size: int  # final H = W (center crop)
    resize: int | None  # shorter side resized to this before the center crop (images only)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int  # 1 = grayscale, 3 = colour
    channel_order: str = "rgb"  # order of colour channels in the model input: rgb | bgr

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess("imagenet", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 3),
    "cifar": Preprocess("cifar", 32, None, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 3),
    "grayscale": Preprocess("grayscale", 28, None, (0.5,), (0.5,), 1),
    "fashion-mnist": Preprocess("fashion-mnist", 28, None, (0.2860,), (0.3530,), 1),
}
# The preset a model family was trained with: the demo on Fashion-MNIST, torchvision's ResNets on ImageNet
# (also with --in-channels 1: get_preset averages ImageNet's mean/std). resnet20..110 are CIFAR ResNets.
FAMILY_PRESETS = {"demo": "fashion-mnist", "torchvision": "imagenet"}


def default_preset(channels: int, size: int, *, family: str | None = None) -> str:
    """The preprocessing preset a model gets when the user names none: the one rule for every model source.

    Args:
        channels: the model's input channels.
        size: the model's input height.
        family: where the model comes from: ``demo`` and ``torchvision`` have their training preset
            (:data:`FAMILY_PRESETS`); ``cifar`` (resnet20..110) is ``cifar`` in colour; any other
            (a TorchScript or ONNX file) is guessed from the input.

    Returns:
        ``imagenet`` for a 3 x 224 input (of unknown family), ``cifar`` for another colour input,
        ``grayscale`` for anything else.
    """
    if family in FAMILY_PRESETS:
        return FAMILY_PRESETS[family]
    if channels != 3:
        return "grayscale"
    return "imagenet" if size == 224 and family != "cifar" else "cifar"


# Keys a YAML recipe may hold (besides ``preset`` and the data ``layout``).
RECIPE_KEYS = ("name", "size", "resize", "mean", "std", "channels", "channel_order")


def get_preset(name: str, *, size: int | None = None, channels: int | None = None) -> Preprocess:
    """A preset adapted to the model's input size and channel count (the name is kept)."""
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


def _floats(value: Any, what: str) -> tuple[float, ...]:
    from rescompile.readers import short

    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, (int, float)):
        value = [value]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{what} must be numbers, e.g. 0.485,0.456,0.406 (got {short(value)})") from None
    if not out:
        raise UsageError(f"{what} is empty")
    return out


def load_recipe(path: Path) -> dict[str, Any]:
    """Read a YAML preprocessing recipe: ``preset``, ``layout`` and any of :data:`RECIPE_KEYS`.

    Raises:
        UsageError: missing or unreadable file, unknown keys, or values of the wrong type.
    """
    from rescompile.readers import read_yaml, short

    doc = read_yaml(path, "recipe file")
    if isinstance(doc, dict) and isinstance(doc.get("preprocess"), dict):
        doc = doc["preprocess"]
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a recipe is a mapping of preprocessing keys (preset, size, mean, std, ...)")
    unknown = sorted(map(str, set(doc) - set(RECIPE_KEYS) - {"preset", "layout"}))
    if unknown:
        raise UsageError(
            f"{path}: unknown recipe keys {short(', '.join(unknown))[1:-1]}", hint="allowed: preset, layout, " + ", ".join(RECIPE_KEYS)
        )
    for key, value in doc.items():
        if value is None:
            continue
        if key in ("size", "resize", "channels") and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE):
            raise UsageError(f"{path}: {key} must be a whole number in [0, {MAX_SIZE}], got {short(value)}")
        if key in ("preset", "layout", "name", "channel_order") and not isinstance(value, str):
            raise UsageError(f"{path}: {key} must be a word, got {short(value)}")
        if key in ("mean", "std"):
            _floats(value, f"{path}: {key}")
    if doc.get("layout") is not None:
        check_layout(doc["layout"], f"{path}: layout")
    return dict(doc)


def resolve_preprocess(
    default_preset: str,
    input_shape: tuple[int, int, int],
    *,
    preset: str | None = None,
    recipe: dict[str, Any] | None = None,
    size: int | None = None,
    resize: int | None = None,
    mean: Any = None,
    std: Any = None,
    channels: int | None = None,
    channel_order: str | None = None,
) -> Preprocess:
    """The recipe for a model: a preset (the model's own by default), then the YAML recipe, then flags.

    With no custom value the preset is adapted to the model's input (size, channels) and keeps
    its name; any custom value makes a recipe named ``custom`` (or the recipe's ``name``).

    Raises:
        UsageError: unknown preset, bad values, or mean/std lengths that do not match the channels.
    """
    recipe = dict(recipe or {})
    c, h, _ = input_shape
    base_name = preset or recipe.pop("preset", None) or default_preset
    recipe.pop("preset", None)
    recipe.pop("layout", None)
    custom: dict[str, Any] = {k: v for k, v in recipe.items() if v is not None}
    for key, value in (
        ("size", size),
        ("resize", resize),
        ("mean", mean),
        ("std", std),
        ("channels", channels),
        ("channel_order", channel_order),
    ):
        if value is not None:
            custom[key] = value
    want_channels = int(custom.get("channels", c))
    want_size = int(custom.get("size", h))
    for key, v in (("size", want_size), ("resize", custom.get("resize") or 0), ("channels", want_channels)):
        if not 0 <= int(v) <= MAX_SIZE:
            raise UsageError(f"preprocessing {key} {v} is out of range [1, {MAX_SIZE}]")
    p = get_preset(base_name, size=want_size, channels=want_channels if want_channels in (1, 3) else None)
    if not custom:
        return p
    name = str(custom.pop("name", "custom"))
    kw: dict[str, Any] = {"name": name, "size": want_size, "channels": want_channels}
    if "resize" in custom:
        kw["resize"] = None if custom["resize"] in (None, 0) else int(custom["resize"])
    for key in ("mean", "std"):
        if key in custom:
            vals = _floats(custom[key], f"--{key}")
            kw[key] = vals * want_channels if len(vals) == 1 else vals
    if "channel_order" in custom:
        kw["channel_order"] = str(custom["channel_order"]).lower()
    out = replace(p, **kw)
    _check(out)
    return out


def _check(p: Preprocess) -> None:
    if p.channels not in (1, 3):
        raise UsageError(f"preprocessing makes 1 (grayscale) or 3 (colour) channels, not {p.channels}")
    if p.size < 1 or (p.resize is not None and p.resize < p.size):
        raise UsageError(f"preprocessing size {p.size} / resize {p.resize}: resize must be >= size >= 1")
    if max(p.size, p.resize or 0) > MAX_SIZE:
        raise UsageError(f"preprocessing size {p.size} / resize {p.resize}: at most {MAX_SIZE} pixels")
    for key, vals in (("mean", p.mean), ("std", p.std)):
        if len(vals) != p.channels:
            raise UsageError(f"--{key} has {len(vals)} values but the input has {p.channels} channels")
        if not all(np.isfinite(vals)):
            raise UsageError(f"--{key} must be finite")
    if any(s <= 0 for s in p.std):
        raise UsageError("--std values must be positive")
    if p.channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel order must be rgb or bgr, not {p.channel_order!r}")


def preprocess_from_dict(d: Any) -> Preprocess:
    """The inverse of ``Preprocess.to_dict()`` (as recorded in manifest.json and ranges.json).

    Raises:
        UsageError: not a mapping, missing keys, or values of the wrong type.
    """
    from rescompile.readers import short

    if not isinstance(d, dict):
        raise UsageError(f"not a recorded preprocessing recipe (a {type(d).__name__}, not a mapping)")
    for key, kinds in (("name", str), ("size", int), ("channels", int), ("resize", (int, type(None))), ("channel_order", str)):
        if key in d and (isinstance(d[key], bool) or not isinstance(d[key], kinds)):
            raise UsageError(f"recorded preprocessing: {key} is {short(d[key])}")
    names = {f.name for f in fields(Preprocess)}
    try:
        kw = {k: v for k, v in d.items() if k in names}
        kw["mean"], kw["std"] = _floats(d["mean"], "recorded mean"), _floats(d["std"], "recorded std")
        p = Preprocess(**kw)
    except (KeyError, TypeError) as exc:
        raise UsageError(f"not a recorded preprocessing recipe ({type(exc).__name__}: {short(str(exc))})") from None
    _check(p)
    return p


def check_matches(recorded: dict[str, Any], pre: Preprocess, *, what: str = "the build") -> None:
    """Raise UsageError when ``pre`` differs from the recipe recorded in a manifest or ranges.json.

    Args:
        recorded: the recorded ``Preprocess.to_dict()``.
        pre: the recipe about to be used.
        what: names the recording in the message ("the build", "ranges.json").
    """
    now = pre.to_dict()
    diffs = []
    for f in fields(Preprocess):
        a, b = recorded.get(f.name, Preprocess.__dataclass_fields__[f.name].default), now[f.name]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            same = len(a) == len(b) and np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=1e-9)
        else:
            same = a == b
        if not same:
            diffs.append(f"{f.name} {a!r} (recorded) vs {b!r} (now)")
    if diffs:
        raise UsageError(
            f"preprocessing differs from {what}'s: " + "; ".join(diffs),
            hint="validate with the preset and parameters recorded in manifest.json ('preprocess')",
        )


def normalize_pixels(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """uint8 pixels N,C,H,W (RGB or gray) -> float32 model inputs: scale to [0, 1], channel order, mean, std."""
    x = pixels.astype(np.float32)
    if pre.channel_order == "bgr" and x.shape[1] == 3:
        x = x[:, ::-1]
        x = np.ascontiguousarray(x)
    x /= np.float32(255.0)
    x -= np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    x /= np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    return x


MAX_IMAGE_PIXELS = 64 << 20  # 8K x 8K: far above any calibration image, far below a decompression bomb


def load_image(path: Any, pre: Preprocess) -> np.ndarray:
    """One image file -> uint8 C,H,W (RGB or gray) after resize and center crop (torchvision's order).

    The header is read first: an image announcing more than :data:`MAX_IMAGE_PIXELS` pixels
    (a decompression bomb, or a corrupt header) is refused before any pixel is decoded.

    Raises:
        UsageError: the file is not an image Pillow can decode, it is truncated, or too large (named).
    """
    import warnings

    from PIL import Image

    hint = "remove or replace the file; rescompile reads JPEG, PNG, BMP and WebP"
    try:
        # Pillow warns about decompression bombs (our limit below is lower and says more) and corrupt EXIF data;
        # a bad file gets one error line, never a warning. (catch_warnings is not thread-safe: at worst a
        # concurrent decode keeps these warnings silenced.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(path, pre, hint)
    except UsageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit (2x its warning) fires inside Image.open
        import re

        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise UsageError(
            f"image {path} announces {pixels.group(1) if pixels else 'too many'} pixels; rescompile reads images "
            f"of at most {MAX_IMAGE_PIXELS >> 20} Mpixels (a decompression bomb or a corrupt header?)",
            hint=hint,
        ) from None
    except MemoryError:
        raise UsageError(f"image {path} does not fit in memory", hint=hint) from None
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...) for corrupt files
        from rescompile.readers import first_line

        reason = "truncated" if "truncated" in str(exc).lower() else first_line(exc)
        raise UsageError(f"cannot read image {path}: {reason}", hint=hint) from None


def _decode(path: Any, pre: Preprocess, hint: str) -> np.ndarray:
    """Decode, check the announced size, resize and crop (errors are turned into messages by :func:`load_image`)."""
    from PIL import Image

    with Image.open(path) as f:
        w, h = f.size
        if w * h > MAX_IMAGE_PIXELS or w < 1 or h < 1:
            raise UsageError(
                f"image {path} announces {w} x {h} pixels; rescompile reads images of at most "
                f"{MAX_IMAGE_PIXELS >> 20} Mpixels (a decompression bomb or a corrupt header?)",
                hint=hint,
            )
        im: Image.Image = f.convert("L" if pre.channels == 1 else "RGB")
    bilinear = Image.Resampling.BILINEAR
    if pre.resize is not None:
        w, h = im.size
        s = pre.resize / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), bilinear)
    w, h = im.size
    if (w, h) != (pre.size, pre.size):
        if min(w, h) < pre.size:
            im = im.resize((pre.size, pre.size), bilinear)
            w, h = im.size
        left, top = (w - pre.size) // 2, (h - pre.size) // 2
        im = im.crop((left, top, left + pre.size, top + pre.size))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
