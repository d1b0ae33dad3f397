"""Did a ``--dla-core`` build really run on DLA? Layer counts from the inspector JSON, and the gate.

With ``GPU_FALLBACK`` on, "layers that cannot run on DLA silently fall back to GPU execution
without an error ... Verify DLA layer assignments in the engine inspector output" (TensorRT,
DLA runtime configuration). So after a DLA build the inspector's layers are counted: DLA layers
(a subgraph handed to DLA shows as one ``{ForeignNode[first...last]}`` layer, NVIDIA/TensorRT#3143;
a LayerType starting with ``DLA`` counts too), GPU compute layers, and the rest (reformat copies and
the ``... to nvm`` / ``... from nvm`` / ``copy finish`` transfers DLA adds around its subgraphs).
:func:`dla_gate` fails when no layer reached DLA or when a residual Add fell back to the GPU.
Sources: docs/tensorrt.md, "DLA".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rescompile.engine.layerinfo import is_dla_layer, parse_layers

_TRANSFER = (" to nvm", " from nvm", " copy finish")


@dataclass(frozen=True)
class DlaReport:
    """Where the inspector puts an engine's layers: counts and the DLA layers' names."""

    dla_layers: int
    gpu_layers: int
    other_layers: int  # reformat copies and DLA's nvm transfers
    detailed: bool
    dla_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dla_names"] = list(self.dla_names)
        return d


def _transfer(name: str) -> bool:
    return name.lower().endswith(_TRANSFER)


def dla_report(info: str | dict[str, Any], dla_build: bool = True) -> DlaReport:
    """Count the layers of an engine-inspector document on DLA, on the GPU and neither (pure).

    Args:
        info: the inspector JSON (text or parsed).
        dla_build: the plan was built with ``--dla-core`` (its non-Myelin subgraph layers are DLA).
    """
    layers, detailed = parse_layers(info)
    dla = [la.name for la in layers if is_dla_layer(la, dla_build)]
    other = sum(1 for la in layers if la.reformat or _transfer(la.name))
    return DlaReport(len(dla), len(layers) - len(dla) - other, other, detailed, tuple(dla))
