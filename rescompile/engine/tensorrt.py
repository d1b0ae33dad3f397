"""The only module that imports TensorRT: parse the Q/DQ ONNX, build and write the plan, read its layers.

Every decision is made beforehand by ``rescompile.engine.settings`` (pure, unit-tested without
a GPU); this module applies it with the TensorRT 10.x / 11.x Python API. Names that exist in
only one major version live in functions suffixed ``_trt10`` and are called under a
``version.major == 10`` check; ``tests/unit/test_trt_api.py`` checks every ``trt.*`` name used
here against the names the real bindings of 10.0-10.16 and 11.0-11.4 expose.

Outputs (``out_dir``): ``model.plan`` (the plain serialized engine: trtexec and DeepStream load
it), ``model.plan.json`` (sidecar: TensorRT version, GPU, settings, ONNX sha256, fusion report)
and ``model.plan.layers.json`` (the engine inspector's detailed layer information).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from rescompile.buildfolder import PLAN
from rescompile.engine.device import load_tensorrt, make_logger, require_gpu, select_device
from rescompile.engine.dla import DlaReport, dla_report
from rescompile.engine.implicit import strip_qdq
from rescompile.engine.layerinfo import FusionReport, check_residual_fusion, layer_precisions
from rescompile.engine.mixed import RestTyping, type_rest_fp16
from rescompile.engine.settings import (
    EngineOptions,
    EngineSettings,
    TrtVersion,
    compute_settings,
    input_spec,
    inspection_shape,
    parse_version,
    require_buildable,
    timing_cache_key,
    types_rest_fp16,
)
from rescompile.engine.sidecar import DeviceInfo, make_sidecar, sidecar_path
from rescompile.engine.targets import Target
from rescompile.errors import RescompileError
from rescompile.graph.topology import find_residual_blocks
from rescompile.io import sha256_bytes, write_bytes_atomic, write_json, write_text_atomic


class EngineBuildError(RescompileError):
    """TensorRT could not parse the ONNX or build the engine (exit code 2): the log says why."""


def tensorrt_version(trt: Any) -> TrtVersion:
    return parse_version(str(trt.__version__))


@dataclass(frozen=True)
class EngineBuild:
    """What ``build_engine`` wrote, and what it found in the engine."""

    plan: Path
    sidecar: Path
    layer_info: Path
    settings: EngineSettings
    device: DeviceInfo
    tensorrt_version: str
    fusion: FusionReport
    timing_cache: Path | None
    build_seconds: float
    dla: DlaReport | None = None  # --dla-core builds: layers on DLA / GPU
    layer_precision: dict[str, Any] | None = None  # per layer: the precision it writes

    def section(self, target: str) -> dict[str, Any]:
        """The ``engine`` section of report.json and deploy.json for an engine built for ``target``."""
        return {
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.device.to_dict(),
            "target": target,
            "settings": self.settings.to_dict(),
            "residual_fusion": self.fusion.to_dict(),
            "dla": self.dla.to_dict() if self.dla is not None else None,
            "layer_precision": self.layer_precision,
            "build_seconds": self.build_seconds,
        }


class LayerInfoError(EngineBuildError):
    """The engine was built and written, but its layer information could not be read."""


def _creation_flags_trt10(trt: Any) -> int:
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _implicit_int8_trt10(trt: Any, network: Any, config: Any, ranges: dict[str, float]) -> int:
    """DLA on 10.x: INT8 + FP16 flags and a dynamic range on every tensor that had a Q/DQ."""
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
    done = 0
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    for t in tensors:
        amax = ranges.get(t.name)
        if amax is not None:
            t.set_dynamic_range(-amax, amax)
            done += 1
    return done


def _adjust_for_dla_trt11(trt: Any, parser: Any) -> None:
    """11.4.1+ DLA: let the parser reshape layers for DLA (TensorRT 11.4.1, Strongly Typed Networks for DLA)."""
    parser.set_flag(trt.OnnxParserFlag.ADJUST_FOR_DLA)


def _parse(trt: Any, network: Any, logger: Any, data: bytes, path: str, settings: EngineSettings, version: TrtVersion) -> Any:
    parser = trt.OnnxParser(network, logger)
    if version.major >= 11 and "ADJUST_FOR_DLA" in settings.onnx_parser_flags:
        _adjust_for_dla_trt11(trt, parser)
    if not parser.parse(data, path):
        errors = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append(f"{e.node_name() or '?'} ({e.node_operator() or '?'}): {e.desc()} [code {e.code()}]")
        raise EngineBuildError(f"TensorRT could not parse {path}:\n  " + "\n  ".join(errors or ["(no error reported)"]))
    return parser


def _configure(trt: Any, builder: Any, network: Any, config: Any, settings: EngineSettings) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.builder_optimization_level = settings.optimization_level
    inp = network.get_input(0)
    if inp.name != settings.input_name:
        raise EngineBuildError(f"TensorRT names the input {inp.name!r}, the ONNX {settings.input_name!r}")
    if any(d < 0 for d in inp.shape):
        p = settings.profile
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    if "GPU_FALLBACK" in settings.builder_flags:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core


def _timing_cache(config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    if cache is None:
        raise EngineBuildError(f"TensorRT could not read the timing cache {path}", hint="delete it; it is rebuilt")
    # ignore_mismatch=False: a cache from another device or TensorRT is refused (set_timing_cache -> False).
    if not config.set_timing_cache(cache, False):
        raise EngineBuildError(
            f"TensorRT refused the timing cache {path} (written by another GPU or TensorRT version)",
            hint="delete it, or pass another --timing-cache folder",
        )
    return cache


def runtime_for(trt: Any, logger: Any, dla_core: int | None) -> Any:
    """A ``trt.Runtime`` whose DLA core is the plan's: set before every deserialization (IRuntime::setDLACore,
    "the DLA core that the deserialized engine must execute on"; trtexec's ``--useDLACore`` with ``--loadEngine``)."""
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    return runtime


