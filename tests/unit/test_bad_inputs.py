"""Every bad-input class of issue 10 (and relatives) exits 2 with one clear line, never a traceback.

Library-level checks of each safe reader, plus the CLI for the classes a command decides
(validate on a missing path, compare of two different models).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.errors import UsageError
from rescompile.readers import load_npz, read_json_object, read_yaml


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "an empty file"),
        (b"these are not weights\n", "a text file"),
        (b'{"conv1.weight": [1, 2]}', "JSON text"),
        (b"\x89HDF\r\n\x1a\n" + bytes(32), "HDF5"),
    ],
)
def test_checkpoint_that_is_not_torch_save_says_what_it_is(tmp_path: Path, content: bytes, says: str) -> None:
    from rescompile.models.loader import _read_checkpoint

    p = tmp_path / "ckpt.pt"
    p.write_bytes(content)
    with pytest.raises(UsageError, match="is not a PyTorch checkpoint") as exc:
        _read_checkpoint(p, False)
    assert says in exc.value.message and "--trust-checkpoint" not in str(exc.value)


def test_checkpoint_that_is_a_folder_or_truncated(tmp_path: Path) -> None:
    from rescompile.models.loader import _read_checkpoint

    with pytest.raises(UsageError, match="is a folder, not a file"):
        _read_checkpoint(tmp_path, False)
    p = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(100)}, p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(UsageError, match="corrupt or truncated"):
        _read_checkpoint(p, False)


def test_checkpoint_with_nan_or_wrong_dtype_weights(tmp_path: Path) -> None:
    from rescompile.models.loader import apply_state_dict
    from rescompile.models.resnet_cifar import cifar_resnet

    model = cifar_resnet("resnet20", 4, 1)
    state = model.state_dict()
    state["fc.bias"] = torch.full_like(state["fc.bias"], float("nan"))
    with pytest.raises(UsageError, match="fc.bias holds NaN or Inf"):
        apply_state_dict(model, state, "w.pt", "resnet20")
    state["fc.bias"] = torch.zeros(4, dtype=torch.complex64)
    with pytest.raises(UsageError, match="fc.bias is complex64, resnet20 needs float32"):
        apply_state_dict(model, state, "w.pt", "resnet20")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_checkpoint_inf_found_in_every_float_dtype(dtype: torch.dtype) -> None:
    from rescompile.models.loader import apply_state_dict
    from rescompile.models.resnet_cifar import cifar_resnet

    model = cifar_resnet("resnet20", 4, 1).to(dtype)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_state_dict(model, state, "w.pt", "resnet20")  # finite: loads
    state["conv1.weight"].view(-1)[7] = float("-inf")
    with pytest.raises(UsageError, match="conv1.weight holds NaN or Inf"):
        apply_state_dict(model, state, "w.pt", "resnet20")


def test_npy_named_npz_and_npz_named_npy(tmp_path: Path) -> None:
    from rescompile.data.sources import open_source

    np.save(tmp_path / "a.npy", np.zeros((4, 1, 16, 16), np.uint8))
    (tmp_path / "a.npy").rename(tmp_path / "x.npz")
    with pytest.raises(UsageError, match=r"is a NumPy \.npy array, not a \.npz archive") as exc:
        open_source(tmp_path / "x.npz")
    assert exc.value.hint == "rename it to x.npy"
    np.savez(tmp_path / "b.npz", images=np.zeros((4, 1, 16, 16), np.uint8))
    (tmp_path / "b.npz").rename(tmp_path / "y.npy")
    with pytest.raises(UsageError, match=r"zip archive \(an \.npz\?\)"):
        open_source(tmp_path / "y.npy")


def test_an_npz_of_images_that_is_not_one_is_named_so(tmp_path: Path) -> None:
    from rescompile.data.sources import open_source

    (tmp_path / "val.npz").write_text('{"images": []}')
    with pytest.raises(UsageError) as exc:
        open_source(tmp_path / "val.npz")
    assert exc.value.message == f"{tmp_path / 'val.npz'} is not a NumPy archive of images (.npz): it is JSON text"


def test_validate_names_an_unreadable_candidate_before_missing_data(tmp_path: Path, tiny_onnx) -> None:
    import onnx

    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage\xff" * 8)
    onnx.save(tiny_onnx, str(tmp_path / "model.onnx"))
    args = ["validate", str(tmp_path / "garbage.onnx"), "--reference", str(tmp_path / "model.onnx"), "--out", str(tmp_path / "v")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    (line,) = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert "garbage.onnx" in line and "--val" not in line, res.output
    onnx.save(tiny_onnx, str(tmp_path / "garbage.onnx"))  # readable now: the missing data is what is wrong
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "--val" in res.output, res.output
    assert not (tmp_path / "v").exists()


def test_npz_header_promising_more_than_the_archive_holds_is_refused_before_allocation(tmp_path: Path) -> None:
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3, 224, 224)})
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as zf:
        zf.writestr("images.npy", header.getvalue() + bytes(64))
    with pytest.raises(UsageError, match="header promises"):
        load_npz(tmp_path / "h.npz")


def test_image_announcing_a_decompression_bomb(tmp_path: Path) -> None:
    from rescompile.data.preprocess import get_preset, load_image

    for w, h in ((100000, 100000), (12000, 12000), (9000, 9000)):  # beyond Pillow's limit, past its warning, past ours
        (tmp_path / "a.png").write_bytes(_png(w, h))
        with pytest.raises(UsageError, match=f"announces ({w} x {h}|{w * h}) pixels.*decompression bomb"):
            load_image(tmp_path / "a.png", get_preset("grayscale"))


def test_garbage_tensorrt_cache(tmp_path: Path) -> None:
    from rescompile.calibrate.trt_cache import read_cache

    (tmp_path / "c.cache").write_bytes(bytes(range(256)))
    with pytest.raises(UsageError, match="is not a TensorRT calibration cache"):
        read_cache(tmp_path / "c.cache")
    (tmp_path / "c.cache").write_text("TRT-1" + "0" * 5000 + "-EntropyCalibration2\n")  # beyond int()'s digit limit
    with pytest.raises(UsageError, match="first line must be TRT-<version>-<algorithm>"):
        read_cache(tmp_path / "c.cache")


def test_json_readers_refuse_nan_deep_nesting_and_non_objects(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    for text, says in (
        ('{"a": NaN}', "NaN is not a JSON number"),
        ("[" * 100000, "nested too deeply"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ("", "not valid JSON"),
    ):
        p.write_text(text)
        with pytest.raises(UsageError, match=says):
            read_json_object(p, "rescompile report")


def test_yaml_alias_bomb_gives_a_short_message(tmp_path: Path) -> None:
    from rescompile.validate.gates import load_gates

    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    (tmp_path / "g.yaml").write_text(bomb + "max-top1-drop: *i\n")
    assert isinstance(read_yaml(tmp_path / "g.yaml", "gates file"), dict)  # aliases share objects: loading is cheap
    with pytest.raises(UsageError) as exc:
        load_gates(tmp_path / "g.yaml")
    assert len(str(exc.value)) < 400


def test_recipe_values_are_type_checked(tmp_path: Path) -> None:
    from rescompile.data.preprocess import load_recipe

    for text, says in (
        ("size: abc\n", "size must be a whole number"),
        (f"size: {10**400}\n", "size must be a whole number"),
        ("preset: [1]\n", "preset must be a word"),
        ("layout: nchwx\n", "layout must be nchw or nhwc"),
    ):
        (tmp_path / "r.yaml").write_text(text)
        with pytest.raises(UsageError, match=says):
            load_recipe(tmp_path / "r.yaml")


def test_validate_on_a_missing_path_says_it_does_not_exist(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "nope"), "--out", str(tmp_path / "v")])
    assert res.exit_code == 2 and "candidate not found" in res.output and "no FP32 reference" not in res.output
    assert not (tmp_path / "v").exists()


def _report(tmp_path: Path, name: str, top1: float) -> Path:
    doc = {
        "schema": "rescompile.report/1",
        "model": {"name": name, "input_shape": [1, 16, 16], "num_classes": 4},
        "accuracy": {"reference": {"top1": top1, "top5": 100.0}, "candidate": {"top1": top1, "top5": 100.0}, "top1_drop": 0.0},
        "agreement": {"top1": 100.0, "cosine_mean": 1.0, "cosine_min": 1.0, "max_abs_error": 0.0, "mean_abs_error": 0.0},
        "per_class": [],
        "latency": [],
        "speedup_int8_vs_fp32_p50": {},
        "gates": [],
        "passed": True,
        "source": "data.npz",
        "samples": 16,
        "reference": "onnxruntime-fp32",
        "candidate": "onnxruntime-int8",
        "baseline": None,
    }
    p = tmp_path / f"{name}-{top1}.json"
    p.write_text(json.dumps(doc))
    return p


def test_compare_refuses_reports_of_different_models_unless_told(tmp_path: Path) -> None:
    old, new = _report(tmp_path, "resnet20", 90.0), _report(tmp_path, "resnet32", 80.0)
    res = CliRunner().invoke(app, ["compare", str(old), str(new), "--md", str(tmp_path / "c.md")])
    assert res.exit_code == 2 and "different models (name resnet20 vs resnet32)" in res.output
    assert not (tmp_path / "c.md").exists()
    res = CliRunner().invoke(app, ["compare", str(old), str(new), "--allow-different-models", "--md", str(tmp_path / "c.md")])
    assert res.exit_code == 1 and "warning: different models" in res.output
    assert "different models" in (tmp_path / "c.md").read_text()
    same = CliRunner().invoke(app, ["compare", str(old), str(_report(tmp_path, "resnet20", 91.0))])
    assert same.exit_code == 0 and "different models" not in same.output
    # validate reports are named after the candidate file: only shape and classes identify their model
    a, b = (json.loads(p.read_text()) for p in (old, new))
    for doc, stem in ((a, "model.int8"), (b, "other.int8")):
        doc["model"].update(name=stem, reference="model.simplified.onnx")
    old.write_text(json.dumps(a))
    new.write_text(json.dumps(b))
    assert CliRunner().invoke(app, ["compare", str(old), str(new)]).exit_code == 1  # a regression, same model
    b["model"]["num_classes"] = 10
    new.write_text(json.dumps(b))
    res = CliRunner().invoke(app, ["compare", str(old), str(new)])
    assert res.exit_code == 2 and "num_classes 4 vs 10" in res.output


def test_compare_names_a_damaged_report_field(tmp_path: Path) -> None:
    p = _report(tmp_path, "resnet20", 90.0)
    doc = json.loads(p.read_text())
    doc["accuracy"] = {}
    p.write_text(json.dumps(doc))
    res = CliRunner().invoke(app, ["compare", str(p), str(_report(tmp_path, "resnet20", 91.0))])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "missing field 'accuracy.reference'" in said, res.output


def test_plan_with_an_input_index_out_of_range(tiny_onnx) -> None:  # found by benchmarks/fuzz.py (IndexError in verify)
    from rescompile.quantize import Policy, plan_qdq
    from rescompile.quantize.policy import QuantPlan

    doc = plan_qdq(tiny_onnx, Policy.TENSORRT).to_dict()
    assert QuantPlan.from_dict(json.loads(json.dumps(doc))).weights  # the plan itself round-trips
    doc["weights"][0]["input_index"] = -(2**63)
    with pytest.raises(UsageError, match=r"weights\[0\]: input_index .* out of range"):
        QuantPlan.from_dict(doc)
