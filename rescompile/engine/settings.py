"""Engine build settings as pure functions of a target, the model's input and the user's options.

Nothing here imports TensorRT: every decision (workspace, optimization profile, DLA, which
flags each TensorRT version takes, the timing-cache key, the refusals) is made here and
unit-tested without a GPU; ``rescompile.engine.tensorrt`` only applies the result.

TensorRT facts used (shared/notes/tensorrt.md): 10.x builds Q/DQ graphs as strongly typed
networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) and needs no precision flag;
11.x networks are always strongly typed and the precision flags (INT8/FP16/...) are gone.
DLA on 10.x runs INT8 only through implicit quantization (per-tensor ranges, INT8 + FP16
flags, GPU fallback); 11.0-11.3 have no DLA; 11.4.1 brings it back, strongly typed.
DLA also needs static shapes (min = opt = max).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from rescompile.engine.targets import Target
from rescompile.errors import MissingDependency, UsageError

MIB = 1 << 20
MAX_BATCH = 4096
DLA_STRONGLY_TYPED_SINCE = (11, 4, 1)
DLA_LAST_10X = (10, 7)  # "TensorRT 10.7 was the last 10.x release that supported DLA" (11.4.1 release notes)
REST_PRECISIONS = ("fp16", "fp32")
TRTEXEC_JETSON = "/usr/src/tensorrt/bin/trtexec"


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version as numbers, so ``10.10 > 10.9`` (never compare version strings)."""

    parts: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.parts[0]

    @property
    def minor(self) -> int:
        return self.parts[1] if len(self.parts) > 1 else 0

    def at_least(self, *other: int) -> bool:
        return _pad(self.parts) >= _pad(other)

    def __str__(self) -> str:
        return ".".join(str(p) for p in self.parts)


def _pad(parts: tuple[int, ...]) -> tuple[int, ...]:
    return parts + (0,) * (4 - len(parts))


_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+){0,3})")


def parse_version(text: str) -> TrtVersion:
    """``"10.14.1.48.post1"`` -> TrtVersion((10, 14, 1, 48)); suffixes after the numbers are ignored.

    Raises:
        UsageError: ``text`` does not start with a number.
    """
    m = _VERSION.match(text)
    if m is None:
        raise UsageError(f"cannot read a TensorRT version from {text!r}")
    return TrtVersion(tuple(int(p) for p in m.group(1).split(".")))


@dataclass(frozen=True)
class InputSpec:
    """The model's one image input: its name and shape, batch first (None when dynamic)."""

    name: str
    batch: int | None
    chw: tuple[int, ...]


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """Read the single non-initializer input of ``model``.

    Raises:
        UsageError: no input, several inputs, or a non-batch dimension that is not a fixed number.
    """
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UsageError(f"expected a model with one input, found {len(inputs)}: {[i.name for i in inputs]}")
    (inp,) = inputs
    dims = inp.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise UsageError(f"input {inp.name!r} has rank {len(dims)}; expected a batch of images (N, C, H, W)")
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    chw = []
    for d in dims[1:]:
        if not (d.HasField("dim_value") and d.dim_value > 0):
            raise UsageError(
                f"input {inp.name!r} has a non-fixed dimension {d.dim_param or '?'!r} besides the batch",
                hint="export with a fixed image size",
            )
        chw.append(d.dim_value)
    return InputSpec(inp.name, batch, tuple(chw))


@dataclass(frozen=True)
class EngineOptions:
    """What the user asked for; None means "the target's default"."""

    workspace_mib: int | None = None
    dla_core: int | None = None
    batches: tuple[int, ...] = (1,)
    opt_batch: int | None = None
    optimization_level: int = 3
    rest_precision: str | None = None  # what stays unquantized runs in: fp16 | fp32; None: fp16 (the default for GPU and DLA)