def engine_layer_info(trt: Any, plan: bytes, logger: Any, input_name: str, shape: tuple[int, ...], dla_core: int | None = None) -> str:
    """The engine inspector's layer information as JSON text (detailed if the plan was built so).

    An execution context with the input shape set is attached to the inspector: without one, a
    dynamic-shape engine's layer information has no tensor formats (IEngineInspector::
    setExecutionContext, NvInferRuntime.h; Polygraphy's inspect does the same).
    """
    runtime = runtime_for(trt, logger, dla_core)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("TensorRT could not deserialize the plan it just built")
    context = engine.create_execution_context()
    if context is None:
        raise EngineBuildError("TensorRT could not create an execution context for the plan it just built")
    if not context.set_input_shape(input_name, shape):
        raise EngineBuildError(f"TensorRT refused input shape {list(shape)} for {input_name!r} on its own plan")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    del inspector, context  # before the engine they belong to
    return info


def build_engine(
    onnx_path: Path,
    target: Target,
    options: EngineOptions,
    out_dir: Path,
    *,
    timing_cache_dir: Path | None = None,
    device_index: int = 0,
    verbose: bool = False,
) -> EngineBuild:
    """Build ``onnx_path`` (a Q/DQ INT8 ONNX) into ``out_dir/model.plan`` for ``target`` on this GPU.

    Args:
        onnx_path: the Q/DQ ONNX (``model.int8.onnx``).
        target: the target profile; this machine must match its GPU and TensorRT major.
        options: workspace, DLA core, batch sizes, optimization level.
        out_dir: where the plan, sidecar and layer information are written.
        timing_cache_dir: keep TensorRT's timing cache here, keyed by TensorRT version and device.
        device_index: the CUDA device to build on.
        verbose: TensorRT's verbose log.

    Raises:
        MissingDependency: no TensorRT, TensorRT < 10, or no GPU (exit 3).
        UsageError: a refusal rule of ``rescompile.engine.settings`` (exit 2).
        EngineBuildError: TensorRT failed to parse or build (exit 2).
    """
    trt = load_tensorrt()
    version = tensorrt_version(trt)
    require_buildable(version)
    device = require_gpu(device_index)
    select_device(device_index)  # TensorRT builds on the current device: make it the one the sidecar names
    onnx_bytes = Path(onnx_path).read_bytes()
    model = onnx.load_from_string(onnx_bytes)
    settings = compute_settings(target, input_spec(model), options, version, device.compute_capability)
    prepared = prepare_onnx(model, onnx_bytes, settings, version)
    model, data, ranges = prepared.model, prepared.data, prepared.ranges
    blocks = find_residual_blocks(model)

    t0 = time.perf_counter()
    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = _creation_flags_trt10(trt) if version.major == 10 and settings.strongly_typed else 0
    network = builder.create_network(flags)
    parser = _parse(trt, network, logger, data, str(onnx_path), settings, version)
    config = builder.create_builder_config()
    _configure(trt, builder, network, config, settings)
    if version.major == 10 and settings.dla_mode == "implicit":
        _implicit_int8_trt10(trt, network, config, ranges)
    cache_path = None
    if timing_cache_dir is not None and settings.optimization_level > 0:
        key = timing_cache_key(version, device.compute_capability, device.name, device.l4t)
        cache_path = Path(timing_cache_dir) / f"{key}.bin"
    _timing_cache(config, cache_path)
    plan_mem = builder.build_serialized_network(network, config)
    if plan_mem is None:
        raise EngineBuildError("TensorRT failed to build the engine (see its log above)", hint="try a larger --workspace-mib, or --verbose")
    plan = bytes(plan_mem)
    build_seconds = round(time.perf_counter() - t0, 3)
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    del parser

    out_dir = Path(out_dir)
    plan_path = out_dir / PLAN
    write_bytes_atomic(plan_path, plan)  # first: a layer-information failure below must not lose the built plan
    return _inspect_and_record(trt, logger, plan, plan_path, settings, device, prepared, blocks, onnx_bytes, cache_path, build_seconds)


