"""Target profiles as data: Jetson modules, desktop GPUs, generic ``sm_XX`` and ``cpu``.

Sources (shared/notes/tensorrt.md): DLA cores per module, compute capability (Xavier 7.2,
Orin 8.7, Thor 11.0 under CUDA 13), and the TensorRT that each JetPack ships (JetPack 5.1:
8.5, JetPack 6.1/6.2: 10.3, JetPack 7.0: 10.13 (unconfirmed), JetPack 7.2.2+: 11.4.1 on
AGX Orin and Thor). Default workspace limits are our own choice: small on 8 GB modules,
where engine builds are known to be killed for memory (TensorRT#3355).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rescompile.errors import UsageError

Kind = Literal["jetson", "desktop", "cpu"]


@dataclass(frozen=True)
class Target:
    """Where an engine will run. ``None`` means "any" or "not known in advance"."""

    name: str
    description: str
    kind: Kind
    compute_capability: tuple[int, int] | None = None
    dla_cores: int = 0
    memory_gib: int | None = None
    workspace_mib: int = 4096
    tensorrt_major: int | None = None  # the major version the target ships (Jetson) or None (any)
    tensorrt_version: str | None = None  # the exact version JetPack ships, where known
    jetpack: str | None = None
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def sm(self) -> str | None:
        """``sm_87`` style name of the compute capability."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"

    @property
    def has_tensorrt(self) -> bool:
        return self.kind != "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        d["aliases"] = list(self.aliases)
        return d


_ORIN = (8, 7)
_XAVIER = (7, 2)
_THOR = (11, 0)

# JetPack -> (TensorRT major, TensorRT version it ships); 7.0's TensorRT version is unconfirmed.
# 7.2.2: 11.4.1 is what these targets *need installed* (NVIDIA's SBSA package, "supports JetPack 7.2.2
# or later", 11.4.1 release notes), not what JetPack ships by default (a JP 7.2.1 inventory lists apt
# TensorRT 10.16): unverified, see docs/tensorrt.md.
JETPACK_TENSORRT: dict[str, tuple[int, str]] = {
    "5.1": (8, "8.5"),
    "6.0": (8, "8.6"),
    "6.2": (10, "10.3"),
    "7.0": (10, "10.13"),
    "7.2.2": (11, "11.4.1"),
}


def _jetson(
    name: str,
    description: str,
    cc: tuple[int, int],
    dla: int,
    memory_gib: int,
    workspace_mib: int,
    jetpack: str,
    aliases: tuple[str, ...] = (),
    note: str = "",
) -> Target:
    major, version = JETPACK_TENSORRT[jetpack]
    return Target(
        name,
        description,
        "jetson",
        cc,
        dla_cores=dla,
        memory_gib=memory_gib,
        workspace_mib=workspace_mib,
        tensorrt_major=major,
        tensorrt_version=version,
        jetpack=jetpack,
        aliases=aliases,
        note=note,
    )


