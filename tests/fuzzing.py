"""Fuzzing harness shared by tests/integration/test_fuzz_parsers.py (fast) and benchmarks/fuzz.py (long runs).

Every parser the CLI exposes is a :class:`Target`: seed files taken from a real build folder,
hypothesis strategies that make hostile inputs from them (random bytes, truncations, flipped
and spliced bytes, and structurally valid but wrong content: JSON/YAML with odd values,
arrays of odd dtypes and shapes, ONNX graphs with edited fields, images with huge headers),
a library call and a CLI command. The contract checked for every input:

- the library call returns or raises a ``RescompileError`` (exit 0-3), nothing else;
- the CLI exits 0-3, prints no traceback, and an error is one ``error:`` line (plus a hint);
- nothing half-written: a failed command leaves no new file or folder in its output location.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rescompile.errors import RescompileError
from tests.builds import LATENCY_RUNS, TINY_MODEL


def make_build(folder: Path) -> Path:
    """A real build folder of a small ResNet-20 (1x16x16, 4 classes): every artifact the CLI reads."""
    from typer.testing import CliRunner

    from rescompile.cli import app

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "fuzz-data.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    out = folder / "build"
    res = CliRunner().invoke(app, ["build", "resnet20", *TINY_MODEL, "--calib", str(data), "--val", str(data), "--out", str(out)])
    assert res.exit_code == 0, res.output
    import torch

    from rescompile.models.resnet_cifar import cifar_resnet

    torch.manual_seed(0)
    torch.save(cifar_resnet("resnet20", 4, 1).state_dict(), folder / "weights.pt")
    res = CliRunner().invoke(
        app,
        [
            "validate",
            str(out / "model.int8.onnx"),
            "--reference",
            str(out / "model.simplified.onnx"),
            "--val",
            str(data),
            "--no-baseline",
            *LATENCY_RUNS,
            "--latency-batch",
            "1",
            "--save-reference",
            str(folder / "ref.npz"),
            "--out",
            str(folder / "v"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    from rescompile.deploy.bundle import make_bundle

    make_bundle(out, folder / "model.rcb")
    return out


# ---- byte-level mutations (any format) ---------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file damaged: truncated, bytes flipped, a chunk inserted/deleted/duplicated, or spliced."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "splice", "overwrite"]))
        n = len(data)
        if kind == "truncate" and n:
            data = data[: draw(st.integers(0, n - 1))]
        elif kind == "flip" and n:
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, n - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            i = draw(st.integers(0, n))
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del data[i : i + draw(st.integers(1, 64))]
        elif kind == "splice":
            other = draw(st.sampled_from(seeds))
            i, j = draw(st.integers(0, n)), draw(st.integers(0, len(other)))
            data = data[:i] + other[j:]
        elif kind == "overwrite" and n:
            i = draw(st.integers(0, n - 1))
            chunk = draw(
                st.sampled_from([b"\x00" * 8, b"\xff" * 8, struct.pack("<q", -1), struct.pack("<Q", 2**62), b"NaN", b"1e999", b"-0"])
            )
            data[i : i + len(chunk)] = chunk
    return bytes(data)


def random_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=2048),
        st.sampled_from([b"", b"\n", b"{}", b"[]", b"null", b"PK\x03\x04", b"\x93NUMPY", b"\x80\x04", b"TRT-100300-EntropyCalibration2\n"]),
    )


# ---- structured content ---------------------------------------------------------------------------------

WEIRD_FLOATS = [0.0, -0.0, 1e-45, 1e308, -1e308, math.inf, -math.inf, math.nan, 2.0**63, -(2.0**63)]
WEIRD_INTS = [0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 10**400]


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        st.sampled_from(WEIRD_INTS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(WEIRD_FLOATS),
        st.text(max_size=20),
        st.sampled_from(["", "tensorrt", "onnxruntime", "max", "input", "rescompile.report/1", "rescompile.ranges/2"]),
    )
    return st.recursive(
        leaves, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=12
    )


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in list(doc.items())[:50]:
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:20]):
            out += _paths(v, (*prefix, i))
    return out


def _leaves(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        return [x for v in list(doc.values())[:50] for x in _leaves(v)]
    if isinstance(doc, list):
        return [x for v in doc[:20] for x in _leaves(v)]
    return [doc]


@st.composite
def edited_json(draw: st.DrawFn, seeds: list[Any]) -> Any:
    """A seed document with 1-3 values replaced, deleted, or given a wrong type (valid JSON, wrong content).

    Half of the replacements keep the type (a tensor name swapped for another name of the same
    document, a number for an odd number), so the edit gets past type checks into the code that
    uses the content.
    """
    doc = json.loads(json.dumps(draw(st.sampled_from(seeds))))
    strings = [x for x in _leaves(doc) if isinstance(x, str)] or [""]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(json_values()) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        old = parent[key]
        how = draw(st.sampled_from(["delete", "any", "same_type", "same_type"]))
        if how == "delete" and isinstance(parent, dict):
            del parent[key]
        elif how == "same_type" and isinstance(old, str):
            parent[key] = draw(st.sampled_from(strings))
        elif how == "same_type" and isinstance(old, (int, float)) and not isinstance(old, bool):
            pool = WEIRD_INTS[:6] if isinstance(old, int) else WEIRD_FLOATS
            parent[key] = draw(st.sampled_from(pool + [old * 2, -old]))
        elif how == "same_type" and isinstance(old, list) and old:
            parent[key] = draw(st.sampled_from([old[:1], old * 2, old[::-1], []]))
        else:
            parent[key] = draw(json_values())
    return doc


def dump_json(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(["u1", "i1", "i4", "i8", "u8", "f2", "f4", "f8", "c8", "?", "U3", "S2", "V4", ">f4", "<i2"]))
    shape = draw(
        st.one_of(
            hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),
            st.sampled_from([(16, 1, 16, 16), (4, 16, 16, 1), (4, 16, 16), (0, 1, 16, 16), (3,)]),
        )
    )
    if dtype in ("f2", "f4", "f8", ">f4"):
        return draw(hnp.arrays(dtype, shape, elements=st.sampled_from(WEIRD_FLOATS + [0.5, 1.0, 255.0])))
    if dtype in ("U3", "S2", "V4", "c8"):
        return np.zeros(shape, dtype)
    return draw(hnp.arrays(dtype, shape))


def npz_bytes(arrs: dict[str, np.ndarray], compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrs)  # type: ignore[operator]
    return buf.getvalue()


@st.composite
def npz_files(draw: st.DrawFn, keys: list[str]) -> bytes:
    names = draw(st.lists(st.sampled_from(keys + ["x", "extra", ""]), max_size=4, unique=True))
    return npz_bytes({n or "arr_0": draw(arrays()) for n in names}, draw(st.booleans()))


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    buf = io.BytesIO()
    np.save(buf, draw(arrays()))
    data = buf.getvalue()
    if draw(st.integers(0, 3)) == 0:  # a forged header: any shape, the same payload
        shape = draw(st.tuples(*[st.sampled_from([0, 1, 16, 2**20, 2**40, 2**62]) for _ in range(4)]))
        hbuf = io.BytesIO()
        np.lib.format.write_array_header_1_0(hbuf, {"descr": "|u1", "fortran_order": False, "shape": shape})
        data = hbuf.getvalue() + data[len(hbuf.getvalue()) :]
    return data


def png_header(width: int, height: int, mode: int = 2) -> bytes:
    """A PNG announcing ``width x height`` pixels in its header, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, mode, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@st.composite
