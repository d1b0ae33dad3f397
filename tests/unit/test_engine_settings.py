"""Pure engine build settings: versions, profiles, workspace, flags per TensorRT major, refusals, trtexec."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from rescompile.engine.settings import (
    MIB,
    EngineOptions,
    InputSpec,
    compute_settings,
    flag_plan,
    format_command,
    input_spec,
    inspection_shape,
    optimization_profile,
    parse_batches,
    parse_version,
    require_buildable,
    timing_cache_key,
    trtexec_command,
    workspace_bytes,
)
from rescompile.engine.targets import get_target
from rescompile.errors import MissingDependency, UsageError

SPEC = InputSpec("input", None, (3, 224, 224))


def _model(batch: int | str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 32, 32])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))


def test_versions_compare_as_numbers_not_strings() -> None:
    assert parse_version("10.10.0") > parse_version("10.9.0")
    assert parse_version("10.14.1.48.post1").parts == (10, 14, 1, 48)
    assert parse_version("11.4.0.106").at_least(11, 4) and not parse_version("11.4.0.106").at_least(11, 4, 1)
    assert parse_version("10.3").at_least(10, 3, 0)
    with pytest.raises(UsageError):
        parse_version("unknown")


def test_input_spec_reads_dynamic_and_fixed_batch(tiny_onnx: onnx.ModelProto) -> None:
    spec = input_spec(tiny_onnx)
    assert spec.batch is None and spec.chw == (1, 16, 16)
    assert input_spec(_model(4)).batch == 4
    assert input_spec(_model("N")).batch is None


def test_batches_are_parsed_sorted_and_checked() -> None:
    assert parse_batches("32,1, 8,8") == (1, 8, 32)
    for bad in ("", "a", "0", "1,-2", "5000"):
        with pytest.raises(UsageError):
            parse_batches(bad)


def test_profile_min_opt_max() -> None:
    p = optimization_profile(SPEC, (1, 8, 32))
    assert (p.min, p.opt, p.max) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)) and not p.static
    assert optimization_profile(SPEC, (1, 32)).opt[0] == 1  # lower median
    assert optimization_profile(SPEC, (1, 8, 32), opt_batch=32).opt[0] == 32
    assert optimization_profile(SPEC, (4,)).static
    with pytest.raises(UsageError, match="outside"):
        optimization_profile(SPEC, (1, 8), opt_batch=16)


def test_fixed_batch_model_only_builds_its_batch() -> None:
    fixed = InputSpec("x", 4, (3, 32, 32))
    assert optimization_profile(fixed, (4,)).static
    with pytest.raises(UsageError, match="fixed batch of 4"):
        optimization_profile(fixed, (1, 8))


def test_workspace_default_override_and_limit() -> None:
    nx8 = get_target("jetson-orin-nx-8gb")
    assert workspace_bytes(nx8, None) == 1024 * MIB
    assert workspace_bytes(nx8, 512) == 512 * MIB
    with pytest.raises(UsageError, match="does not fit"):
        workspace_bytes(nx8, 8 * 1024)
    with pytest.raises(UsageError):
        workspace_bytes(nx8, 0)
    assert workspace_bytes(get_target("rtx-ada"), 65536) == 65536 * MIB  # desktop: memory unknown, no cap


@pytest.mark.parametrize(
    ("version", "dla", "strongly_typed", "flags", "mode"),
    [
        ("10.3.0", False, True, (), None),
        ("10.16.1", False, True, (), None),
        ("10.3.0", True, False, ("INT8", "FP16", "GPU_FALLBACK"), "implicit"),
        ("11.0.0", False, False, (), None),
        ("11.4.0", False, False, (), None),
        ("11.4.1", True, False, ("GPU_FALLBACK",), "strongly-typed"),
        ("8.5.2", False, False, ("INT8",), None),
    ],
)
def test_flags_per_tensorrt_version(version: str, dla: bool, strongly_typed: bool, flags: tuple[str, ...], mode: str | None) -> None:
    plan = flag_plan(parse_version(version), dla)
    assert (plan.strongly_typed, plan.builder_flags, plan.dla_mode) == (strongly_typed, flags, mode)


def test_tensorrt_11_never_gets_a_precision_flag() -> None:
    for v in ("11.0", "11.1", "11.4.0.106", "11.4.1", "12.0"):
        for dla in (False, True) if parse_version(v).at_least(11, 4, 1) else (False,):
            assert not {"INT8", "FP16", "BF16"} & set(flag_plan(parse_version(v), dla).builder_flags)


@pytest.mark.parametrize("version", ["11.0.0", "11.3.0", "11.4.0.106"])
def test_dla_refused_on_tensorrt_11_before_11_4_1(version: str) -> None:
    with pytest.raises(UsageError, match="no DLA support"):
        flag_plan(parse_version(version), True)


def test_tensorrt_older_than_10_cannot_build_here() -> None:
    with pytest.raises(MissingDependency):
        require_buildable(parse_version("8.6.1"))
    require_buildable(parse_version("10.0.1"))


def test_dla_refusals() -> None:
    opts = EngineOptions(dla_core=0)
    with pytest.raises(UsageError, match="no DLA cores"):
        compute_settings(get_target("jetson-orin-nano"), SPEC, opts, parse_version("10.3"))
    with pytest.raises(UsageError, match="does not exist"):
        compute_settings(get_target("jetson-orin-nx-8gb"), SPEC, EngineOptions(dla_core=1), parse_version("10.3"))
    with pytest.raises(UsageError, match="static shape"):
        compute_settings(get_target("jetson-agx-orin"), SPEC, EngineOptions(dla_core=0, batches=(1, 8)), parse_version("10.3"))
    s = compute_settings(get_target("jetson-agx-orin"), SPEC, EngineOptions(dla_core=1), parse_version("10.3"))
    assert s.dla_core == 1 and s.dla_mode == "implicit" and s.notes


def test_device_and_version_must_match_the_target() -> None:
    nx = get_target("jetson-orin-nx")
    with pytest.raises(UsageError, match="not portable"):
        compute_settings(nx, SPEC, EngineOptions(), parse_version("10.3"), compute_capability=(8, 6))
    with pytest.raises(UsageError, match="would not load"):
        compute_settings(nx, SPEC, EngineOptions(), parse_version("11.4.1"), compute_capability=(8, 7))
    with pytest.raises(UsageError, match="no TensorRT"):
        compute_settings(get_target("cpu"), SPEC, EngineOptions(), parse_version("10.3"))
    local = compute_settings(get_target("gpu"), SPEC, EngineOptions(), parse_version("11.4"), compute_capability=(8, 6))
    assert local.target == "gpu" and local.tensorrt_version == "11.4"


def test_settings_are_frozen_and_serializable() -> None:
    s = compute_settings(get_target("jetson-orin-nx"), SPEC, EngineOptions(batches=(1, 8, 32)), parse_version("10.3.0"))
    d = s.to_dict()
    assert d["profile"] == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    assert d["workspace_bytes"] == 2048 * MIB and d["strongly_typed"] is True and d["profiling_verbosity"] == "DETAILED"
    with pytest.raises(AttributeError):
        s.workspace_bytes = 1  # type: ignore[misc]


def test_optimization_level_range() -> None:
    with pytest.raises(UsageError):
        compute_settings(get_target("gpu"), SPEC, EngineOptions(optimization_level=6), parse_version("10.3"))


def test_timing_cache_key_separates_versions_and_devices() -> None:
    a = timing_cache_key(parse_version("10.3.0.30"), (8, 7), "Orin", "36.4.0")
    assert a == "timing-trt10.3.0.30-sm87-orin-l4t36.4.0"
    assert a != timing_cache_key(parse_version("10.3.0.31"), (8, 7), "Orin", "36.4.0")
    assert timing_cache_key("11.4", (8, 9), "NVIDIA GeForce RTX 4090") == "timing-trt11.4-sm89-nvidia-geforce-rtx-4090"


def _cmd(target: str, version: str, **kw: object) -> list[str]:
    opts = EngineOptions(**kw)  # type: ignore[arg-type]
    s = compute_settings(get_target(target), SPEC, opts, parse_version(version))
    return trtexec_command(s, get_target(target), "m.onnx", "m.plan")


def test_trtexec_command_per_major() -> None:
    t10 = _cmd("jetson-orin-nx", "10.3", batches=(1, 8, 32))
    assert t10[0] == "/usr/src/tensorrt/bin/trtexec" and "--stronglyTyped" in t10
    assert "--minShapes=input:1x3x224x224" in t10 and "--maxShapes=input:32x3x224x224" in t10
    assert "--memPoolSize=workspace:2048" in t10
    # Layer info must come from an execution context with shapes set: never build-only.
    assert not {"--skipInference", "--buildOnly"} & set(t10) and "--shapes=input:8x3x224x224" in t10
    assert {"--iterations=1", "--warmUp=0", "--duration=0"} <= set(t10)
    t11 = _cmd("rtx-ada", "11.4")
    assert t11[0] == "trtexec" and not {"--int8", "--fp16", "--best", "--stronglyTyped"} & set(t11)
    t8 = _cmd("jetson-xavier-nx", "8.5")
    assert "--int8" in t8 and "--buildOnly" not in t8 and "--stronglyTyped" not in t8
    dla = trtexec_command(
        compute_settings(get_target("jetson-agx-orin"), SPEC, EngineOptions(dla_core=0), parse_version("10.3")),
        get_target("jetson-agx-orin"),
        "p.onnx",
        "p.plan",
        calib_cache="p.calib",
    )
    assert {"--int8", "--fp16", "--allowGPUFallback", "--useDLACore=0", "--calib=p.calib"} <= set(dla)
    assert "--stronglyTyped" not in dla
    assert format_command(["a b", "c"]) == "'a b' c"


def test_inspection_shape_is_the_profile_opt_shape() -> None:
    s = compute_settings(get_target("gpu"), SPEC, EngineOptions(batches=(1, 4, 16)), parse_version("10.3"))
    assert inspection_shape(s) == s.profile.opt == (4, 3, 224, 224)
