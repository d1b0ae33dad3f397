"""TensorRT on a real GPU: build the tiny Q/DQ ResNet, read its layers, run it, refuse foreign plans.

Runs only where ``import tensorrt`` works and a CUDA GPU is visible (``pytest -m gpu``);
skipped everywhere else. Nothing here is mocked.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

trt = pytest.importorskip("tensorrt")

from rescompile.engine.device import find_gpu  # noqa: E402

_FOUND, _WHY = find_gpu(0)
if _FOUND is None:
    pytest.skip(f"no CUDA GPU: {_WHY}", allow_module_level=True)

from rescompile.engine.device import make_logger  # noqa: E402
from rescompile.engine.settings import EngineOptions, parse_version  # noqa: E402
from rescompile.engine.sidecar import DeviceInfo, sidecar_path  # noqa: E402
from rescompile.engine.targets import Target, get_target  # noqa: E402
from rescompile.engine.tensorrt import EngineBuild, build_engine  # noqa: E402
from rescompile.errors import GateFailed, UsageError  # noqa: E402
from rescompile.graph.topology import find_residual_blocks  # noqa: E402
from rescompile.runtime.tensorrt_runner import TensorRTRunner  # noqa: E402

pytestmark = pytest.mark.gpu
VERSION = parse_version(trt.__version__)
DEVICE: DeviceInfo = _FOUND  # type: ignore[assignment]  # not None: the module is skipped otherwise


@pytest.fixture(scope="module")
def built(tiny_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> EngineBuild:
    out = tmp_path_factory.mktemp("engine")
    return build_engine(tiny_int8_path, get_target("gpu"), EngineOptions(batches=(1, 4, 16)), out, timing_cache_dir=out / "cache")


def test_plan_and_sidecar_are_written(built: EngineBuild, tiny_int8_path: Path) -> None:
    side = json.loads(built.sidecar.read_text())
    plan = built.plan.read_bytes()
    assert built.plan.name == "model.plan" and built.sidecar == sidecar_path(built.plan)
    assert side["tensorrt_version"] == trt.__version__
    assert side["gpu"]["name"] == DEVICE.name and tuple(side["gpu"]["compute_capability"]) == DEVICE.compute_capability
    assert side["onnx_sha256"] == hashlib.sha256(tiny_int8_path.read_bytes()).hexdigest()
    assert side["plan_sha256"] == hashlib.sha256(plan).hexdigest()
    assert side["settings"]["profile"]["max"] == [16, 1, 16, 16]


def test_plan_is_a_plain_serialized_engine(built: EngineBuild) -> None:
    engine = trt.Runtime(make_logger(trt)).deserialize_cuda_engine(built.plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2


def test_flags_follow_the_installed_major(built: EngineBuild) -> None:
    s = built.settings
    assert s.builder_flags == ()
    assert s.strongly_typed is (VERSION.major == 10)


def test_layer_information_is_detailed_and_every_residual_add_is_fused_int8(built: EngineBuild, tiny_int8_path: Path) -> None:
    info = json.loads(built.layer_info.read_text())
    assert isinstance(info["Layers"][0], dict) and "LayerType" in info["Layers"][0]
    blocks = find_residual_blocks(onnx.load(str(tiny_int8_path)))
    assert len(built.fusion.adds) == len(blocks) == 2
    assert built.fusion.detailed
    assert [a.status for a in built.fusion.adds] == ["fused-int8"] * 2, json.dumps(built.fusion.to_dict(), indent=1)


def test_runner_matches_onnxruntime_on_the_same_qdq_graph(built: EngineBuild, tiny_int8_path: Path, tiny_data: np.ndarray) -> None:
    sess = ort.InferenceSession(str(tiny_int8_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": tiny_data})[0]
    r = TensorRTRunner(built.plan)
    got = r.infer(tiny_data)  # 24 > max batch 16: runs in chunks
    assert got.shape == ref.shape
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.98 and (ref.argmax(1) == got.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(r.infer(tiny_data[:3]), got[:3], rtol=1e-2, atol=1e-2)
    r.close()


def test_runner_refuses_a_plan_from_another_tensorrt_or_gpu(built: EngineBuild, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(built.plan.read_bytes())
    side = json.loads(built.sidecar.read_text())
    for field, value in (("tensorrt_version", "9.9.9"), ("gpu", {**side["gpu"], "name": "Some Other GPU"})):
        sidecar_path(plan).write_text(json.dumps({**side, field: value}))
        with pytest.raises(UsageError, match="not portable|cannot run"):
            TensorRTRunner(plan)


def test_timing_cache_is_written_and_reused(built: EngineBuild, tiny_int8_path: Path, tmp_path: Path) -> None:
    assert built.timing_cache is not None and built.timing_cache.is_file()
    again = build_engine(
        tiny_int8_path, get_target("gpu"), EngineOptions(batches=(1, 4, 16)), tmp_path, timing_cache_dir=built.timing_cache.parent
    )
    assert again.timing_cache == built.timing_cache and again.plan.is_file()


def test_target_of_another_gpu_is_refused(tiny_int8_path: Path, tmp_path: Path) -> None:
    other = next(t for t in ("rtx-turing", "rtx-ampere") if get_target(t).compute_capability != DEVICE.compute_capability)
    with pytest.raises(UsageError, match="not portable"):
        build_engine(tiny_int8_path, get_target(other), EngineOptions(), tmp_path)


def test_dla_build_where_the_device_has_dla(tiny_int8_path: Path, tmp_path: Path, tiny_data: np.ndarray) -> None:
    """Issue 20 (D1, D2): layers really on DLA, counted, gated; the plan runs on the DLA core it was built for."""
    from rescompile.validate.gates import dla_gate

    cores = trt.Runtime(make_logger(trt)).num_DLA_cores
    if cores == 0:
        pytest.skip("this GPU has no DLA")
    if (VERSION.major == 10 and VERSION.at_least(10, 8)) or (VERSION.major >= 11 and not VERSION.at_least(11, 4, 1)):
        pytest.skip(f"TensorRT {VERSION} has no DLA")
    local = Target("local-dla", "this Jetson", "jetson", DEVICE.compute_capability, dla_cores=cores, memory_gib=None)
    core = cores - 1  # the last core: a plan that ignored the setting would land on core 0
    built = build_engine(tiny_int8_path, local, EngineOptions(dla_core=core, batches=(1,)), tmp_path)
    assert built.settings.dla_core == core and built.plan.is_file()
    side = json.loads(built.sidecar.read_text())
    assert (side["dla_ranges"] or 0) > 0 if VERSION.major == 10 else side["dla_ranges"] is None
    assert built.dla is not None and built.dla.dla_layers > 0, side["dla"]  # GPU fallback of everything fails here
    assert side["dla"]["dla_layers"] == built.dla.dla_layers and side["dla"]["gpu_layers"] == built.dla.gpu_layers
    gate = dla_gate(built.dla, built.fusion)
    assert gate.passed, (gate.message, built.fusion.to_dict())
    assert {a.status for a in built.fusion.adds} <= {"dla-io-int8"}, built.fusion.to_dict()
    r = TensorRTRunner(built.plan)
    assert r.dla_core == core and r._runtime.DLA_core == core  # set from the sidecar before deserializing
    assert r.infer(tiny_data[:1]).shape[0] == 1
    r.close()


def test_pipeline_builds_the_engine_with_backend_tensorrt(tiny_npz: Path, tmp_path: Path) -> None:
    from rescompile.config import BuildConfig
    from rescompile.pipeline import build

    cfg = BuildConfig.from_flat(
        model="resnet20",
        in_channels=1,
        input_size=16,
        num_classes=4,
        calib=str(tiny_npz),
        val=str(tiny_npz),
        out=tmp_path / "o",
        backend="tensorrt",
        target="gpu",
        latency_runs=3,
    )
    try:
        result = build(cfg)
    except GateFailed as exc:  # a failed fusion gate still publishes the build
        result = exc.result  # type: ignore[attr-defined]
    assert {"model.plan", "model.plan.json"} <= set(result.manifest["artifacts"])
    assert result.report["engine"]["tensorrt_version"] == trt.__version__
    assert any(g["name"] == "engine_residual_fusion" for g in result.report["gates"])


def test_inspector_context_gives_every_add_layer_a_readable_format(built: EngineBuild, tiny_int8_path: Path) -> None:
    """The dynamic-batch engine's layer info, read with an execution context, has formats; without one it would not."""
    from rescompile.engine.layerinfo import check_residual_fusion, parse_layers, precision

    layers, detailed = parse_layers(built.layer_info.read_text())
    assert detailed and all(precision(f) != "unknown" for la in layers if not la.reformat for f in la.input_formats)
    # The same plan inspected the way it was before issue 14 (no context): formats are missing and
    # the parser must say "unknown", never "fused-float".
    engine = trt.Runtime(make_logger(trt)).deserialize_cuda_engine(built.plan.read_bytes())
    bare = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    blocks = find_residual_blocks(onnx.load(str(tiny_int8_path)))
    statuses = {a.status for a in check_residual_fusion(bare, blocks).adds}
    assert "fused-float" not in statuses, bare[:2000]