def images(draw: st.DrawFn) -> bytes:
    from PIL import Image

    kind = draw(st.integers(0, 2))
    if kind == 0:  # a header announcing any size
        dims = st.sampled_from([0, 1, 16, 65535, 100000, 2**31 - 1])
        return png_header(draw(dims), draw(dims), draw(st.sampled_from([0, 2, 3, 4, 6, 7]))) + draw(st.binary(max_size=64))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "F", "CMYK"]))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    im = Image.new(mode, (w, h))
    fmt = draw(st.sampled_from(["PNG", "BMP", "JPEG", "WEBP", "GIF", "TIFF"]))
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, KeyError, ValueError):
        im.convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    return draw(mutated([data])) if kind == 2 else data


@st.composite
def yaml_docs(draw: st.DrawFn, keys: list[str]) -> bytes:
    import yaml

    doc = draw(st.dictionaries(st.sampled_from(keys), json_values(), max_size=4))
    text = yaml.safe_dump(doc) if draw(st.booleans()) else json.dumps(doc, allow_nan=True)
    extra = draw(
        st.sampled_from(
            [
                "",
                "\n---\nsecond: doc\n",
                "\n!!python/object:os.system {}\n",
                "\nx: &a [*a]\n",
                "\nlist: [1, 2\n",
                "\n\t- tab\n",
                "\nk: !!binary AAAA\n",
                "\nk: 2001-01-01\n",
            ]
        )
    )
    return (text + extra).encode()


