"""Bad-input classes through the real CLI: exit code, traceback or not, and the error line of each.

Every file the CLI reads is untrusted. This runs one representative per class (empty, text,
wrong format, truncated, wrong dtype, NaN, huge dimensions, a folder instead of a file, ...)
through the CLI (``rescompile.cli.main``) in a subprocess, from the checkout given by ``--tree``
(so a checkout of an older commit can be measured the same way), and records the outcome.

    python benchmarks/bad_inputs.py --label after
    git worktree add /tmp/before c64ada6 && python benchmarks/bad_inputs.py --tree /tmp/before --label before
Results: benchmarks/results/bad_inputs.json (one entry per label) and bad_inputs.md (before/after table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# ``python -m rescompile.cli`` would run cli.py as __main__, without the commands registered on rescompile.cli.app
CLI = [sys.executable, "-c", "from rescompile.cli import main; main()"]
SMALL = ["--in-channels", "1", "--input-size", "16", "--num-classes", "4", "--latency-runs", "3", "-q"]


def png_header(width: int, height: int) -> bytes:
    """A PNG announcing ``width x height`` RGB pixels in its header, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def make_fixtures(tmp: Path, tree: Path) -> dict[str, Path]:
    """Data, two build folders of different models (their reports), and a state_dict."""
    import torch

    sys.path.insert(0, str(tree))
    from rescompile.models.resnet_cifar import cifar_resnet

    rng = np.random.default_rng(0)
    data = tmp / "data.npz"
    np.savez_compressed(data, images=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8), labels=rng.integers(0, 4, 16))
    ckpt = tmp / "r20.pt"
    torch.save(cifar_resnet("resnet20", 4, 1).state_dict(), ckpt)
    out = {"data": data, "ckpt": ckpt}
    for arch in ("resnet20", "resnet32"):
        folder = tmp / f"build-{arch}"
        cmd = [*CLI, "build", arch, *SMALL, "--calib", str(data), "--val", str(data), "--out", str(folder)]
        subprocess.run(cmd, cwd=tree, check=True, capture_output=True)
        out[arch] = folder
    return out


