"""Engine-inspector JSON published by NVIDIA (trimmed, sources inside each file), and variants derived from them.

The fixtures in tests/fixtures/layerinfo/ are real TensorRT output: TREx example graphs from the
NVIDIA/TensorRT repository (TensorRT 8.x schema) and a layer pasted in NVIDIA/TensorRT#4020
(TensorRT 10.x). Each names its repo, path and commit in ``_source``; ``_residual_adds`` maps
each residual Add of the source model to its main-branch Conv (read from the model's own node
names, e.g. ``layer1.0.conv2.weight + ... + Conv_34 + Add_42``).

No published TensorRT 11.x dump was found (searched: the NVIDIA/TensorRT tree, its issues, code
search for ``IsShapeInferenceIO``/``I/O Tensors`` next to ``Layers``). The 11.x cases below are
therefore *derived* from the real 8.x dumps by the one documented change (the TensorRT 10.x-to-11.x
IEngineInspector migration guide: ``Format/Datatype`` split into separate ``Format`` and
``DataType`` fields; ``Bindings`` replaced by ``I/O Tensors``). The other variants are derived the
same way and say what they change; none of them is presented as TensorRT output.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from rescompile.graph.topology import ResidualBlock

FIXTURES = Path(__file__).parent / "fixtures" / "layerinfo"
PUBLISHED = ("trex_a100_resnet18_qat_residual_qgap.json", "trex_rtx3090_tf_resnet50_qat.json")
# What TensorRT prints for a tensor format of a dynamic-shape engine inspected without an
# execution context (a published dump: "Format/Datatype": "N/A due to dynamic shapes").
NO_CONTEXT_FORMAT = "N/A due to dynamic shapes"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def blocks(doc: dict[str, Any]) -> list[ResidualBlock]:
    """ResidualBlocks for the fixture's ``_residual_adds`` (only the fields the fusion check reads)."""
    return [
        ResidualBlock(
            add=a,
            output=f"{a}:0",
            main=f"{c}:0",
            main_producer=c,
            main_producer_op="Conv",
            main_depth=1,
            shortcut="s",
            shortcut_kind="identity",
            shortcut_nodes=(),
            block_input="b",
            follower=None,
            follower_node=None,
        )
        for a, c in doc["_residual_adds"].items()
    ]


def _tensors(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for la in doc["Layers"] for key in ("Inputs", "Outputs") for t in la.get(key, [])]


def as_trt11_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The same layers in the 11.x schema: ``Format`` + ``DataType`` instead of ``Format/Datatype``."""
    out = copy.deepcopy(doc)
    for t in _tensors(out):
        fmt = t.pop("Format/Datatype")
        t["Format"] = fmt
        t["DataType"] = "Int8" if "int8" in fmt.lower() else "Float"
    out["I/O Tensors"] = [{"Name": n} for n in out.pop("Bindings", [])]
    return out


def without_formats(doc: dict[str, Any], value: str | None = NO_CONTEXT_FORMAT) -> dict[str, Any]:
    """Every tensor format replaced by ``value`` (None: the field removed), as when nothing is readable."""
    out = copy.deepcopy(doc)
    for t in _tensors(out):
        t.pop("Format/Datatype", None)
        if value is not None:
            t["Format/Datatype"] = value
    return out


def with_reformats(doc: dict[str, Any]) -> dict[str, Any]:
    """A ``Reformatting CopyNode for Input Tensor 1 to <layer>`` (FP32 -> INT8) before every layer that
    carries a residual Add, named the way TensorRT names them (NVIDIA/TensorRT#4020 shows the pattern)."""
    out = copy.deepcopy(doc)
    layers = []
    for la in out["Layers"]:
        if any(a in la["Name"].split(" + ") for a in doc["_residual_adds"]) and len(la["Inputs"]) > 1:
            res = la["Inputs"][1]
            layers.append(
                {
                    "Name": f"Reformatting CopyNode for Input Tensor 1 to {la['Name']}",
                    "LayerType": "Reformat",
                    "Inputs": [{"Name": res["Name"], "Format/Datatype": "Row major linear FP32"}],
                    "Outputs": [{"Name": f"Reformatted Input Tensor 1 to {la['Name']}", "Format/Datatype": res["Format/Datatype"]}],
                    "Origin": "REFORMAT",
                }
            )
        layers.append(la)
    out["Layers"] = layers
    return out


def variants() -> list[tuple[str, dict[str, Any]]]:
    """(label, document) for every published dump and every variant derived from it."""
    out = []
    for name in PUBLISHED:
        doc = load(name)
        stem = name.removesuffix(".json")
        out += [
            (stem, doc),
            (f"{stem} as 11.x schema (derived)", as_trt11_schema(doc)),
            (f"{stem} with reformat layers (derived)", with_reformats(doc)),
            (f"{stem} without formats, as uninspected dynamic shapes (derived)", without_formats(doc)),
        ]
    return out
