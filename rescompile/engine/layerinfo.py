"""Read TensorRT engine layer information (inspector JSON) and check residual-Add fusion.

Pure functions over the JSON that ``IEngineInspector.get_engine_information(JSON)`` returns
with ``ProfilingVerbosity.DETAILED``: ``{"Layers": [{"Name", "LayerType", "Inputs": [{"Name",
"Format/Datatype"}], "Outputs": [...], "Metadata"?, "Origin"?, "TacticName"?}], "Bindings" (10.x)
| "I/O Tensors" (11.x)}``. With lower verbosity ``Layers`` is a list of names only.

Schema facts this module relies on (sources in docs/tensorrt.md):

- 8.x/10.x tensors carry one joined ``Format/Datatype`` string; TensorRT 11 splits it into
  separate fields (TensorRT 10.x-to-11.x IEngineInspector migration guide), read here as
  ``Format`` + ``DataType``. A tensor without a readable format (no field, ``"N/A due to dynamic
  shapes"`` when no execution context was attached, ``"Unknown format"``) is *unknown*, never float.
- Reformat layers (``LayerType: "Reformat"``, names ``Reformatting CopyNode for Input Tensor 1 to
  <consumer name>``) repeat the name of the layer they feed: they are never the Add's layer.
- A DLA (or Myelin) subgraph is one layer named ``{ForeignNode[<first>...<last>]}``: an Add inside
  it is found through the ONNX node order, and on a DLA build it is judged by the subgraph's I/O.
  Subgraph layers are looked up *before* any Metadata match (a Myelin/DLA layer's Metadata lists
  its members, NVIDIA/TensorRT#4397), and an endpoint that is itself a fused name (``/A + B``) is
  split on `` + ``.
- On a ``--dla-core`` build an Add found in a GPU layer has fallen back to the GPU (``gpu-fallback``).

A residual Add counts as fused into an INT8 layer when one engine layer carries both the Add
and the main-branch Conv (by name or ONNX-layer metadata) and every input of that layer (the
Conv's input and the residual) is INT8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rescompile.graph.topology import ResidualBlock

_META = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_FOREIGN = re.compile(r"^\{ForeignNode\[(.+?)\.\.\.(.+)\]\}$")
_NO_FORMAT = ("n/a", "unknown", "none")

# Statuses an Add can get; only these pass the gate. A DLA subgraph hides its fusions, so an Add
# there is "dla-io-int8" (its subgraph reads and writes INT8), never called "fused".
OK_STATUSES = frozenset({"fused-int8", "dla-io-int8"})
# LayerType values of subgraph layers (TensorRT compiles the subgraph itself, outside the layer list).
SUBGRAPH_TYPES = ("myelin", "dla", "foreign")


def tensor_format(tensor: Any) -> str:
    """One tensor's format text: 10.x ``Format/Datatype``, or 11.x ``Format`` and ``DataType`` joined."""
    if not isinstance(tensor, dict):
        return ""
    if "Format/Datatype" in tensor:
        return str(tensor["Format/Datatype"]).strip()
    parts = [str(tensor[k]).strip() for k in ("Format", "DataType", "Datatype") if k in tensor]
    return " / ".join(p for p in parts if p)


def precision(fmt: str) -> str:
    """``"int8"``, ``"float"`` (FP32/FP16/BF16/TF32), ``"other"`` or ``"unknown"`` (nothing readable)."""
    f = fmt.strip().lower()
    if not f or f.startswith(_NO_FORMAT) or "unknown format" in f:
        return "unknown"
    if "uint8" in f:
        return "other"
    if "int8" in f:
        return "int8"
    if any(k in f for k in ("fp32", "fp16", "float", "half", "bf16", "tf32")):
        return "float"
    return "other"


@dataclass(frozen=True)
class Layer:
    name: str
    layer_type: str
    input_formats: tuple[str, ...]
    output_formats: tuple[str, ...]
    origins: frozenset[str]  # ONNX node names this layer came from (name parts + metadata)
    tactic: str = ""  # TacticName (detailed verbosity), e.g. "sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_..."
    weights_type: str = ""  # Weights.Type of a weighted layer, e.g. "Int8"

    @property
    def reformat(self) -> bool:
        """A layout/precision copy TensorRT inserted; its name repeats the consumer's name."""
        return self.layer_type.lower() == "reformat" or self.name.startswith("Reformatting CopyNode")

    @property
    def foreign(self) -> tuple[str, str] | None:
        """(first, last) ONNX node of a ``{ForeignNode[first...last]}`` subgraph layer (DLA or Myelin)."""
        m = _FOREIGN.match(self.name)
        return (m.group(1), m.group(2)) if m else None

    @property
    def subgraph(self) -> bool:
        """A layer TensorRT hands to another compiler whole: a ``{ForeignNode[...]}`` span, Myelin or DLA."""
        return self.foreign is not None or self.layer_type.lower().startswith(SUBGRAPH_TYPES)

    @property
    def dla_type(self) -> bool:
        """The inspector's LayerType itself says DLA (the exact string is unconfirmed: any ``DLA...``)."""
        return self.layer_type.lower().startswith("dla")

    @property
    def myelin(self) -> bool:
        return self.layer_type.lower().startswith("myelin")

    @property
    def input_precision(self) -> str:
        """``int8`` when every input is INT8; ``float`` when any is float/other; else ``unknown``."""
        return _combine([precision(f) for f in self.input_formats])

    @property
    def int8_in(self) -> bool:
        """Every input (data and residual) is INT8; a float shortcut makes the fused output float."""
        return self.input_precision == "int8"

    @property
    def int8_out(self) -> bool:
        return any(precision(f) == "int8" for f in self.output_formats)