def alias_bomb(key: str) -> bytes:
    levels = "abcdefghi"
    text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip(levels[:-1], levels[1:], strict=True)
    )
    return (text + f"{key}: *i\n").encode()


@st.composite
def edited_onnx(draw: st.DrawFn, seed: bytes) -> bytes:
    """The seed model with one structural edit that keeps it a valid protobuf (wrong ONNX content)."""
    import onnx

    m = onnx.load_from_string(seed)
    g = m.graph
    kind = draw(
        st.sampled_from(
            ["op", "drop_node", "rename_input", "dim", "init_dims", "raw_data", "opset", "io", "attr", "duplicate_output", "dtype"]
        )
    )
    nodes = list(g.node)
    if kind == "op" and nodes:
        nodes[draw(st.integers(0, len(nodes) - 1))].op_type = draw(
            st.sampled_from(["Add", "Conv", "Relu", "Foo", "", "Gemm", "QuantizeLinear", "MaxPool"])
        )
    elif kind == "drop_node" and nodes:
        del g.node[draw(st.integers(0, len(nodes) - 1))]
    elif kind == "rename_input" and nodes:
        n = nodes[draw(st.integers(0, len(nodes) - 1))]
        if n.input:
            n.input[draw(st.integers(0, len(n.input) - 1))] = draw(st.sampled_from(["", "missing", g.input[0].name]))
    elif kind == "dim" and g.input:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[draw(st.integers(0, len(dims) - 1))]
            d.dim_value = draw(st.sampled_from([0, 1, 3, 2**31, 2**62]))
    elif kind == "init_dims" and g.initializer:
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        if t.dims:
            t.dims[draw(st.integers(0, len(t.dims) - 1))] = draw(st.sampled_from([0, 1, 7, 2**40]))
    elif kind == "raw_data" and g.initializer:
        t = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        t.raw_data = t.raw_data[: draw(st.integers(0, max(0, len(t.raw_data) - 1)))]
    elif kind == "opset":
        m.opset_import[0].version = draw(st.sampled_from([1, 7, 11, 13, 17, 99, 10**6]))
    elif kind == "io":
        del g.output[:]
    elif kind == "attr" and nodes:
        n = nodes[draw(st.integers(0, len(nodes) - 1))]
        for a in n.attribute:
            if a.ints:
                a.ints[0] = draw(st.sampled_from([0, -1, 2**40]))
                break
    elif kind == "duplicate_output" and len(nodes) > 1:
        nodes[-1].output[0] = nodes[0].output[0]
    elif kind == "dtype" and g.initializer:
        g.initializer[draw(st.integers(0, len(g.initializer) - 1))].data_type = draw(st.sampled_from([0, 2, 7, 10, 16, 99]))
    return m.SerializeToString()


@st.composite
def checkpoints(draw: st.DrawFn, seed: bytes) -> bytes:
    """torch.save of wrong content: wrong keys, shapes, dtypes, NaN; or plain Python containers."""
    import torch

    state = torch.load(io.BytesIO(seed), weights_only=True)
    kind = draw(st.integers(0, 4))
    if kind == 0:  # one tensor edited
        k = draw(st.sampled_from(sorted(state)))
        v = state[k]
        nan = torch.full_like(v, float("nan")) if v.is_floating_point() else v.double()
        cplx = v.to(torch.complex64) if v.is_floating_point() else v
        flat = v.reshape(-1)
        state[k] = draw(
            st.sampled_from([nan, v.to(torch.int32), cplx, flat, flat[:0], torch.zeros(3), v.to(torch.float16), v.to(torch.bool)])
        )
    elif kind == 1:
        del state[draw(st.sampled_from(sorted(state)))]
    elif kind == 2:
        state = {"state_dict": state, "epoch": draw(json_values())}
    elif kind == 3:
        state = draw(json_values())
    else:
        state = {draw(st.text(max_size=8)): torch.zeros(draw(st.integers(0, 3)))}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@st.composite