def cases(tmp: Path, fx: dict[str, Path]) -> list[tuple[str, str, list[str]]]:
    """``(class, what, CLI args)``; files are written under ``tmp``."""
    b20, data = fx["resnet20"], fx["data"]
    simplified = b20 / "model.simplified.onnx"

    def f(name: str, content: bytes | str) -> str:
        p = tmp / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(p)

    def d(name: str) -> str:
        p = tmp / "in" / name
        p.mkdir(parents=True, exist_ok=True)
        return str(p)

    def folder_with(name: str, files: dict[str, bytes]) -> str:
        p = Path(d(name))
        for k, v in files.items():
            (p / k).write_bytes(v)
        return str(p)

    def build(*extra: str, model: str = "resnet20", calib: str | None = None) -> list[str]:
        return ["build", model, *SMALL, "--calib", calib or str(data), "--val", str(data), "--out", str(tmp / "out"), *extra]

    def npz(name: str, **arrays: Any) -> str:
        p = tmp / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, **arrays)
        return str(p)

    import torch

    sd = torch.load(fx["ckpt"], weights_only=True)
    nan_sd = {k: (v.clone().fill_(float("nan")) if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(nan_sd, tmp / "nan.pt")
    ckpt_bytes = fx["ckpt"].read_bytes()
    npy = tmp / "in" / "arr.npz"
    npy.parent.mkdir(parents=True, exist_ok=True)
    with open(npy, "wb") as fh:
        np.save(fh, np.zeros((16, 1, 16, 16), np.uint8))
    huge_npy = tmp / "in" / "huge.npy"
    with open(huge_npy, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 1, 16, 16)})
    report = json.loads((b20 / "report.json").read_text())
    no_candidate = json.loads(json.dumps(report))
    no_candidate["accuracy"] = {}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    ranges_text = (b20 / "ranges.json").read_text()
    trt = ["calibrate", str(simplified), "--out", str(tmp / "out" / "r.json"), "--from-trt-cache"]
    quant = ["quantize", str(simplified), "--out", str(tmp / "out" / "m.onnx"), "--ranges"]
    return [
        ("checkpoint", "empty file", build("--weights", f("empty.pt", b""))),
        ("checkpoint", "plain text", build("--weights", f("text.pt", "these are not weights\n"))),
        ("checkpoint", "JSON text", build("--weights", f("ckpt.json", '{"conv1.weight": [[1, 2], [3, 4]]}'))),
        ("checkpoint", "truncated torch.save file", build("--weights", f("trunc.pt", ckpt_bytes[: len(ckpt_bytes) // 2]))),
        ("checkpoint", "a folder", build("--weights", d("ckpt_dir"))),
        ("checkpoint", "NaN weights", build("--weights", str(tmp / "nan.pt"))),
        ("TorchScript", "random bytes", build(model=f("model.ts", os.urandom(256)))),
        ("TorchScript", "empty file", build(model=f("empty.pt", b""))),
        ("ONNX", "empty file", ["inspect", f("empty.onnx", b"")]),
        ("ONNX", "truncated", ["inspect", f("trunc.onnx", simplified.read_bytes()[:3000])]),
        ("ONNX", "a folder", ["inspect", d("dir.onnx"), "--int8", str(b20 / "model.int8.onnx")]),
        (".npy/.npz", ".npy named .npz", build(calib=str(npy))),
        (".npy/.npz", "truncated .npz", build(calib=f("trunc.npz", data.read_bytes()[:200]))),
        (".npy/.npz", "complex dtype", build(calib=npz("cplx.npz", images=np.zeros((4, 1, 16, 16), np.complex64)))),
        (".npy/.npz", "NaN floats", build(calib=npz("nan.npz", images=np.full((4, 1, 16, 16), np.nan, np.float32)))),
        (".npy/.npz", "header promises 10^12 rows", build(calib=str(huge_npy))),
        (".npy/.npz", "object array", build(calib=npz("obj.npz", images=np.array([{"a": 1}], dtype=object)))),
        (".npy/.npz", "no arrays", build(calib=npz("none.npz"))),
        ("image", "PNG header announcing 100000x100000", build(calib=folder_with("bomb", {"a.png": png_header(100000, 100000)}))),
        ("image", "PNG header announcing 12000x12000", build(calib=folder_with("big", {"a.png": png_header(12000, 12000)}))),
        ("image", "empty .png", build(calib=folder_with("emptyimg", {"a.png": b""}))),
        ("image", "text named .jpg", build(calib=folder_with("textimg", {"a.jpg": b"hello"}))),
        ("YAML recipe", "binary garbage", build("--recipe", f("r1.yaml", os.urandom(64) + b"\xff\xfe"))),
        ("YAML recipe", "a list", build("--recipe", f("r2.yaml", "- 1\n- 2\n"))),
        ("YAML recipe", "size: abc", build("--recipe", f("r3.yaml", "size: abc\n"))),
        ("YAML recipe", "mean: .nan", build("--recipe", f("r4.yaml", "mean: .nan\n"))),
        ("YAML recipe", "alias bomb (billion laughs)", build("--recipe", f("r5.yaml", bomb + "mean: *i\n"))),
        ("YAML recipe", "a folder", build("--recipe", d("recipe_dir"))),
        ("YAML gates", "max-top1-drop: .nan", build("--gates", f("g1.yaml", "max-top1-drop: .nan\n"))),
        ("YAML gates", "binary garbage", build("--gates", f("g2.yaml", b"\x00\xff" * 40))),
        ("YAML gates", "alias bomb", build("--gates", f("g3.yaml", bomb + "max-top1-drop: *i\n"))),
        ("ranges.json", "empty file", [*quant, f("r_empty.json", b"")]),
        ("ranges.json", "a JSON list", [*quant, f("r_list.json", "[1, 2]")]),
        ("ranges.json", "binary garbage", [*quant, f("r_bin.json", b"\xff\xfe\x00garbage")]),
        ("ranges.json", "deeply nested JSON", [*quant, f("r_deep.json", "[" * 100000)]),
        ("ranges.json", "amax NaN", [*quant, f("r_nan.json", ranges_text.replace('"amax": ', '"amax": NaN, "x": ', 1))]),
        ("ranges.json", "tensors of another model", [*quant, f("r_other.json", (fx["resnet32"] / "ranges.json").read_text())]),
        (
            "calib_stats.npz",
            "garbage",
            ["calibrate", str(simplified), "--from-stats", f("s.npz", os.urandom(128)), "--out", str(tmp / "out" / "r.json")],
        ),
        (
            "calib_stats.npz",
            "images .npz given as statistics",
            ["calibrate", str(simplified), "--from-stats", str(data), "--out", str(tmp / "out" / "r.json")],
        ),
        (
            "qdq_plan.json",
            "a JSON list",
            ["inspect", str(simplified), "--int8", str(b20 / "model.int8.onnx"), "--plan", f("plan.json", "[]")],
        ),
        ("TensorRT cache", "binary garbage", [*trt, f("c.cache", os.urandom(64) + b"\xff")]),
        ("TensorRT cache", "empty file", [*trt, f("e.cache", b"")]),
        ("TensorRT cache", "a folder", [*trt, d("cache_dir")]),
        ("report.json", "binary garbage", ["compare", f("rep1.json", b"\xff\xfe\x00"), str(b20 / "report.json")]),
        ("report.json", "accuracy section empty", ["compare", f("rep2.json", json.dumps(no_candidate)), str(b20 / "report.json")]),
        ("report.json", "reports of two different models", ["compare", str(b20 / "report.json"), str(fx["resnet32"] / "report.json")]),
        ("validate", "candidate path does not exist", ["validate", str(tmp / "does-not-exist"), "--out", str(tmp / "out" / "v")]),
        (
            "validate",
            "saved reference is garbage",
            ["validate", str(b20 / "model.int8.onnx"), "--reference", f("ref.npz", os.urandom(100)), "--out", str(tmp / "out" / "v")],
        ),
        (
            "manifest.json",
            "not JSON (build folder)",
            [
                "validate",
                folder_with("badbuild", {"manifest.json": b"{not json", "model.int8.onnx": (b20 / "model.int8.onnx").read_bytes()}),
                "--out",
                str(tmp / "out" / "v"),
            ],
        ),
    ]


def run_case(tree: Path, args: list[str], out_dir: Path) -> dict[str, Any]:
    shutil.rmtree(out_dir, ignore_errors=True)
    env = {**os.environ, "COLUMNS": "200", "RESCOMPILE_DEBUG": ""}
    try:
        p = subprocess.run([*CLI, *args], cwd=tree, capture_output=True, text=True, timeout=300, env=env)
        code, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        code, text = -1, "timeout"
    err = [ln for ln in text.splitlines() if ln.startswith("error:")]
    last = err[0] if err else (text.strip().splitlines() or [""])[-1]
    hint = next((ln for ln in text.splitlines() if ln.startswith("hint:")), "")
    return {"exit": code, "traceback": "Traceback" in text, "line": last[:300], "hint": hint[:200]}


def render(doc: dict[str, Any]) -> str:
    labels = list(doc["runs"])
    lines = [
        "# Bad-input classes through the CLI",
        "",
        "Generated by `python benchmarks/bad_inputs.py` (see its docstring): one",
        "representative file per class, run through the CLI (`rescompile.cli.main`) from each checkout.",
        "",
    ]
    for label in labels:
        lines.append(f"- **{label}**: {doc['runs'][label]['tree_commit']} ({doc['runs'][label]['date']})")
    lines += [
        "",
        "| class | input | command | " + " | ".join(f"{lb} exit" for lb in labels) + f" | {labels[-1]} message |",
        "|---|---|---|" + "---|" * len(labels) + "---|",
    ]
    first = doc["runs"][labels[-1]]["cases"]
    for i, c in enumerate(first):
        outs = [doc["runs"][lb]["cases"][i] if i < len(doc["runs"][lb]["cases"]) else None for lb in labels]
        cells = ["?" if o is None else f"{o['exit']}{' (traceback)' if o['traceback'] else ''}" for o in outs]
        msg = (first[i]["line"] + (" / " + first[i]["hint"] if first[i]["hint"] else "")).replace("|", "\\|")
        msg = re.sub(r"/tmp/rescompile-badinput-\w+/", "", msg)
        lines.append(f"| {c['class']} | {c['what']} | `rescompile {c['command']}` | " + " | ".join(cells) + f" | {msg} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose rescompile is run")
    ap.add_argument("--label", default="after")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import time

    tree = args.tree.resolve()
    commit = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="rescompile-badinput-") as t:
        tmp = Path(t)
        fx = make_fixtures(tmp, tree)
        results = []
        for cls, what, cmd in cases(tmp, fx):
            r = run_case(tree, cmd, tmp / "out")
            shown = " ".join(a.replace(str(tmp) + "/", "") for a in cmd).replace(" ".join(SMALL), "...")
            results.append({"class": cls, "what": what, "command": shown, **r})
            print(f"{cls:16} {what:40} exit {r['exit']}{' TRACEBACK' if r['traceback'] else ''}  {r['line'][:100]}", flush=True)
    path = args.out / "bad_inputs.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"schema": "rescompile.bench.bad_inputs/1", "runs": {}}
    doc["runs"][args.label] = {"tree_commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"), "cases": results}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "bad_inputs.md").write_text(render(doc))


if __name__ == "__main__":
    main()