_TRT85 = "JetPack 5 ships TensorRT 8.5: build with trtexec on the device"
_SBSA = "TensorRT 11.4.1 installed from NVIDIA's SBSA package (JetPack 7.2.2+ may ship an older 10.x by default)"
TARGETS: tuple[Target, ...] = (
    _jetson("jetson-agx-orin", "Jetson AGX Orin 32/64 GB, JetPack 6.1/6.2", _ORIN, 2, 32, 4096, "6.2", ("agx-orin", "orin-agx")),
    _jetson(
        "jetson-agx-orin-jp7",
        "Jetson AGX Orin, JetPack 7.2.2+ (DLA strongly typed)",
        _ORIN,
        2,
        32,
        4096,
        "7.2.2",
        note=_SBSA,
    ),
    _jetson(
        "jetson-orin-nx-16gb",
        "Jetson Orin NX 16 GB, JetPack 6.1/6.2",
        _ORIN,
        2,
        16,
        2048,
        "6.2",
        ("jetson-orin-nx", "orin-nx", "orin-nx-16gb"),
    ),
    _jetson("jetson-orin-nx-8gb", "Jetson Orin NX 8 GB, JetPack 6.1/6.2", _ORIN, 1, 8, 1024, "6.2", ("orin-nx-8gb",)),
    _jetson(
        "jetson-orin-nano",
        "Jetson Orin Nano 8 GB (no DLA), JetPack 6.1/6.2",
        _ORIN,
        0,
        8,
        1024,
        "6.2",
        ("orin-nano", "jetson-orin-nano-8gb"),
    ),
    _jetson("jetson-agx-xavier", "Jetson AGX Xavier 32 GB, JetPack 5.1", _XAVIER, 2, 32, 4096, "5.1", ("agx-xavier",), _TRT85),
    _jetson("jetson-xavier-nx", "Jetson Xavier NX 8 GB, JetPack 5.1", _XAVIER, 2, 8, 1024, "5.1", ("xavier-nx",), _TRT85),
    _jetson(
        "jetson-thor",
        "Jetson AGX Thor (no DLA), JetPack 7.0",
        _THOR,
        0,
        128,
        8192,
        "7.0",
        ("thor",),
        "the TensorRT version of JetPack 7.0 is unconfirmed",
    ),
    _jetson("jetson-thor-jp7.2", "Jetson AGX Thor (no DLA), JetPack 7.2.2+", _THOR, 0, 128, 8192, "7.2.2", note=_SBSA),
    Target("rtx-turing", "Desktop Turing GPU (RTX 20, T4)", "desktop", (7, 5), aliases=("turing", "t4")),
    Target("a100", "Data-center Ampere A100", "desktop", (8, 0), workspace_mib=8192, aliases=("ampere-a100",)),
    Target("rtx-ampere", "Desktop Ampere GPU (RTX 30, A10, A40)", "desktop", (8, 6), aliases=("ampere", "a10")),
    Target("rtx-ada", "Desktop Ada GPU (RTX 40, L4, L40)", "desktop", (8, 9), aliases=("ada", "l4")),
    Target("hopper", "Data-center Hopper (H100, H200)", "desktop", (9, 0), workspace_mib=8192, aliases=("h100",)),
    Target("rtx-blackwell", "Desktop Blackwell GPU (RTX 50)", "desktop", (12, 0), aliases=("blackwell",)),
    Target("gpu", "Whatever NVIDIA GPU this machine has", "desktop", None, aliases=("local", "native")),
    Target("cpu", "No GPU: ONNX Runtime on the CPU (no TensorRT engine)", "cpu", None, workspace_mib=0),
)

_SM = re.compile(r"^sm_?(\d{1,2})(\d)$")


def target_names() -> list[str]:
    """Canonical names of every profile, in table order."""
    return [t.name for t in TARGETS]


def _generic_sm(name: str) -> Target | None:
    m = _SM.match(name)
    if m is None:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    if not 5 <= major <= 13:
        raise UsageError(
            f"compute capability {major}.{minor} in {name!r} is not an NVIDIA GPU rescompile knows",
            hint="use sm_XY with X between 5 and 13, e.g. sm_86",
        )
    return Target(f"sm_{major}{minor}", f"Generic GPU of compute capability {major}.{minor}", "desktop", (major, minor))


def get_target(name: str) -> Target:
    """The profile called ``name`` (canonical name, alias, or ``sm_XY``; case-insensitive).

    Raises:
        UsageError: no such target; the message lists the names and suggests the closest.
    """
    key = name.strip().lower().replace("_", "-") if not name.strip().lower().startswith("sm") else name.strip().lower()
    for t in TARGETS:
        if key == t.name or key in t.aliases:
            return t
    generic = _generic_sm(key)
    if generic is not None:
        return generic
    known = target_names() + [a for t in TARGETS for a in t.aliases]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}?" if close else "run `rescompile targets` for the table"
    raise UsageError(f"unknown target {name!r}; known targets: {', '.join(target_names())}, or sm_XY", hint=hint)