@dataclass(frozen=True)
class PreparedOnnx:
    """The ONNX TensorRT parses: the Q/DQ model, its implicit (DLA 10.x) form, or its FP16-typed copy."""

    model: onnx.ModelProto  # its residual blocks are the ones judged
    data: bytes  # what TensorRT parses
    ranges: dict[str, float]
    rest_typing: RestTyping | None

    @property
    def node_order(self) -> list[str]:
        """The node names of the ONNX TensorRT parsed, in order (places Adds inside ForeignNode spans)."""
        parsed = self.rest_typing.model if self.rest_typing is not None else self.model
        return [n.name for n in parsed.graph.node]


def prepare_onnx(model: onnx.ModelProto, onnx_bytes: bytes, settings: EngineSettings, version: TrtVersion) -> PreparedOnnx:
    """What the engine is built from, by the settings (the same for ``build_engine`` and an adopted trtexec plan)."""
    if settings.dla_mode == "implicit":
        implicit = strip_qdq(model)
        return PreparedOnnx(implicit.model, implicit.model.SerializeToString(), implicit.ranges, None)
    if types_rest_fp16(settings.rest_precision, settings.dla_mode, version):
        typed = type_rest_fp16(model)  # the engine's own copy: model.int8.onnx stays as it is
        return PreparedOnnx(model, typed.model.SerializeToString(), {}, typed)
    return PreparedOnnx(model, onnx_bytes, {}, None)


def _inspect_and_record(
    trt: Any,
    logger: Any,
    plan: bytes,
    plan_path: Path,
    settings: EngineSettings,
    device: DeviceInfo,
    prepared: PreparedOnnx,
    blocks: list[Any],
    onnx_bytes: bytes,
    cache_path: Path | None,
    build_seconds: float,
    adopted: bool = False,
) -> EngineBuild:
    """Inspect the written plan (DLA core set), judge its residual Adds and DLA layers, write layer info and sidecar."""
    layers_path = plan_path.with_name(plan_path.name + ".layers.json")
    info = engine_layer_info(trt, plan, logger, settings.input_name, inspection_shape(settings), settings.dla_core)
    doc = parse_layer_info(info, plan_path)
    write_text_atomic(layers_path, json.dumps(doc, indent=2) + "\n")
    dla = settings.dla_core is not None
    fusion = check_residual_fusion(doc, blocks, node_order=prepared.node_order, dla=dla)
    dla_counts = dla_report(doc, dla_build=True) if dla else None
    precisions = layer_precisions(doc)
    sidecar = make_sidecar(
        tensorrt_version=str(trt.__version__),
        device=device,
        settings=settings.to_dict(),
        onnx_sha256=sha256_bytes(onnx_bytes),
        plan_sha256=sha256_bytes(plan),
        timing_cache=cache_path.name if cache_path else None,
        fusion=fusion.to_dict(),
    )
    sidecar["dla_ranges"] = len(prepared.ranges) if settings.dla_mode == "implicit" else None
    sidecar["dla"] = dla_counts.to_dict() if dla_counts else None
    sidecar["layer_precision"] = precisions
    sidecar["rest_typing"] = prepared.rest_typing.to_dict() if prepared.rest_typing else None
    if adopted:
        sidecar["adopted"] = "built elsewhere (the printed trtexec line); settings are that line's, the layers are this plan's"
    write_json(sidecar_path(plan_path), sidecar)
    return EngineBuild(
        plan_path,
        sidecar_path(plan_path),
        layers_path,
        settings,
        device,
        str(trt.__version__),
        fusion,
        cache_path,
        build_seconds,
        dla_counts,
        precisions,
    )