def trt_caches(draw: st.DrawFn, names: list[str]) -> bytes:
    header = draw(
        st.sampled_from(
            ["TRT-100300-EntropyCalibration2", "TRT-8601-MinMaxCalibration", "TRT--x", "TRT-1" + "0" * 5000 + "-A", "", "trt-100300-x"]
        )
    )
    lines = [header]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(st.sampled_from(names), st.text(max_size=12)))
        value = draw(
            st.one_of(
                st.sampled_from(["3f800000", "7f800000", "7fc00000", "00000000", "bf800000", "zzzzzzzz", "3f80"]), st.text(max_size=10)
            )
        )
        lines.append(f"{name}: {value}" if draw(st.integers(0, 5)) else name)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


# ---- targets -----------------------------------------------------------------------------------------


@dataclass
class Target:
    """One parser: how to make inputs, call the library, and run the CLI on a file."""

    name: str
    suffix: str
    strategy: st.SearchStrategy[bytes]
    library: Callable[[Path], Any]
    cli: Callable[[Path, Path], list[str]]  # (input file, output folder) -> args
    folder_input: bool = False  # the file goes into a folder that is passed instead (images)
    prepare: Callable[[Path], Path] | None = None  # turns the written file into what is passed (a build folder)


@dataclass
class Outcome:
    """Counts of results per target: exit codes of CLI runs and library outcomes."""

    cli: Counter[str] = field(default_factory=Counter)
    library: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def targets(build: Path) -> list[Target]:
    """Every parser the CLI exposes, seeded from ``build`` (see :func:`make_build`) and its sibling files."""

    from rescompile.calibrate.cache import load_stats
    from rescompile.calibrate.ranges import CalibrationResult
    from rescompile.calibrate.trt_cache import read_cache, to_trt_cache
    from rescompile.data.preprocess import get_preset, load_image, load_recipe, resolve_preprocess
    from rescompile.data.sources import check_shape, open_source
    from rescompile.graph.topology import block_map
    from rescompile.models.loader import apply_state_dict, extract_state_dict
    from rescompile.models.onnx_source import describe_onnx
    from rescompile.models.resnet_cifar import cifar_resnet
    from rescompile.quantize import insert_qdq
    from rescompile.quantize.policy import QuantPlan
    from rescompile.quantize.verify import verify_int8
    from rescompile.readers import read_onnx
    from rescompile.report.compare import compare_reports, load_report
    from rescompile.validate.gates import load_gates
    from rescompile.validate.reference import load_reference

    simplified, int8 = build / "model.simplified.onnx", build / "model.int8.onnx"
    fp32 = read_onnx(simplified)
    int8_model = read_onnx(int8)
    plan = QuantPlan.read(build / "qdq_plan.json")
    pre = get_preset("grayscale", size=16, channels=1)
    ranges_doc = json.loads((build / "ranges.json").read_text())
    report_doc = json.loads((build / "report.json").read_text())
    plan_doc = json.loads((build / "qdq_plan.json").read_text())
    manifest_doc = json.loads((build / "manifest.json").read_text())
    weights = (build.parent / "weights.pt").read_bytes()
    good_report = load_report(build / "report.json")
    calib = CalibrationResult.read(build / "ranges.json")
    cache_text = to_trt_cache(calib.ranges).encode()
    stats_bytes = (build / "calib_stats.npz").read_bytes()
    data_bytes = (build.parent / "fuzz-data.npz").read_bytes()
    ref_bytes = (build.parent / "ref.npz").read_bytes()
    bundle_bytes = (build.parent / "model.rcb").read_bytes()

    def lib_checkpoint(p: Path) -> None:
        from rescompile.models.loader import _read_checkpoint

        apply_state_dict(cifar_resnet("resnet20", 4, 1), extract_state_dict(_read_checkpoint(p, False), p), p, "resnet20")

    def lib_onnx(p: Path) -> None:
        describe_onnx(p, require_residual=False)
        block_map(read_onnx(p))

    def lib_arrays(p: Path) -> None:
        src = open_source(p)
        check_shape(src, pre, (1, 16, 16))
        for _ in src.batches(pre, 8):
            pass

    def lib_image(p: Path) -> None:
        load_image(p, pre)

    def lib_recipe(p: Path) -> None:
        resolve_preprocess("grayscale", (1, 16, 16), recipe=load_recipe(p))

    def lib_ranges(p: Path) -> None:
        insert_qdq(fp32, plan, CalibrationResult.read(p).ranges)

    def lib_stats(p: Path) -> None:
        from rescompile.calibrate.ranges import calibration_result

        stats, key, samples, sample = load_stats(p)
        calibration_result(stats, "auto", samples, key=key, sample=sample)

    def lib_plan(p: Path) -> None:
        verify_int8(fp32, int8_model, QuantPlan.read(p))

    def lib_report(p: Path) -> None:
        compare_reports(good_report, load_report(p))
        compare_reports(load_report(p), good_report)

    def build_with_manifest(p: Path) -> Path:
        """A copy of the build folder (artifacts linked) whose manifest.json is the input."""
        folder = p.parent / "build"
        folder.mkdir()
        for f in build.iterdir():
            if f.name != "manifest.json":
                (folder / f.name).symlink_to(f)
        shutil.move(p, folder / "manifest.json")
        return folder

    def lib_manifest(folder: Path) -> None:
        from rescompile.buildfolder import open_build

        open_build(folder)

    def lib_bundle(p: Path) -> None:
        from rescompile.deploy.bundle import open_bundle

        b = open_bundle(p, p.parent / "unpacked")
        b.gates  # noqa: B018 - parsing the gates is the check
        b.reference()

    def calib_cli(*extra: str) -> Callable[[Path, Path], list[str]]:
        return lambda p, out: ["calibrate", str(simplified), *extra, str(p), "--out", str(out / "ranges.json"), "-q"]

    calib_names = sorted(calib.ranges)
    return [
        Target(
            "checkpoint",
            ".pt",
            st.one_of(mutated([weights]), checkpoints(weights), random_bytes()),
            lib_checkpoint,
            lambda p, out: [
                "export",
                "resnet20",
                "--weights",
                str(p),
                "--in-channels",
                "1",
                "--input-size",
                "16",
                "--num-classes",
                "4",
                "--out",
                str(out / "m.onnx"),
            ],
        ),
        Target(
            "onnx",
            ".onnx",
            st.one_of(
                mutated([simplified.read_bytes()]), edited_onnx(simplified.read_bytes()), edited_onnx(int8.read_bytes()), random_bytes()
            ),
            lib_onnx,
            lambda p, out: ["inspect", str(p), "--json", str(out / "blocks.json")],
        ),
        Target(
            "npy",
            ".npy",
            st.one_of(npy_files(), mutated([_npy(np.zeros((4, 1, 16, 16), np.uint8))]), random_bytes()),
            lib_arrays,
            calib_cli("--calib"),
        ),
        Target(
            "npz",
            ".npz",
            st.one_of(
                npz_files(["images", "labels", "inputs", "y"]),
                mutated([data_bytes]),
                random_bytes(),
                st.just(_npy(np.zeros((4, 1, 16, 16), np.uint8))),
            ),
            lib_arrays,
            calib_cli("--calib"),
        ),
        Target(
            "image",
            ".png",
            st.one_of(images(), random_bytes()),
            lib_image,
            lambda p, out: ["calibrate", str(simplified), "--calib", str(p), "--out", str(out / "ranges.json"), "-q"],
            folder_input=True,
        ),
        Target(
            "recipe",
            ".yaml",
            st.one_of(
                yaml_docs(
                    ["preset", "layout", "name", "size", "resize", "mean", "std", "channels", "channel_order", "preprocess", "colour"]
                ),
                mutated([b"preset: grayscale\nsize: 16\n"]),
                st.sampled_from([alias_bomb("mean"), alias_bomb("size")]),
                random_bytes(),
            ),
            lib_recipe,
            lambda p, out: [
                "calibrate",
                str(simplified),
                "--calib",
                str(build.parent / "fuzz-data.npz"),
                "--recipe",
                str(p),
                "--out",
                str(out / "ranges.json"),
                "-q",
            ],
        ),
        Target(
            "gates",
            ".yaml",
            st.one_of(
                yaml_docs(["max-top1-drop", "min_agreement", "min-cosine", "max_p99_ms", "min-speedup", "latency_batch", "gates", "other"]),
                mutated([b"max-top1-drop: 1.0\n"]),
                st.just(alias_bomb("max-top1-drop")),
                random_bytes(),
            ),
            lambda p: load_gates(p),
            lambda p, out: [
                "validate",
                str(int8),
                "--reference",
                str(simplified),
                "--gates",
                str(p),
                "--val",
                str(build.parent / "fuzz-data.npz"),
                *LATENCY_RUNS,
                "--latency-batch",
                "1",
                "--out",
                str(out / "v"),
                "-q",
            ],
        ),
        Target(
            "ranges",
            ".json",
            st.one_of(edited_json([ranges_doc]).map(dump_json), mutated([dump_json(ranges_doc)]), random_bytes()),
            lib_ranges,
            lambda p, out: ["quantize", str(simplified), "--ranges", str(p), "--out", str(out / "m.onnx")],
        ),
        Target(
            "calib_stats",
            ".npz",
            st.one_of(
                mutated([stats_bytes]),
                npz_files(["meta", "hist", "min", "max", "edge", "count", "hist_count", "runs"]),
                st.builds(_stats_with_meta, st.just(stats_bytes), edited_json([json.loads(_stats_meta(stats_bytes))])),
                random_bytes(),
            ),
            lib_stats,
            calib_cli("--from-stats"),
        ),
        Target(
            "qdq_plan",
            ".json",
            st.one_of(edited_json([plan_doc]).map(dump_json), mutated([dump_json(plan_doc)]), random_bytes()),
            lib_plan,
            lambda p, out: ["inspect", str(simplified), "--int8", str(int8), "--plan", str(p), "--json", str(out / "p.json")],
        ),
        Target(
            "trt_cache",
            ".cache",
            st.one_of(trt_caches(calib_names), mutated([cache_text]), random_bytes()),
            lambda p: read_cache(p),
            calib_cli("--from-trt-cache"),
        ),
        Target(
            "reference",
            ".npz",
            st.one_of(
                mutated([ref_bytes]),
                npz_files(["inputs", "logits", "labels", "meta"]),
                st.builds(_npz_with, st.just(ref_bytes), st.sampled_from(["inputs", "logits", "labels"]), arrays()),
                random_bytes(),
            ),
            lambda p: load_reference(p),
            lambda p, out: [
                "validate",
                str(int8),
                "--reference",
                str(p),
                "--no-baseline",
                *LATENCY_RUNS,
                "--latency-batch",
                "1",
                "--out",
                str(out / "v"),
                "-q",
            ],
        ),
        Target(
            "bundle",
            ".rcb",
            st.one_of(mutated([bundle_bytes]), repacked_bundles(bundle_bytes), random_bytes()),
            lib_bundle,
            lambda p, out: ["deploy", str(p), "--backend", "onnxruntime", "--out", str(out / "d")],
        ),
        Target(
            "report",
            ".json",
            st.one_of(edited_json([report_doc]).map(dump_json), mutated([dump_json(report_doc)]), random_bytes()),
            lib_report,
            lambda p, out: ["compare", str(build / "report.json"), str(p), "--md", str(out / "c.md")],
        ),
        Target(
            "manifest",
            ".json",
            st.one_of(edited_json([manifest_doc]).map(dump_json), mutated([dump_json(manifest_doc)]), random_bytes()),
            lib_manifest,
            lambda p, out: ["inspect", str(p), "--json", str(out / "b.json")],
            prepare=build_with_manifest,
        ),
    ]


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _npz_with(seed: bytes, key: str, arr: np.ndarray) -> bytes:
    """A real archive with one array replaced (any dtype and shape)."""
    with np.load(io.BytesIO(seed)) as z:
        arrs = {k: z[k] for k in z.files}
    arrs[key] = arr
    return npz_bytes(arrs, True)