@dataclass(frozen=True)
class Profile:
    """One optimization profile for the input: full shapes, batch first."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class FlagPlan:
    """How a TensorRT version builds a Q/DQ network: creation flag, builder flags, DLA mode."""

    strongly_typed: bool
    builder_flags: tuple[str, ...]
    dla_mode: str | None  # None (GPU) | "implicit" (10.x: Q/DQ -> ranges) | "strongly-typed" (11.4.1+)


@dataclass(frozen=True)
class EngineSettings:
    """Everything the builder is told, decided before TensorRT is touched; recorded in the sidecar."""

    target: str
    tensorrt_version: str
    input_name: str
    profile: Profile
    workspace_bytes: int
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    dla_core: int | None = None
    dla_mode: str | None = None
    optimization_level: int = 3
    profiling_verbosity: str = "DETAILED"
    notes: tuple[str, ...] = field(default=())
    rest_precision: str = "fp32"  # the non-quantized layers: "fp16" (typed FP16 in the engine's ONNX, or the FP16 flag) | "fp32"
    onnx_parser_flags: tuple[str, ...] = ()

    @property
    def workspace_mib(self) -> int:
        return self.workspace_bytes // MIB

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["profile"] = {k: list(v) for k, v in asdict(self.profile).items()}
        d["builder_flags"] = list(self.builder_flags)
        d["notes"] = list(self.notes)
        d["onnx_parser_flags"] = list(self.onnx_parser_flags)
        return d


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32), sorted and de-duplicated.

    Raises:
        UsageError: not a comma-separated list of integers in 1..MAX_BATCH.
    """
    try:
        values = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise UsageError(f"--batch takes comma-separated integers such as 1,8,32, not {text!r}") from None
    if not values or any(not 1 <= v <= MAX_BATCH for v in values):
        raise UsageError(f"--batch values must be between 1 and {MAX_BATCH}, got {text!r}")
    return tuple(sorted(set(values)))