def _combine(precisions: list[str]) -> str:
    if any(p in ("float", "other") for p in precisions):
        return "float"
    if precisions and all(p == "int8" for p in precisions):
        return "int8"
    return "unknown"


@dataclass(frozen=True)
class AddFusion:
    """How one residual Add ended up in the engine."""

    add: str
    main_conv: str
    # "fused-int8" | "fused-float" | "unfused" | "not-found" | "unknown" (no readable format or
    # names-only information) | "dla-io-int8" | "dla-io-float" | "dla-io-unknown" (inside a DLA
    # subgraph, judged by its I/O) | "gpu-fallback" (a --dla-core build ran this Add on the GPU)
    status: str
    layer: str | None
    layer_type: str | None
    input_formats: tuple[str, ...] = ()
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


@dataclass(frozen=True)
class FusionReport:
    detailed: bool
    adds: tuple[AddFusion, ...]

    @property
    def ok(self) -> bool:
        return self.detailed and all(a.ok for a in self.adds)

    def counts(self) -> dict[str, int]:
        """How many Adds got each status."""
        out: dict[str, int] = {}
        for a in self.adds:
            out[a.status] = out.get(a.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"detailed": self.detailed, "ok": self.ok, "counts": self.counts(), "adds": [asdict(a) | {"ok": a.ok} for a in self.adds]}


def _formats(tensors: Any) -> tuple[str, ...]:
    if not isinstance(tensors, list):
        return ()
    return tuple(tensor_format(t) for t in tensors if isinstance(t, dict))


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
            weights = x.get("Weights")
            layers.append(
                Layer(
                    name,
                    str(x.get("LayerType", "")),
                    _formats(x.get("Inputs")),
                    _formats(x.get("Outputs")),
                    _origins(name, x),
                    str(x.get("TacticName", "")),
                    str(weights.get("Type", "")) if isinstance(weights, dict) else "",
                )
            )
        else:
            name = str(x)
            layers.append(Layer(name, "", (), (), _origins(name, {})))
    return layers, detailed


def _find(layers: list[Layer], node: str) -> Layer | None:
    """The compute layer that carries ONNX node ``node``; reformat copies never count."""
    candidates = [la for la in layers if not la.reformat]
    for layer in candidates:
        if node in layer.origins:
            return layer
    # Fallback: the node name as a whole token inside a longer layer name.
    token = re.compile(r"(?<![\w./-])" + re.escape(node) + r"(?![\w./-])")
    for layer in candidates:
        if token.search(layer.name):
            return layer
    return None


def _endpoint(text: str, order: dict[str, int], pick: Any) -> int | None:
    """The ONNX position of a span endpoint; a fused endpoint (``/A + B``) gives its first/last known part."""
    found = [order[p.strip()] for p in text.split(" + ") if p.strip() in order]
    return pick(found) if found else None


def _find_foreign(layers: list[Layer], node: str, order: dict[str, int]) -> Layer | None:
    """The subgraph layer (``{ForeignNode[first...last]}``, Myelin, DLA) that holds ``node``.

    Membership by the span's parts, then by the ONNX node range ``first <= node <= last`` (each
    endpoint split on `` + ``), then by the layer's ONNX-layer Metadata.
    """
    subgraphs = [la for la in layers if la.subgraph and not la.reformat]
    for layer in subgraphs:
        span = layer.foreign
        if span is None:
            continue
        parts = {p.strip() for end in span for p in end.split(" + ")}
        if node in parts:
            return layer
        lo, hi, at = _endpoint(span[0], order, min), _endpoint(span[1], order, max), order.get(node)
        if lo is not None and hi is not None and at is not None and lo <= at <= hi:
            return layer
    for layer in subgraphs:
        if node in layer.origins:
            return layer
    return None


def _dla_status(layer: Layer) -> tuple[str, str]:
    """A DLA subgraph hides its internal fusions: judge it by the precision it reads and writes.

    What the inspector can show is whether the subgraph's inputs and outputs are INT8 (an FP16
    boundary means the Add ran in FP16 there). INT8 I/O does not show that the Add itself ran in
    INT8 inside the loadable, so the status says "io", not "fused".
    """
    p = _combine([precision(f) for f in layer.input_formats + layer.output_formats])
    note = "inside a DLA subgraph (fusion inside DLA is not shown); judged by its I/O formats"
    return f"dla-io-{p}", note