def test_sidecar_names_the_device_that_built_the_plan(tiny_int8_path: Path, tmp_path: Path) -> None:
    from rescompile.engine.device import find_gpu

    for index in range(2):
        device, _ = find_gpu(index)
        if device is None:
            continue
        out = build_engine(tiny_int8_path, get_target("gpu"), EngineOptions(batches=(1,)), tmp_path / str(index), device_index=index)
        side = json.loads(out.sidecar.read_text())
        assert side["gpu"]["name"] == device.name and out.device == device


def test_doctor_finds_cuda_python_matching_the_driver() -> None:
    from rescompile.commands.doctor import collect

    rows = {item: (ok, detail) for item, ok, detail in collect()}
    ok, detail = rows["cuda-python vs driver"]
    assert ok, detail  # a GPU test machine must have a cuda-python its driver can run


def test_runner_reuses_pinned_buffers_across_batch_sizes(built: EngineBuild, tiny_data: np.ndarray) -> None:
    r = TensorRTRunner(built.plan)
    a = r.infer(tiny_data[:16])
    b = r.infer(tiny_data[:2])
    c = r.infer(tiny_data[:16])
    np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(a[:2], b, rtol=1e-2, atol=1e-2)
    assert r._h_in.buf is not None and r._h_out.buf is not None  # pinned host staging, not pageable numpy copies
    r.close()
    assert r._h_in.buf is None


