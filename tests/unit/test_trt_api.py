"""Static check of rescompile's TensorRT layer against the API names of TensorRT 10.x and 11.x.

``rescompile/engine/api_names.txt`` lists the names the real Python bindings of TensorRT
10.0.1, 10.3.0, 10.13.3.9, 10.16.1.11, 11.0.0.114 and 11.4.0.106 expose (generated from the
PyPI bindings wheels by ``rescompile.engine._api_names_gen``). These tests (1) pin the facts of
shared/notes/tensorrt.md to that table, (2) check every ``trt.*`` name and every TensorRT method
used by the engine builder and the runner against the versions whose code path reaches it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import rescompile.engine.device as engine_device
import rescompile.engine.tensorrt as engine_trt
import rescompile.runtime.tensorrt_runner as runner
from rescompile.engine.api_names import (
    CUDA_DRIVER_NAMES,
    CUDA_RUNTIME_NAMES,
    ApiTable,
    attribute_uses,
    check_source,
    discarded_results,
    load_table,
    member_uses,
)

SOURCES = {name: Path(mod.__file__).read_text() for name, mod in (("tensorrt.py", engine_trt), ("runner", runner))}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def table() -> ApiTable:
    return load_table()


def _in(table: ApiTable, name: str) -> set[int]:
    """The majors (10, 11) in which every checked version has ``name`` (0 marks a partial major)."""
    out = set()
    for major in (10, 11):
        have = [table.has(name, v) for v in table.versions_of(major)]
        if all(have):
            out.add(major)
        elif any(have):
            out.add(0)
    return out


def test_table_covers_both_majors(table: ApiTable) -> None:
    assert len(table.versions_of(10)) >= 2 and len(table.versions_of(11)) >= 2
    assert len(table.present) > 500


@pytest.mark.parametrize(
    "name",
    [
        "BuilderFlag.INT8",
        "BuilderFlag.FP16",
        "BuilderFlag.BF16",
        "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
        "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
        "IInt8Calibrator",
        "IInt8EntropyCalibrator2",
        "IInt8MinMaxCalibrator",
        "CalibrationAlgoType",
        "IBuilderConfig.int8_calibrator",
        "ITensor.set_dynamic_range",
        "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
        "OnnxParser.supports_model",
        "ICudaEngine.device_memory_size",
        "Builder.platform_has_fast_int8",
    ],
)
def test_removed_in_11(table: ApiTable, name: str) -> None:
    assert _in(table, name) == {10}


@pytest.mark.parametrize(
    "name",
    [
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",  # deprecated and ignored in 11, still defined
        "BuilderFlag.GPU_FALLBACK",
        "BuilderFlag.VERSION_COMPATIBLE",
        "BuilderFlag.EXCLUDE_LEAN_RUNTIME",
        "BuilderFlag.REFIT",
        "BuilderFlag.STRIP_PLAN",
        "BuilderFlag.TF32",
        "IExecutionContext.execute_async_v3",
        "IBuilderConfig.set_memory_pool_limit",
        "MemoryPoolType.WORKSPACE",
        "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache",
        "IBuilderConfig.get_timing_cache",
        "IBuilderConfig.builder_optimization_level",
        "IBuilderConfig.hardware_compatibility_level",
        "HardwareCompatibilityLevel.AMPERE_PLUS",
        "IBuilderConfig.profiling_verbosity",
        "ProfilingVerbosity.DETAILED",
        "ICudaEngine.create_engine_inspector",
        "EngineInspector.get_engine_information",
        "LayerInformationFormat.JSON",
        "IBuilderConfig.default_device_type",
        "IBuilderConfig.DLA_core",
        "IBuilderConfig.can_run_on_DLA",
        "DeviceType.DLA",
        "Runtime.engine_host_code_allowed",
        "ICudaEngine.get_tensor_profile_shape",
        "TensorIOMode.INPUT",
        "nptype",
        "__version__",
    ],
)
def test_present_in_10_and_11(table: ApiTable, name: str) -> None:
    assert _in(table, name) == {10, 11}


def test_v2_replacements_exist_from_10_1_on(table: ApiTable) -> None:
    # Not in 10.0.1 (found by the table, not stated in the notes), in every later 10.x and in 11.x.
    for name in ("OnnxParser.supports_model_v2", "ICudaEngine.device_memory_size_v2"):
        assert not table.has(name, "10.0.1") and all(table.has(name, v) for v in table.versions if v != "10.0.1")


def test_same_compute_capability_level_is_newer_than_jetpack_6(table: ApiTable) -> None:
    # The notes list it with the 8.6 additions; the bindings have it from 10.13 on (not in 10.0.1 / 10.3.0).
    name = "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY"
    assert not table.has(name, "10.3.0") and table.has(name, "10.13.3.9") and _in(table, name) == {0, 11}


def test_execute_async_v2_is_gone(table: ApiTable) -> None:
    assert _in(table, "IExecutionContext.execute_async_v2") == set()


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_trt_name_exists_where_its_code_path_runs(table: ApiTable, source: str) -> None:
    assert check_source(SOURCES[source], table) == []


def test_the_trt_names_of_the_shared_device_helpers_exist_in_both_majors(table: ApiTable) -> None:
    src = Path(engine_device.__file__).read_text()  # type: ignore[arg-type]  # load_tensorrt, make_logger: builder and runner
    assert {u.name for u in attribute_uses(src, "trt")} == {"Logger", "Logger.VERBOSE", "Logger.WARNING"}
    assert check_source(src, table) == []


def test_the_builder_uses_version_specific_names_only_on_10x() -> None:
    uses = {u.name: u.majors for u in attribute_uses(SOURCES["tensorrt.py"], "trt")}
    assert uses["BuilderFlag.INT8"] == {10} and uses["NetworkDefinitionCreationFlag.STRONGLY_TYPED"] == {10}
    assert uses["MemoryPoolType.WORKSPACE"] == {10, 11} and uses["LayerInformationFormat.JSON"] == {10, 11}


BAD_SNIPPETS = {
    "unguarded INT8 flag": "def f(trt, config):\n    config.set_flag(trt.BuilderFlag.INT8)\n",
    "INT8 in the 11 branch": "def f(trt, v, c):\n    if v.major >= 11:\n        c.set_flag(trt.BuilderFlag.INT8)\n",
    "calibrator in else of ==10": "def f(trt, v):\n    if v.major == 10:\n        pass\n    else:\n        trt.IInt8Calibrator\n",
    "unguarded _trt10 call": "def _a_trt10(trt):\n    pass\n\ndef g(trt):\n    _a_trt10(trt)\n",
    "name in no version": "def f(trt):\n    trt.IExecutionContext.execute_async_v2\n",
    "supports_model_v2 on 10.0": "def _f_trt10(trt):\n    trt.OnnxParser.supports_model_v2\n",
}
GOOD_SNIPPETS = {
    "guarded ==10": "def f(trt, v, c):\n    if v.major == 10:\n        c.set_flag(trt.BuilderFlag.INT8)\n",
    "guarded <11 and more": "def f(trt, v, s, c):\n    if v.major < 11 and s.dla:\n        c.set_flag(trt.BuilderFlag.FP16)\n",
    "else of >=11": "def f(trt, v):\n    if v.major >= 11:\n        pass\n    else:\n        trt.IInt8Calibrator\n",
    "suffix function": "def _cal_trt10(trt):\n    return trt.IInt8EntropyCalibrator2\n",
    "guarded call": "def _a_trt10(trt):\n    pass\n\ndef g(trt, v):\n    if v.major == 10:\n        _a_trt10(trt)\n",
    "conditional expression": "def f(trt, v):\n    return trt.BuilderFlag.INT8 if v.major == 10 else 0\n",
}


@pytest.mark.parametrize("key", sorted(BAD_SNIPPETS))
def test_checker_flags_names_used_outside_their_versions(table: ApiTable, key: str) -> None:
    assert check_source(BAD_SNIPPETS[key], table), key


@pytest.mark.parametrize("key", sorted(GOOD_SNIPPETS))
def test_checker_accepts_version_guarded_use(table: ApiTable, key: str) -> None:
    assert check_source(GOOD_SNIPPETS[key], table) == [], key


# Methods and attributes called on TensorRT objects, and the class each belongs to.
TRT_MEMBERS = {
    "create_network": "Builder",
    "create_builder_config": "Builder",
    "create_optimization_profile": "Builder",
    "build_serialized_network": "Builder",
    "parse": "OnnxParser",
    "num_errors": "OnnxParser",
    "get_error": "OnnxParser",
    "code": "ParserError",
    "desc": "ParserError",
    "node_name": "ParserError",
    "node_operator": "ParserError",
    "set_memory_pool_limit": "IBuilderConfig",
    "profiling_verbosity": "IBuilderConfig",
    "builder_optimization_level": "IBuilderConfig",
    "add_optimization_profile": "IBuilderConfig",
    "set_flag": "IBuilderConfig",
    "default_device_type": "IBuilderConfig",
    "DLA_core": "IBuilderConfig",
    "create_timing_cache": "IBuilderConfig",
    "set_timing_cache": "IBuilderConfig",
    "get_timing_cache": "IBuilderConfig",
    "serialize": "ITimingCache",
    "set_shape": "IOptimizationProfile",
    "get_input": "INetworkDefinition",
    "num_inputs": "INetworkDefinition",
    "num_layers": "INetworkDefinition",
    "get_layer": "INetworkDefinition",
    "get_output": "ILayer",
    "num_outputs": "ILayer",
    "set_dynamic_range": "ITensor",
    "shape": "ITensor",
    "name": "ITensor",
    "deserialize_cuda_engine": "Runtime",
    "create_engine_inspector": "ICudaEngine",
    "get_engine_information": "EngineInspector",
    "create_execution_context": "ICudaEngine",
    "num_io_tensors": "ICudaEngine",
    "get_tensor_name": "ICudaEngine",
    "get_tensor_mode": "ICudaEngine",
    "get_tensor_dtype": "ICudaEngine",
    "get_tensor_profile_shape": "ICudaEngine",
    "get_tensor_shape": "IExecutionContext",
    "set_input_shape": "IExecutionContext",
    "set_tensor_address": "IExecutionContext",
    "execute_async_v3": "IExecutionContext",
    "execution_context": "EngineInspector",
}
# Attributes of our own objects, numpy, pathlib, json, onnx, time: not TensorRT.
NOT_TRT = {
    "SerializeToString",
    "dla",
    "layer_precision",
    "add",
    "adds",
    "append",
    "build_seconds",
    "builder_flags",
    "compute_capability",
    "detailed",
    "device",
    "dla_core",
    "dla_mode",
    "dumps",
    "fusion",
    "get",
    "input_name",
    "is_file",
    "join",
    "l4t",
    "load_from_string",
    "loads",
    "major",
    "max",
    "min",
    "model",
    "ok",
    "opt",
    "optimization_level",
    "perf_counter",
    "profile",
    "ranges",
    "read_bytes",
    "settings",
    "strongly_typed",
    "tensorrt_version",
    "to_dict",
    "workspace_bytes",
    "_in",
    "_logger",
    "_out",
    "_run",
    "_runtime",
    "_stream",
    "_trt",
    "ascontiguousarray",
    "close",
    "concatenate",
    "context",
    "ctypes",
    "data",
    "decode",
    "dtype",
    "dynamic",
    "empty",
    "engine",
    "ensure",
    "free",
    "input",
    "input_dtype",
    "max_batch",
    "min_batch",
    "nbytes",
    "ndarray",
    "output",
    "output_dtype",
    "ptr",
    "zeros",
    "_h_in",
    "_h_out",
    "c_byte",
    "copy",
    "copyto",
    "from_address",
    "frombuffer",
    "itemsize",
    "prod",
    "reshape",
    "view",
    "graph",
    "node",
    "__name__",
    # the runner's CUDA-library protocol (rescompile.runtime.cuda_libs, checked below per library)
    "lib",
    "cuda",
    "buf",
    "alloc_device",
    "alloc_host",
    "device_ptr",
    "host_array",
    "h2d",
    "d2h",
    "launch",
    "sync",
    "stream_handle",
    "capture",
    "free_graph",
    "free_device",
    "free_host",
    "has_graphs",
    "use_graphs",
    "graph_info",
    "_graph",
    "_graph_key",
    "_enqueue",
    "_capture",
    "drop_graph",
    # issue 20: the layer-info JSON error, the rest-precision and DLA settings, the runner's shape memo
    "JSONDecodeError",
    "lineno",
    "msg",
    "onnx_parser_flags",
    "rest_precision",
    "_open",
    "_shape",
    "ModelProto",
    "node_order",
    "rest_typing",
    "with_name",
}


def test_member_table_is_right_for_every_version(table: ApiTable) -> None:
    for attr, cls in TRT_MEMBERS.items():
        majors = {10} if attr == "set_dynamic_range" else {10, 11}
        assert _in(table, f"{cls}.{attr}") == majors, f"{cls}.{attr}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_method_called_on_a_tensorrt_object_is_known(table: ApiTable, source: str) -> None:
    problems = []
    for use in member_uses(SOURCES[source], ("trt", "cudart")):
        if use.name in NOT_TRT:
            continue
        if use.name not in TRT_MEMBERS:
            problems.append(f"line {use.line}: .{use.name} is neither a known TensorRT member nor listed in NOT_TRT")
            continue
        full = f"{TRT_MEMBERS[use.name]}.{use.name}"
        for major in use.majors:
            missing = [v for v in table.versions_of(major) if not table.has(full, v)]
            if missing:
                problems.append(f"line {use.line}: {full} reached on {major}.x, missing in {missing}")
    assert problems == []


def test_cuda_runtime_names_exist_in_the_installed_cuda_bindings() -> None:
    cudart = pytest.importorskip("cuda.bindings.runtime")
    device_src = Path(engine_trt.__file__).with_name("device.py").read_text()  # type: ignore[arg-type]
    uses = attribute_uses(_libs_src(), "cudart", depth=3) + attribute_uses(device_src, "cudart", depth=3)
    assert {u.name.split(".")[0] for u in uses} >= {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamCreate"}
    for use in uses:
        obj = cudart
        for part in use.name.split("."):
            obj = getattr(obj, part)  # AttributeError names the missing part


def _libs_src() -> str:
    return Path(runner.__file__).with_name("cuda_libs.py").read_text()  # type: ignore[arg-type]


def _device_src() -> str:
    return Path(engine_trt.__file__).with_name("device.py").read_text()  # type: ignore[arg-type]


def test_every_cuda_name_used_is_in_the_sourced_table() -> None:
    uses = attribute_uses(_libs_src(), "cudart", depth=1) + attribute_uses(_device_src(), "cudart", depth=1)
    used = {u.name for u in uses}
    assert {"cudaMallocHost", "cudaFreeHost", "cudaSetDevice"} <= used  # pinned host copies, device selection
    assert {"cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch"} <= used
    assert attribute_uses(SOURCES["runner"], "cudart") == []  # the runner goes through cuda_libs only
    assert used <= CUDA_RUNTIME_NAMES
    assert {u.name for u in attribute_uses(_device_src(), "driver", depth=1)} <= CUDA_DRIVER_NAMES


def test_cuda_name_table_exists_in_the_installed_cuda_bindings() -> None:
    runtime = pytest.importorskip("cuda.bindings.runtime")
    driver = pytest.importorskip("cuda.bindings.driver")
    assert [n for n in sorted(CUDA_RUNTIME_NAMES) if not hasattr(runtime, n)] == []
    assert [n for n in sorted(CUDA_DRIVER_NAMES) if not hasattr(driver, n)] == []


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_tensorrt_calls_that_fail_by_returning_false_are_checked(source: str) -> None:
    assert discarded_results(SOURCES[source]) == []


def test_discarded_result_check_finds_an_unchecked_call() -> None:
    src = "def f(ctx, n, s):\n    ctx.set_input_shape(n, s)\n    if not ctx.set_tensor_address(n, 0):\n        raise E\n"
    assert [u.name for u in discarded_results(src)] == ["set_input_shape"]


def test_device_is_selected_before_the_builder_and_the_inspector_gets_a_context() -> None:
    import ast

    tree = ast.parse(SOURCES["tensorrt.py"])
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "build_engine")
    calls = [(n.lineno, ast.unparse(n.func)) for n in ast.walk(fn) if isinstance(n, ast.Call)]
    select = min(line for line, f in calls if f == "select_device")
    assert select < min(line for line, f in calls if f == "trt.Builder")
    info = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "engine_layer_info")
    text = ast.unparse(info)
    assert "inspector.execution_context = context" in text and "set_input_shape" in text
    assert text.index("execution_context = context") < text.index("get_engine_information")


# Names added for issue 20, each used on objects whose class the member table above maps to a
# namesake (``set_flag`` is IBuilderConfig's there, ``DLA_core`` IBuilderConfig's): the classes the
# new calls really go to, checked here.
ISSUE20_NAMES = {
    "Runtime.DLA_core": {10, 11},  # runtime.DLA_core = N before deserialize_cuda_engine (D2)
    "OnnxParser.set_flag": {10, 11},  # parser.set_flag(ADJUST_FOR_DLA), 11.4.1 DLA (D9)
    "OnnxParserFlag.ADJUST_FOR_DLA": {0, 11},  # from 10.16 on; called only on 11.x
}


@pytest.mark.parametrize("name", sorted(ISSUE20_NAMES))
def test_the_names_issue_20_added_exist_where_they_are_reached(table: ApiTable, name: str) -> None:
    assert _in(table, name) == ISSUE20_NAMES[name]
    uses = {u.name: u.majors for u in attribute_uses(SOURCES["tensorrt.py"], "trt")}
    assert uses["OnnxParserFlag.ADJUST_FOR_DLA"] == {11}


def test_the_new_cuda_names_of_issue_20_exist_in_the_installed_libraries() -> None:
    """cudaDeviceProp.multiProcessorCount (SM count), ThreadLocal capture and cudaGetLastError, torch's thread_local capture."""
    import inspect

    import torch

    runtime = pytest.importorskip("cuda.bindings.runtime")
    assert hasattr(runtime.cudaDeviceProp(), "multiProcessorCount")
    assert hasattr(runtime.cudaStreamCaptureMode, "cudaStreamCaptureModeThreadLocal") and hasattr(runtime, "cudaGetLastError")
    assert "capture_error_mode" in inspect.signature(torch.cuda.graph.__init__).parameters
    assert "multi_processor_count" in dir(torch._C._CudaDeviceProperties)
    src = Path(engine_trt.__file__).with_name("device.py").read_text()  # type: ignore[arg-type]
    assert "prop.multiProcessorCount" in src and "get_device_properties(index).multi_processor_count" in src