def optimization_profile(spec: InputSpec, batches: tuple[int, ...], opt_batch: int | None = None) -> Profile:
    """min = smallest batch, max = largest, opt = ``opt_batch`` or the (lower) median listed batch.

    TensorRT tunes its kernels for ``opt``; every batch in [min, max] runs correctly.

    Raises:
        UsageError: the model has a fixed batch other than the one asked for, or opt_batch is outside.
    """
    if not batches:
        raise UsageError("at least one batch size is needed")
    batches = tuple(sorted(set(batches)))
    if spec.batch is not None and batches != (spec.batch,):
        raise UsageError(
            f"the model's input {spec.name!r} has a fixed batch of {spec.batch}; cannot build for batch sizes {list(batches)}",
            hint=f"export with a dynamic batch, or pass --batch {spec.batch}",
        )
    lo, hi = batches[0], batches[-1]
    opt = batches[(len(batches) - 1) // 2] if opt_batch is None else opt_batch
    if not lo <= opt <= hi:
        raise UsageError(f"--opt-batch {opt} is outside the batch range {lo}..{hi}")
    return Profile((lo, *spec.chw), (opt, *spec.chw), (hi, *spec.chw))


def workspace_bytes(target: Target, workspace_mib: int | None) -> int:
    """The builder's workspace limit: the user's, or the target's default, in bytes.

    Raises:
        UsageError: not positive, or more than the target's memory.
    """
    mib = target.workspace_mib if workspace_mib is None else workspace_mib
    if mib <= 0:
        raise UsageError(f"the workspace must be positive, got {mib} MiB")
    if target.memory_gib is not None and mib >= target.memory_gib * 1024:
        raise UsageError(
            f"a {mib} MiB workspace does not fit {target.name} ({target.memory_gib} GiB shared memory)",
            hint=f"the default for this target is {target.workspace_mib} MiB",
        )
    return mib * MIB


def flag_plan(version: TrtVersion, dla: bool) -> FlagPlan:
    """Network creation flag and builder flags for a Q/DQ network on TensorRT ``version``.

    8.x (JetPack 5, only as a trtexec command line): explicit quantization still needs the INT8
    flag. 10.x: strongly typed network, no precision flag. 11.x: no flag at all.

    Raises:
        UsageError: DLA on TensorRT 10.8-10.x or 11.0-11.4.0, which have no DLA support.
    """
    if dla and version.major == 10 and version.at_least(DLA_LAST_10X[0], DLA_LAST_10X[1] + 1):
        raise UsageError(
            f"TensorRT {version} has no DLA support (10.7 was the last 10.x release with DLA; JetPack 6 ships 10.3)",
            hint="build for the GPU (drop --dla-core), or use the TensorRT of JetPack 6 (10.3) / TensorRT 11.4.1+",
        )
    if version.major < 10:
        if dla:
            return FlagPlan(False, ("INT8", "FP16", "GPU_FALLBACK"), "implicit")
        return FlagPlan(False, ("INT8",), None)
    if version.major == 10:
        if dla:
            # DLA on 10.x takes INT8 only through implicit quantization; FP16 for what has no range.
            return FlagPlan(False, ("INT8", "FP16", "GPU_FALLBACK"), "implicit")
        return FlagPlan(True, (), None)
    if dla:
        if not version.at_least(*DLA_STRONGLY_TYPED_SINCE):
            raise UsageError(
                f"TensorRT {version} has no DLA support (none in 10.8-11.4.0, back in 11.4.1 on AGX Orin)",
                hint="build for the GPU (drop --dla-core), or use TensorRT 10.x / 11.4.1+",
            )
        return FlagPlan(False, ("GPU_FALLBACK",), "strongly-typed")
    # 11.x: always strongly typed; STRONGLY_TYPED is deprecated and ignored, precision flags are gone.
    return FlagPlan(False, (), None)


def require_buildable(version: TrtVersion) -> None:
    """Refuse to build with a TensorRT older than 10.0 (the bindings API used here starts there).

    Raises:
        MissingDependency: TensorRT 8.x/9.x installed.
    """
    if version.major < 10:
        raise MissingDependency(
            f"TensorRT {version} is too old: rescompile builds engines with TensorRT 10 or 11",
            hint="on JetPack 5 run the printed trtexec command instead",
        )


def check_device(target: Target, compute_capability: tuple[int, int] | None, version: TrtVersion | None) -> None:
    """Refuse to build here for a target whose engine this machine cannot produce.

    Engines are not portable across GPU models or TensorRT versions, so a plan must be built
    on a GPU of the target's compute capability with the TensorRT the target ships.

    Raises:
        UsageError: target ``cpu``, or a compute capability / TensorRT major that differs from the target's.
    """
    if not target.has_tensorrt:
        raise UsageError(f"target {target.name!r} has no TensorRT engine", hint="use --backend onnxruntime")
    if target.compute_capability is not None and compute_capability is not None:
        if tuple(compute_capability) != target.compute_capability:
            have = "sm_{}{}".format(*compute_capability)
            raise UsageError(
                f"this GPU is {have} but target {target.name} is {target.sm}: TensorRT engines are not portable across GPU models",
                hint="build on the target device, or pass --target gpu for this machine's GPU",
            )
    if target.tensorrt_major is not None and version is not None and version.major != target.tensorrt_major:
        raise UsageError(
            f"target {target.name} (JetPack {target.jetpack}) runs TensorRT {target.tensorrt_version}, "
            f"but this machine has TensorRT {version}: the engine would not load there",
            hint="pick the target profile of the JetPack installed (rescompile targets)",
        )


def check_dla(target: Target, dla_core: int | None, profile: Profile) -> None:
    """Refuse DLA requests the target cannot honour.

    Raises:
        UsageError: no DLA on the target, a core index out of range, or a dynamic batch.
    """
    if dla_core is None:
        return
    if target.dla_cores == 0:
        raise UsageError(f"target {target.name} has no DLA cores", hint="drop --dla-core")
    if not 0 <= dla_core < target.dla_cores:
        raise UsageError(f"--dla-core {dla_core} does not exist on {target.name} (DLA cores 0..{target.dla_cores - 1})")
    if not profile.static:
        raise UsageError("DLA needs a static shape, but several batch sizes were asked for", hint="pass one batch size, e.g. --batch 1")


def compute_settings(
    target: Target, spec: InputSpec, options: EngineOptions, version: TrtVersion, compute_capability: tuple[int, int] | None = None
) -> EngineSettings:
    """Every build setting for ``target`` on TensorRT ``version``; raises on any refusal rule.

    Args:
        target: the target profile.
        spec: the model's input (``input_spec``).
        options: the user's choices.
        version: the TensorRT version that builds (installed, or the target's for a trtexec line).
        compute_capability: this machine's GPU, when building here; None for a command line only.

    Raises:
        UsageError / MissingDependency: see ``check_device``, ``check_dla``, ``flag_plan``,
        ``workspace_bytes``, ``optimization_profile``.
    """
    check_device(target, compute_capability, version)
    if not 0 <= options.optimization_level <= 5:
        raise UsageError(f"the builder optimization level must be 0..5, got {options.optimization_level}")
    profile = optimization_profile(spec, options.batches, options.opt_batch)
    check_dla(target, options.dla_core, profile)
    plan = flag_plan(version, options.dla_core is not None)
    rest = rest_precision(options.rest_precision, plan.dla_mode)
    flags = plan.builder_flags
    if version.major < 10 and rest == "fp16" and "FP16" not in flags:
        flags = (*flags, "FP16")  # 8.x (trtexec line only) is weakly typed: the FP16 flag lets the rest run FP16
    parser_flags = ("ADJUST_FOR_DLA",) if plan.dla_mode == "strongly-typed" else ()
    notes: list[str] = []
    if types_rest_fp16(rest, plan.dla_mode, version):
        notes.append("the non-quantized layers are typed FP16 in the engine's ONNX (model.int8.onnx itself is unchanged)")
    if plan.dla_mode == "implicit":
        notes.append(
            "DLA on TensorRT 10 uses implicit INT8: Q/DQ are turned into per-tensor ranges, layers DLA cannot run fall back to the GPU"
        )
    if version.major > 11:
        notes.append(f"TensorRT {version} is newer than the versions rescompile was checked against (10.x, 11.x)")
    if options.optimization_level == 0:
        notes.append("optimization level 0 skips the timing cache")
    return EngineSettings(
        target=target.name,
        tensorrt_version=str(version),
        input_name=spec.name,
        profile=profile,
        workspace_bytes=workspace_bytes(target, options.workspace_mib),
        strongly_typed=plan.strongly_typed,
        builder_flags=flags,
        dla_core=options.dla_core,
        dla_mode=plan.dla_mode,
        optimization_level=options.optimization_level,
        notes=tuple(notes),
        rest_precision=rest,
        onnx_parser_flags=parser_flags,
    )


def check_rest_precision(choice: str) -> str:
    """``choice`` if it is a ``--rest-precision`` value (checked before any work), else UsageError."""
    if choice not in REST_PRECISIONS:
        raise UsageError(f"--rest-precision {choice!r}: expected one of {', '.join(REST_PRECISIONS)}")
    return choice


def types_rest_fp16(rest: str, dla_mode: str | None, version: TrtVersion) -> bool:
    """The engine's ONNX gets the FP16 typing pass (``rescompile.engine.mixed``): a strongly typed build
    (10.x GPU, 11.x) with ``--rest-precision fp16``. 10.x DLA and 8.x use the FP16 builder flag instead."""
    return rest == "fp16" and dla_mode != "implicit" and version.major >= 10


def rest_precision(choice: str | None, dla_mode: str | None) -> str:
    """The precision of what stays unquantized: ``choice``, or FP16 by default (as ModelOpt's ``high_precision_dtype``).

    DLA computes in INT8 or FP16 only: on 10.x the FP16 builder flag gives the rest FP16, on
    11.4.1+ the tensor types must say FP16 ("converting the model is what enables FP16 compute on
    DLA", TensorRT 11.4.1, Strongly Typed Networks for DLA). FP32 there would put the rest on the GPU.

    Raises:
        UsageError: an unknown choice, or fp32 for a DLA build.
    """
    rest = "fp16" if choice is None else choice
    if rest not in REST_PRECISIONS:
        raise UsageError(f"--rest-precision {choice!r}: expected one of {', '.join(REST_PRECISIONS)}")
    if dla_mode is not None and rest != "fp16":
        raise UsageError(
            "DLA runs only INT8 and FP16: --rest-precision fp32 would send the non-quantized layers to the GPU",
            hint="drop --rest-precision fp32",
        )
    return rest


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def timing_cache_key(version: TrtVersion | str, compute_capability: tuple[int, int], device_name: str, l4t: str | None = None) -> str:
    """A file-name-safe key for a timing cache: TensorRT version, compute capability, device, L4T (JetPack).

    A timing cache is only valid for the exact TensorRT version and device that wrote it.
    """
    parts = [f"trt{version}", "sm{}{}".format(*compute_capability), _slug(device_name)]
    if l4t:
        parts.append(f"l4t{l4t}")
    return "timing-" + "-".join(parts)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(
    settings: EngineSettings, target: Target, onnx_path: str, plan_path: str, dynamic: bool = True, calib_cache: str | None = None
) -> list[str]:
    """The trtexec command that builds the same engine on the device (for a machine without TensorRT).

    Args:
        settings: computed for the TensorRT version that will run trtexec.
        target: the target profile (Jetson: trtexec lives in /usr/src/tensorrt/bin).
        onnx_path: the Q/DQ ONNX (for DLA on 10.x: the plain ONNX the ranges belong to).
        plan_path: where trtexec saves the engine.
        dynamic: the model's batch is dynamic (pass shapes); False for a fixed-batch export.
        calib_cache: a TensorRT calibration cache holding the ranges, for DLA on TensorRT 10.x.
    """
    exe = TRTEXEC_JETSON if target.kind == "jetson" else "trtexec"
    version = parse_version(settings.tensorrt_version)
    cmd = [exe, f"--onnx={onnx_path}", f"--saveEngine={plan_path}", f"--memPoolSize=workspace:{settings.workspace_mib}"]
    if dynamic:
        name = settings.input_name
        p = settings.profile
        cmd += [f"--minShapes={name}:{_shape(p.min)}", f"--optShapes={name}:{_shape(p.opt)}", f"--maxShapes={name}:{_shape(p.max)}"]
    if settings.strongly_typed:
        cmd.append("--stronglyTyped")
    for flag in settings.builder_flags:
        cmd.append({"INT8": "--int8", "FP16": "--fp16", "GPU_FALLBACK": "--allowGPUFallback"}[flag])
    if settings.dla_core is not None:
        cmd.append(f"--useDLACore={settings.dla_core}")
    if calib_cache is not None:
        cmd.append(f"--calib={calib_cache}")
    if settings.optimization_level != 3 and version.at_least(8, 6):
        cmd.append(f"--builderOptimizationLevel={settings.optimization_level}")
    # Layer information is exported from an execution context with input shapes set, so tensor
    # formats of a dynamic-shape engine are shown: trtexec prints it after setting up inference
    # (samples/trtexec/trtexec.cpp: printLayerInfo(..., contexts.front())), which --skipInference /
    # --buildOnly never reach. So run one short inference at the optimization shape instead.
    cmd += ["--profilingVerbosity=detailed", "--dumpLayerInfo", f"--exportLayerInfo={plan_path}.layers.json"]
    if dynamic:
        cmd.append(f"--shapes={settings.input_name}:{_shape(inspection_shape(settings))}")
    cmd += ["--warmUp=0", "--duration=0", "--iterations=1"]
    return cmd


def inspection_shape(settings: EngineSettings) -> tuple[int, ...]:
    """The input shape the engine inspector's execution context gets: the profile's ``opt``.

    Without an execution context whose input shapes are set, the inspector leaves tensor formats
    out of a dynamic-shape engine's layer information ("N/A due to dynamic shapes"), and no Add
    could be judged INT8 (IEngineInspector::setExecutionContext, NvInferRuntime.h).
    """
    return settings.profile.opt


def format_command(cmd: list[str]) -> str:
    """A shell-quoted one-line command."""
    return shlex.join(cmd)
