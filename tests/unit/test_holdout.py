"""Which data validates a build without --val: demo-val (demo only), a seeded held-out split, or in-sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rescompile.config import Gates
from rescompile.data.holdout import (
    MAX_HELD_OUT,
    SPLIT_MIN_SAMPLES,
    choose_data,
    held_out_count,
)
from rescompile.errors import UsageError
from rescompile.validate.gates import check_label_gates


def rows(src) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The positions in the original file of a source's samples."""
    return np.arange(src.count) if src.index is None else np.asarray(src.index)


def npy(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"c{n}.npy"
    np.save(path, np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32))
    return path


def npz(tmp_path: Path, n: int, classes: int = 4) -> Path:
    path = tmp_path / f"l{n}.npz"
    rng = np.random.default_rng(n)
    np.savez(path, images=rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), labels=np.arange(n) % classes)
    return path


def test_split_threshold_and_size():
    assert SPLIT_MIN_SAMPLES == 256
    assert held_out_count(SPLIT_MIN_SAMPLES - 1) == 0
    assert held_out_count(SPLIT_MIN_SAMPLES) == 51  # 20 %
    assert held_out_count(300) == 60
    assert held_out_count(100_000) == MAX_HELD_OUT


def test_held_out_split_is_disjoint_from_calibration_and_covers_the_data(tmp_path):
    choice = choose_data("model.onnx", str(npy(tmp_path, 300)), None)
    assert choice.mode == "held-out" and not choice.in_sample and not choice.labelled
    assert (choice.val.count, choice.calibration.count, choice.held_out, choice.calib_total) == (60, 240, 60, 300)
    held, calib = rows(choice.val), rows(choice.calibration)
    assert not set(held) & set(calib)
    assert sorted([*held, *calib]) == list(range(300))
    assert "held-out split" in choice.describe() and "not used for calibration" in choice.describe()


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    path = str(npy(tmp_path, 300))
    a, b, c = (choose_data("m.onnx", path, None, seed=s) for s in (3, 3, 4))
    assert np.array_equal(rows(a.val), rows(b.val)) and np.array_equal(rows(a.calibration), rows(b.calibration))
    assert a.val.fingerprint() == b.val.fingerprint()
    assert not np.array_equal(rows(a.val), rows(c.val))


def test_labelled_split_is_stratified_and_keeps_labels(tmp_path):
    choice = choose_data("resnet20", str(npz(tmp_path, 400)), None)
    assert choice.mode == "held-out" and choice.labelled
    assert choice.val.count == 80
    assert np.bincount(choice.val.labels).tolist() == [20, 20, 20, 20]
    check_label_gates(Gates(max_top1_drop=1.0), choice)  # labelled held-out data serves --max-top1-drop


def test_calib_size_picks_from_what_is_left_after_the_split(tmp_path):
    choice = choose_data("m.onnx", str(npy(tmp_path, 300)), None, calib_size=50, val_size=20)
    assert choice.calibration.count == 50 and choice.val.count == 20
    assert not set(rows(choice.val)) & set(rows(choice.calibration))
    assert "50 of the other 240" in choice.describe()


def test_small_calibration_set_validates_in_sample_without_labels(tmp_path):
    choice = choose_data("m.onnx", str(npz(tmp_path, 40)), None)
    assert choice.mode == "in-sample" and choice.in_sample
    assert choice.val.labels is None and not choice.labelled  # label-free metrics only
    assert np.array_equal(rows(choice.val), rows(choice.calibration))
    assert "IN-SAMPLE" in choice.describe() and "(in-sample)" in choice.val.name
    with pytest.raises(UsageError, match="--max-top1-drop needs labelled validation data.*too small for a held-out split"):
        check_label_gates(Gates(max_top1_drop=1.0), choice)
    check_label_gates(Gates(min_agreement=95.0, min_cosine=0.99), choice)  # label-free gates are fine


def test_unlabelled_held_out_split_refuses_label_gates(tmp_path):
    choice = choose_data("m.onnx", str(npy(tmp_path, 300)), None)
    with pytest.raises(UsageError, match="--max-top1-drop.*held-out split of .* has no labels") as exc:
        check_label_gates(Gates(max_top1_drop=1.0), choice)
    assert "--val" in (exc.value.hint or "")


def test_demo_set_is_the_default_only_for_the_demo_model(tmp_path):
    demo = choose_data("demo", "demo-calib", None, calib_size=64)
    assert demo.mode == "demo" and demo.val.name == "demo-val" and demo.labelled
    assert demo.calibration.count == 64 and demo.calib_total == 512
    other = choose_data("resnet20", "demo-calib", None)  # the demo *data* with another model: split, not demo-val
    assert other.mode == "held-out" and other.val.name.startswith("demo-calib[held-out")


def test_given_val_is_used_as_is(tmp_path):
    val = npy(tmp_path, 30)
    choice = choose_data("m.onnx", str(npy(tmp_path, 300)), str(val))
    assert choice.mode == "given" and choice.val.count == 30 and choice.calibration.count == 300
    with pytest.raises(UsageError, match=f"--val {val} has no labels"):
        check_label_gates(Gates(max_top1_drop=0.5), choice)


def test_image_folder_split_keeps_files_and_labels_apart(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(130):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    choice = choose_data("torchvision:resnet18", str(tmp_path / "imgs"), None)
    assert choice.mode == "held-out" and choice.labelled and choice.val.count == 52
    assert np.bincount(choice.val.labels).tolist() == [26, 26]
    assert not set(choice.val.files) & set(choice.calibration.files)
    assert len(choice.calibration.files) == 208 and choice.val.class_names == ["cat", "dog"]
    assert all(f.parent.name == ["cat", "dog"][y] for f, y in zip(choice.val.files, choice.val.labels, strict=True))