def _bundle_parts(seed: bytes) -> tuple[dict[str, bytes], dict[str, Any]]:
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(seed), mode="r:") as tar:
        parts = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    meta = json.loads(parts.pop("bundle.json"))
    meta.pop("members")
    return parts, meta


@st.composite
def repacked_bundles(draw: st.DrawFn, seed: bytes) -> bytes:
    """A bundle re-packed with consistent hashes (what anyone can make) around one hostile member or manifest field."""
    from rescompile.deploy.bundle import pack

    parts, meta = _bundle_parts(seed)
    name = draw(st.sampled_from(sorted(parts) + ["bundle.json"]))
    if name == "bundle.json":
        meta = draw(edited_json([meta]))
        meta = meta if isinstance(meta, dict) else {"x": meta}
    elif name.endswith(".json"):
        parts[name] = dump_json(draw(edited_json([json.loads(parts[name])])))
    elif name.endswith(".npz"):
        parts[name] = draw(
            st.one_of(
                st.builds(_npz_with, st.just(parts[name]), st.sampled_from(["inputs", "logits", "labels"]), arrays()),
                mutated([parts[name]]),
            )
        )
    else:
        parts[name] = draw(st.one_of(mutated([parts[name]]), random_bytes()))
    return pack(parts, {k: v for k, v in meta.items() if k not in ("schema", "members")})


