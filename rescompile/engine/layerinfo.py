"""Read TensorRT engine layer information (inspector JSON) and check residual-Add fusion.

Pure functions over the JSON that ``IEngineInspector.get_engine_information(JSON)`` returns
with ``ProfilingVerbosity.DETAILED``: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name",
"Format/Datatype"}], "Outputs": [...], "Metadata"?, "Origin"?, "TacticName"?}], "Bindings" (10.x)
| "I/O Tensors" (11.x)}``. With lower verbosity ``Layers`` is a list of names only.

A residual Add counts as fused into an INT8 layer when one engine layer carries both the Add
and the main-branch Conv (by name or ONNX-layer metadata) and every input of that layer (the
Conv's input and the residual) is INT8.
How TensorRT names fused layers (" + " between the parts) is documented nowhere we could find;
so names are matched as whole tokens in the layer name and in its metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from rescompile.graph.topology import ResidualBlock

_META = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


@dataclass(frozen=True)
class Layer:
    name: str
    layer_type: str
    input_formats: tuple[str, ...]
    output_formats: tuple[str, ...]
    origins: frozenset[str]  # ONNX node names this layer came from (name parts + metadata)

    @property
    def int8_in(self) -> bool:
        """Every input (data and residual) is INT8; a float shortcut makes the fused output float."""
        formats = [f for f in self.input_formats if f]
        return bool(formats) and all("int8" in f.lower() for f in formats)

    @property
    def int8_out(self) -> bool:
        return any("int8" in f.lower() for f in self.output_formats)


@dataclass(frozen=True)
class AddFusion:
    """How one residual Add ended up in the engine."""

    add: str
    main_conv: str
    status: str  # "fused-int8" | "fused-float" | "unfused" | "not-found" | "unknown"
    layer: str | None
    layer_type: str | None
    input_formats: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "fused-int8"


@dataclass(frozen=True)
class FusionReport:
    detailed: bool
    adds: tuple[AddFusion, ...]

    @property
    def ok(self) -> bool:
        return self.detailed and all(a.ok for a in self.adds)

    def to_dict(self) -> dict[str, Any]:
        return {"detailed": self.detailed, "ok": self.ok,
                "adds": [asdict(a) | {"ok": a.ok} for a in self.adds]}  # fmt: skip


def _formats(tensors: Any) -> tuple[str, ...]:
    if not isinstance(tensors, list):
        return ()
    return tuple(str(t.get("Format/Datatype", "")) for t in tensors if isinstance(t, dict))


def _origins(name: str, layer: dict[str, Any]) -> frozenset[str]:
    parts = {p.strip() for p in name.split(" + ") if p.strip()}
    for key in ("Metadata", "Origin"):
        value = layer.get(key)
        if isinstance(value, str):
            parts.update(m.strip() for m in _META.findall(value))
    return frozenset(parts)


def parse_layers(info: str | dict[str, Any]) -> tuple[list[Layer], bool]:
    """Layers of an engine-inspector JSON document, and whether it has detailed information.

    Args:
        info: the JSON text or its parsed value.

    Returns:
        (layers, detailed); ``detailed`` is False when the engine was built without
        ``ProfilingVerbosity.DETAILED`` (layers are then names only, without formats).
    """
    doc = json.loads(info, strict=False) if isinstance(info, str) else info
    raw = doc.get("Layers", []) if isinstance(doc, dict) else []
    layers: list[Layer] = []
    detailed = bool(raw) and all(isinstance(x, dict) for x in raw)
    for x in raw:
        if isinstance(x, dict):
            name = str(x.get("Name", ""))
            layers.append(Layer(name, str(x.get("LayerType", "")), _formats(x.get("Inputs")),
                                _formats(x.get("Outputs")), _origins(name, x)))  # fmt: skip
        else:
            name = str(x)
            layers.append(Layer(name, "", (), (), _origins(name, {})))
    return layers, detailed


def _find(layers: list[Layer], node: str) -> Layer | None:
    for layer in layers:
        if node in layer.origins:
            return layer
    # Fallback: the node name as a whole token inside a longer layer name.
    token = re.compile(r"(?<![\w./-])" + re.escape(node) + r"(?![\w./-])")
    for layer in layers:
        if token.search(layer.name):
            return layer
    return None


def check_residual_fusion(info: str | dict[str, Any], blocks: list[ResidualBlock]) -> FusionReport:
    """For each residual Add: is it fused with its main-branch Conv into a layer reading INT8?

    Args:
        info: engine-inspector JSON (``LayerInformationFormat.JSON``).
        blocks: the residual blocks of the ONNX the engine was built from.
    """
    layers, detailed = parse_layers(info)
    adds = []
    for b in blocks:
        layer = _find(layers, b.add)
        if not detailed:
            status = "unknown"
        elif layer is None:
            status = "not-found"
        elif b.main_producer and (b.main_producer in layer.origins or _find([layer], b.main_producer)):
            status = "fused-int8" if layer.int8_in else "fused-float"
        else:
            status = "unfused"
        adds.append(AddFusion(b.add, b.main_producer, status, layer.name if layer else None,
                              layer.layer_type if layer else None, layer.input_formats if layer else ()))  # fmt: skip
    return FusionReport(detailed, tuple(adds))


def io_tensors(info: str | dict[str, Any]) -> list[Any]:
    """The engine's I/O tensor list: ``Bindings`` in 10.x, ``I/O Tensors`` in 11.x."""
    doc = json.loads(info, strict=False) if isinstance(info, str) else info
    for key in ("I/O Tensors", "Bindings"):
        if isinstance(doc, dict) and key in doc:
            return list(doc[key])
    return []