def is_dla_layer(layer: Layer, dla_build: bool) -> bool:
    """A layer that runs on DLA: LayerType ``DLA...``, or on a ``--dla-core`` build a non-Myelin subgraph layer."""
    if layer.reformat:
        return False
    return layer.dla_type or (dla_build and layer.subgraph and not layer.myelin)


def check_residual_fusion(
    info: str | dict[str, Any], blocks: list[ResidualBlock], *, node_order: Sequence[str] = (), dla: bool = False
) -> FusionReport:
    """For each residual Add: is it fused with its main-branch Conv into a layer reading INT8?

    Args:
        info: engine-inspector JSON (``LayerInformationFormat.JSON``).
        blocks: the residual blocks of the ONNX the engine was built from.
        node_order: the ONNX graph's node names in order, to place Adds inside
            ``{ForeignNode[first...last]}`` subgraph layers.
        dla: the engine was built for a DLA core: an Add inside a foreign subgraph runs on DLA.
    """
    layers, detailed = parse_layers(info)
    order = {n: i for i, n in enumerate(node_order)}
    adds = []
    for b in blocks:
        note = ""
        foreign = _find_foreign(layers, b.add, order) if detailed else None
        layer = foreign or _find(layers, b.add)
        if not detailed:
            status, note = "unknown", "names-only layer information (build with ProfilingVerbosity.DETAILED)"
        elif foreign is not None and is_dla_layer(foreign, dla):
            status, note = _dla_status(foreign)
        elif foreign is not None:
            status, note = "unfused", "inside a foreign (Myelin) subgraph layer"
        elif layer is None:
            status = "not-found"
        elif b.main_producer and (b.main_producer in layer.origins or _find([layer], b.main_producer)):
            p = layer.input_precision
            status = {"int8": "fused-int8", "float": "fused-float"}.get(p, "unknown")
            if status == "unknown":
                note = "no readable tensor format in the layer information (dynamic shapes inspected without an execution context?)"
                note += secondary_evidence(layer)
        else:
            status = "unfused"
        if dla and layer is not None and detailed and not is_dla_layer(layer, dla):
            note = f"the DLA build ran this Add on the GPU (as {status})"
            status = "gpu-fallback"
        adds.append(
            AddFusion(
                b.add,
                b.main_producer,
                status,
                layer.name if layer else None,
                layer.layer_type if layer else None,
                layer.input_formats if layer else (),
                note,
            )
        )
    return FusionReport(detailed, tuple(adds))


_I8_TACTIC = re.compile(r"(?<![a-z0-9])i8i8|int8", re.IGNORECASE)


def secondary_evidence(layer: Layer) -> str:
    """What TacticName and Weights.Type say about an Add's layer whose formats are unreadable.

    Shown in the report only: an INT8 tactic (``..._i8i8_...``) or INT8 weights say the Conv ran
    INT8, not that the residual input was INT8, so the status stays ``unknown`` and the gate fails.
    """
    found = []
    if _I8_TACTIC.search(layer.tactic):
        found.append(f"TacticName {layer.tactic!r} is an INT8 kernel")
    if "int8" in layer.weights_type.lower():
        found.append(f"weights are {layer.weights_type}")
    return ("; secondary evidence (not used by the gate): " + ", ".join(found)) if found else ""


def fine_precision(fmt: str) -> str:
    """A tensor format as ``int8`` | ``fp16`` | ``bf16`` | ``fp32`` | ``other`` | ``unknown`` (for per-layer reports)."""
    coarse = precision(fmt)
    if coarse != "float":
        return coarse
    f = fmt.lower()
    if "bf16" in f or "bfloat16" in f:
        return "bf16"
    if "fp16" in f or "half" in f:
        return "fp16"
    return "fp32"


def layer_precisions(info: str | dict[str, Any]) -> dict[str, Any]:
    """Which precision each compute layer writes (its first output's format), and the counts per precision.

    Reformat copies are left out (they convert between the precisions of their neighbours).
    """
    layers, detailed = parse_layers(info)
    rows = []
    counts: dict[str, int] = {}
    for la in layers:
        if la.reformat:
            continue
        p = fine_precision(la.output_formats[0]) if la.output_formats else "unknown"
        counts[p] = counts.get(p, 0) + 1
        rows.append({"layer": la.name, "type": la.layer_type, "precision": p})
    return {"detailed": detailed, "counts": dict(sorted(counts.items())), "layers": rows}


def io_tensors(info: str | dict[str, Any]) -> list[Any]:
    """The engine's I/O tensor list: ``Bindings`` in 10.x, ``I/O Tensors`` in 11.x."""
    doc = json.loads(info, strict=False) if isinstance(info, str) else info
    for key in ("I/O Tensors", "Bindings"):
        if isinstance(doc, dict) and key in doc:
            return list(doc[key])
    return []