def _stats_meta(stats_bytes: bytes) -> str:
    with np.load(io.BytesIO(stats_bytes)) as z:
        return z["meta"].tobytes().decode()


def _stats_with_meta(stats_bytes: bytes, meta: Any) -> bytes:
    """A real calib_stats.npz whose 'meta' JSON was edited (the arrays stay as they were)."""
    with np.load(io.BytesIO(stats_bytes)) as z:
        arrs = {k: z[k] for k in z.files}
    arrs["meta"] = np.frombuffer(json.dumps(meta, allow_nan=True).encode(), np.uint8)
    return npz_bytes(arrs, False)


# ---- running one input -------------------------------------------------------------------------------


def write_input(target: Target, data: bytes, work: Path) -> Path:
    """The input file (inside a folder of its own for image targets); ``work`` is emptied first."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if target.folder_input:
        (work / "images").mkdir()
        (work / "images" / f"a{target.suffix}").write_bytes(data)
        return work / "images"
    p = work / f"input{target.suffix}"
    p.write_bytes(data)
    return target.prepare(p) if target.prepare is not None else p


def check_library(target: Target, data: bytes, work: Path) -> str:
    """``ok`` or ``exit N`` (a RescompileError); any other exception propagates (a fuzz failure)."""
    p = write_input(target, data, work)
    lib_path = p / f"a{target.suffix}" if target.folder_input else p
    try:
        target.library(lib_path)
    except RescompileError as exc:
        assert exc.exit_code in (1, 2, 3), exc
        assert "\n" not in exc.message or exc.exit_code == 1, f"multi-line message: {exc.message!r}"
        return f"exit {exc.exit_code}"
    return "ok"


def check_cli(target: Target, data: bytes, work: Path) -> int:
    """Run the CLI on the input; assert the contract; return the exit code."""
    from typer.testing import CliRunner

    from rescompile.cli import app

    p = write_input(target, data, work)
    out = work / "out"
    out.mkdir()
    result = CliRunner().invoke(app, target.cli(p, out), env={"COLUMNS": "300"})
    text = result.output  # Click >= 8.2: stdout and stderr interleaved as on a terminal
    code = result.exit_code
    assert code in (0, 1, 2, 3), f"exit {code}:\n{text[-3000:]}\n{result.exception!r}"
    assert "Traceback" not in text, text[-3000:]
    if code == 2:
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, f"expected one error line:\n{text[-2000:]}"
        after = text[text.index(errors[0]) + len(errors[0]) :].strip().splitlines()
        assert all(ln.startswith("hint:") for ln in after[:1]) and len(after) <= 1, f"more than an error and a hint:\n{text[-2000:]}"
    if code != 0:  # nothing half-written: a failed command leaves its output location as it was
        left = sorted(str(f.relative_to(out)) for f in out.rglob("*"))
        assert not left or code == 1, f"exit {code} left {left}"
    return code


def fresh_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rescompile-fuzz-"))