def adopt_plan(
    onnx_path: Path, plan_path: Path, target: Target, options: EngineOptions, *, device_index: int = 0, verbose: bool = False
) -> EngineBuild:
    """``rescompile engine --adopt model.plan``: give a plan built by the printed trtexec line a sidecar.

    The plan must load on this machine (same TensorRT and GPU that built it); its layers are read
    with the engine inspector (DLA core set), the residual-Add fusion and DLA checks run as after a
    build, and ``<plan>.json`` / ``<plan>.layers.json`` are written beside it, so ``validate`` and
    the runner accept it.

    Raises:
        MissingDependency: no TensorRT or no GPU (exit 3).
        UsageError: the plan is missing, or a refusal rule of the settings (exit 2).
        EngineBuildError: TensorRT cannot deserialize the plan here (exit 2).
    """
    from rescompile.errors import UsageError

    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise UsageError(f"--adopt {plan_path}: no such plan")
    trt = load_tensorrt()
    version = tensorrt_version(trt)
    require_buildable(version)
    device = require_gpu(device_index)
    select_device(device_index)
    onnx_bytes = Path(onnx_path).read_bytes()
    model = onnx.load_from_string(onnx_bytes)
    settings = compute_settings(target, input_spec(model), options, version, device.compute_capability)
    prepared = prepare_onnx(model, onnx_bytes, settings, version)
    blocks = find_residual_blocks(prepared.model)
    logger = make_logger(trt, verbose)
    return _inspect_and_record(
        trt, logger, plan_path.read_bytes(), plan_path, settings, device, prepared, blocks, onnx_bytes, None, 0.0, adopted=True
    )


def parse_layer_info(info: str, plan_path: Path) -> dict[str, Any]:
    """The inspector's JSON text as a dict; a JSONDecodeError becomes LayerInfoError naming the plan already written.

    TensorRT has emitted layer names that are not valid JSON before, so the plan is written first.
    """
    try:
        doc = json.loads(info, strict=False)
    except json.JSONDecodeError as exc:
        raise LayerInfoError(
            f"TensorRT's layer information for {plan_path} is not valid JSON ({exc.msg} at line {exc.lineno}); the plan itself was written",
            hint=f"run `rescompile engine --adopt {plan_path}` with a layer dump from trtexec --exportLayerInfo",
        ) from None
    if not isinstance(doc, dict):
        raise LayerInfoError(f"TensorRT's layer information for {plan_path} is not a JSON object; the plan itself was written")
    return doc


def preflight(target_name: str, device_index: int = 0) -> Target:
    """For ``--backend tensorrt``: check target, TensorRT and GPU before the pipeline does any work.

    Raises:
        UsageError: unknown target, target ``cpu``, or a GPU / TensorRT that does not match the target.
        MissingDependency: no TensorRT (or < 10), or no GPU (exit 3).
    """
    from rescompile.engine.settings import check_device
    from rescompile.engine.targets import get_target

    target = get_target(target_name)
    check_device(target, None, None)
    trt = load_tensorrt()
    version = tensorrt_version(trt)
    require_buildable(version)
    device = require_gpu(device_index)
    check_device(target, device.compute_capability, version)
    return target


def build_for_pipeline(onnx_path: Path, target: Target, batches: tuple[int, ...], out_dir: Path) -> EngineBuild:
    """The pipeline's engine stage: the plan for ``batches`` (deduplicated, sorted) with default options.

    The fusion report comes back as data (``EngineBuild.fusion``); the pipeline makes it a gate.
    """
    return build_engine(onnx_path, target, EngineOptions(batches=tuple(sorted(set(batches)))), out_dir)
