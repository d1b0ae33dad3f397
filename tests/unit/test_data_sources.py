"""Data sources and preprocessing: folders, arrays, subsets, recipes, and every bad-data error (exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rescompile.data.preprocess import (
    Preprocess,
    check_matches,
    get_preset,
    load_recipe,
    normalize_pixels,
    preprocess_from_dict,
    resolve_preprocess,
)
from rescompile.data.sources import NpyFile, check_shape, open_source, subset
from rescompile.errors import UsageError

GRAY16 = Preprocess("g16", 16, None, (0.5,), (0.5,), 1)


def _image_folder(root: Path, classes: dict[str, int], size: int = 20, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(0)
    ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp", "WEBP": "webp"}[fmt]
    for name, n in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.{ext}", fmt)
    return root


def test_class_subfolders_give_sorted_labels_like_imagefolder(tmp_path: Path) -> None:
    src = open_source(_image_folder(tmp_path / "d", {"zebra": 2, "ant": 3, "moth": 1}))
    assert src.class_names == ["ant", "moth", "zebra"]
    assert src.labels.tolist() == [0, 0, 0, 1, 2, 2]
    x, y = next(src.batches(GRAY16, 8))
    assert x.shape == (6, 1, 16, 16) and x.dtype == np.float32 and y.tolist() == [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_flat_folder_of_each_format_has_no_labels(tmp_path: Path, fmt: str) -> None:
    root = _image_folder(tmp_path / "d", {"x": 3}, fmt=fmt) / "x"
    src = open_source(root)
    assert src.count == 3 and src.labels is None
    x, y = next(src.batches(get_preset("cifar", size=16), 4))
    assert x.shape == (3, 3, 16, 16) and y is None and np.isfinite(x).all()


def test_empty_folder_and_empty_class_folder_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no samples"):
        open_source(tmp_path / "empty")
    root = _image_folder(tmp_path / "d", {"a": 1})
    (root / "b").mkdir()
    with pytest.raises(UsageError, match=r"class folder .*b holds no images"):
        open_source(root)


def test_unreadable_and_truncated_images_are_named(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "d", {"a": 2}, fmt="JPEG")
    good = (root / "a" / "0.jpg").read_bytes()
    (root / "a" / "1.jpg").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(UsageError, match=r"1\.jpg: truncated"):
        list(open_source(root).batches(GRAY16, 4))
    (root / "a" / "1.jpg").write_bytes(b"not an image at all")
    with pytest.raises(UsageError, match=r"cannot read image .*1\.jpg"):
        list(open_source(root).batches(GRAY16, 4))


def test_npy_streams_from_disk_in_both_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    nchw = rng.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nchw)
    np.save(tmp_path / "b.npy", nchw.transpose(0, 2, 3, 1))
    pre = get_preset("cifar", size=8)
    a = open_source(tmp_path / "a.npy")
    b = open_source(tmp_path / "b.npy", layout="nhwc")
    assert isinstance(a.arrays, NpyFile) and a.sample_shape == b.sample_shape == (3, 8, 8)
    xa = np.concatenate([x for x, _ in a.batches(pre, 3)])
    xb = np.concatenate([x for x, _ in b.batches(pre, 4)])
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_allclose(xa, normalize_pixels(nchw, pre))
    sub = open_source(tmp_path / "a.npy", limit=4, seed=1)  # a subset reads only its rows
    np.testing.assert_array_equal(np.concatenate([x for x, _ in sub.batches(pre, 3)]), normalize_pixels(nchw[sub.index], pre))


def test_npz_labels_and_stratified_seeded_subset(tmp_path: Path) -> None:
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    np.savez(tmp_path / "d.npz", images=np.zeros((100, 8, 8), np.uint8), labels=labels)
    s1 = open_source(tmp_path / "d.npz", limit=20, seed=7)
    s2 = open_source(tmp_path / "d.npz", limit=20, seed=7)
    s3 = open_source(tmp_path / "d.npz", limit=20, seed=8)
    assert np.bincount(s1.labels).tolist() == [8, 6, 4, 2]  # proportional to the classes
    assert s1.index.tolist() == s2.index.tolist() != s3.index.tolist()
    assert s1.fingerprint() == s2.fingerprint() != s3.fingerprint()
    assert subset(s1, 5, 0).count == 5


def test_npz_is_loaded_without_pickle(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", images=np.array([object()], dtype=object))
    with pytest.raises(UsageError, match="holds Python objects"):
        open_source(tmp_path / "p.npz")


def test_shape_mismatch_says_what_the_model_takes(tmp_path: Path) -> None:
    np.save(tmp_path / "hwc.npy", np.zeros((4, 16, 16, 1), np.uint8))
    src = open_source(tmp_path / "hwc.npy")
    with pytest.raises(UsageError, match=r"model takes 1x16x16") as exc:
        check_shape(src, GRAY16, (1, 16, 16))
    assert "--layout nhwc" in (exc.value.hint or "")
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 16, 16), np.uint8))
    with pytest.raises(UsageError, match=r"samples are 3x16x16 .* model takes 1x16x16") as exc:
        check_shape(open_source(tmp_path / "rgb.npy"), GRAY16, (1, 16, 16))
    assert "1 channel" in (exc.value.hint or "")
    root = _image_folder(tmp_path / "d", {"a": 1})
    with pytest.raises(UsageError, match=r"makes 1x16x16 inputs but the model takes 3x32x32"):
        check_shape(open_source(root), GRAY16, (3, 32, 32))


def test_nan_or_inf_in_float_data_names_the_sample(tmp_path: Path) -> None:
    x = np.zeros((6, 1, 4, 4), np.float32)
    x[4, 0, 1, 1] = np.inf
    np.save(tmp_path / "f.npy", x)
    with pytest.raises(UsageError, match="sample 4 holds NaN or Inf"):
        list(open_source(tmp_path / "f.npy").batches(GRAY16, 2))
    x[4, 0, 1, 1] = np.nan
    np.savez(tmp_path / "f.npz", images=x)
    with pytest.raises(UsageError, match="sample 4 holds NaN or Inf"):
        open_source(tmp_path / "f.npz")


def test_custom_preprocessing_from_flags_and_yaml_recipe(tmp_path: Path) -> None:
    p = resolve_preprocess("imagenet", (3, 224, 224))
    assert p == get_preset("imagenet")
    c = resolve_preprocess("imagenet", (3, 224, 224), mean=(0.5,), std="0.25, 0.25, 0.25", resize=240, channel_order="bgr")
    assert c.name == "custom" and c.mean == (0.5, 0.5, 0.5) and c.std == (0.25,) * 3 and c.resize == 240
    pixels = np.zeros((1, 3, 2, 2), np.uint8)
    pixels[:, 0] = 255  # red in RGB
    x = normalize_pixels(pixels, c)
    assert x[0, 2, 0, 0] == pytest.approx(2.0) and x[0, 0, 0, 0] == pytest.approx(-2.0)  # red lands in channel 2 (BGR)
    (tmp_path / "r.yaml").write_text("preset: cifar\nname: mine\nmean: [0.1, 0.2, 0.3]\nlayout: nhwc\n")
    rec = load_recipe(tmp_path / "r.yaml")
    r = resolve_preprocess("imagenet", (3, 32, 32), recipe=rec, std=(1.0, 1.0, 1.0))
    assert (r.name, r.size, r.mean, r.std) == ("mine", 32, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0)) and rec["layout"] == "nhwc"
    assert preprocess_from_dict(r.to_dict()) == r
    (tmp_path / "bad.yaml").write_text("mean: [0.1]\ncolour: red\n")
    with pytest.raises(UsageError, match="unknown recipe keys colour"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(UsageError, match="--mean has 2 values but the input has 3 channels"):
        resolve_preprocess("imagenet", (3, 224, 224), mean=(0.1, 0.2))


def test_recorded_preprocessing_must_match() -> None:
    built = get_preset("fashion-mnist")
    check_matches(built.to_dict(), built)
    with pytest.raises(UsageError, match=r"preprocessing differs from the build's: name 'fashion-mnist' .* mean"):
        check_matches(built.to_dict(), get_preset("grayscale"))


def test_demo_sets_carry_fashion_mnist_class_names():
    from rescompile.data.sources import open_source

    src = open_source("demo-val")
    assert src.count == 2000 and src.class_names[6] == "Shirt" and len(src.class_names) == 10