@pytest.mark.parametrize("lib", ["cuda-python", "pycuda", "torch"])
def test_every_cuda_library_gives_the_same_logits(built: EngineBuild, tiny_data: np.ndarray, lib: str) -> None:
    from rescompile.runtime.cuda_libs import available_libs

    if not available_libs()[lib]:
        pytest.skip(f"{lib} is not available here")
    ref = TensorRTRunner(built.plan, cuda_lib="auto")
    want = ref.infer(tiny_data[:4])
    ref.close()
    r = TensorRTRunner(built.plan, cuda_lib=lib)
    assert r.cuda.name == lib
    np.testing.assert_allclose(r.infer(tiny_data[:4]), want, rtol=1e-3, atol=1e-3)
    r.close()


@pytest.mark.parametrize("lib", ["cuda-python", "pycuda", "torch"])
def test_latency_runs_replay_a_cuda_graph_with_the_same_results(built: EngineBuild, tiny_data: np.ndarray, lib: str) -> None:
    from rescompile.runtime.cuda_libs import available_libs
    from rescompile.validate.latency import measure_latency

    if not available_libs()[lib]:
        pytest.skip(f"{lib} is not available here")
    r = TensorRTRunner(built.plan, cuda_lib=lib)
    plain = r.infer(tiny_data[:4])
    r.enable_graph()
    r.infer(tiny_data[:4])  # plain enqueue, then capture
    assert r.graph_info is not None and r.graph_info["library"] == lib
    assert r.graph_info["used"] is (lib != "pycuda"), r.graph_info
    np.testing.assert_allclose(r.infer(tiny_data[:4]), plain, rtol=1e-3, atol=1e-3)  # a graph launch
    np.testing.assert_allclose(r.infer(tiny_data[:2]), plain[:2], rtol=1e-2, atol=1e-2)  # another shape: plain enqueue
    r.drop_graph()
    lat = measure_latency(r, tiny_data[:1], 4, warmup=2, runs=5)
    assert lat.cuda_graph is not None and lat.cuda_graph["used"] is (lib != "pycuda")
    assert r.graph_info is None
    r.close()


@pytest.mark.parametrize("lib", ["cuda-python", "torch"])
def test_a_graph_replays_correctly_across_alternating_shapes(built: EngineBuild, tiny_data: np.ndarray, lib: str) -> None:
    """Issue 20 (D11, D15): A -> B -> A with a captured graph; set_input_shape is skipped only when the shape is unchanged."""
    from rescompile.runtime.cuda_libs import available_libs

    if not available_libs()[lib]:
        pytest.skip(f"{lib} is not available here")
    r = TensorRTRunner(built.plan, cuda_lib=lib)
    a, b = tiny_data[:4], tiny_data[:16]
    want_a, want_b = r.infer(a), r.infer(b)
    r.enable_graph()
    for x, want in ((a, want_a), (a, want_a), (b, want_b), (a, want_a), (b, want_b), (a, want_a)):
        np.testing.assert_allclose(r.infer(x), want, rtol=1e-3, atol=1e-3)
    assert r.graph_info is not None and r.graph_info["used"], r.graph_info
    r.close()


def test_rest_precision_fp16_and_fp32_engines_report_each_layer(tiny_int8_path: Path, tmp_path: Path, tiny_data: np.ndarray) -> None:
    """Issue 20 item 3: both builds keep the residual Adds fused INT8; the per-layer precision is recorded."""
    before = hashlib.sha256(tiny_int8_path.read_bytes()).hexdigest()
    runs = {}
    for rest in ("fp16", "fp32"):
        b = build_engine(tiny_int8_path, get_target("gpu"), EngineOptions(batches=(1, 4), rest_precision=rest), tmp_path / rest)
        assert [a.status for a in b.fusion.adds] == ["fused-int8"] * 2, b.fusion.to_dict()
        side = json.loads(b.sidecar.read_text())
        assert side["settings"]["rest_precision"] == rest and side["layer_precision"]["layers"]
        assert (side["rest_typing"] is not None) is (rest == "fp16")
        r = TensorRTRunner(b.plan)
        runs[rest] = r.infer(tiny_data[:4])
        r.close()
    assert hashlib.sha256(tiny_int8_path.read_bytes()).hexdigest() == before  # model.int8.onnx untouched
    np.testing.assert_allclose(runs["fp16"], runs["fp32"], rtol=5e-2, atol=5e-2)


def test_adopt_gives_a_plan_without_sidecar_the_same_checks(built: EngineBuild, tiny_int8_path: Path, tmp_path: Path) -> None:
    """Issue 20 (D12): a plan with no sidecar (as trtexec writes it) is adopted and then runs."""
    from rescompile.engine.tensorrt import adopt_plan

    plan = tmp_path / "model.plan"
    plan.write_bytes(built.plan.read_bytes())
    with pytest.raises(UsageError, match="no sidecar"):
        TensorRTRunner(plan)
    adopted = adopt_plan(tiny_int8_path, plan, get_target("gpu"), EngineOptions(batches=(1, 4, 16)))
    side = json.loads(sidecar_path(plan).read_text())
    assert side["adopted"] and side["plan_sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert [a.status for a in adopted.fusion.adds] == [a.status for a in built.fusion.adds]
    TensorRTRunner(plan).close()


def test_device_info_tells_modules_apart() -> None:
    """Issue 20 (D16): the SM count is read; on a Jetson the module model too."""
    assert DEVICE.sm_count is None or DEVICE.sm_count > 0
    if DEVICE.l4t is not None:
        assert DEVICE.module and "Jetson" in DEVICE.module
