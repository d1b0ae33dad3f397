"""BuildConfig nests one settings value per option group; its flat keys (manifest, sweep grid, ``rescompile.build(**kw)``)
go through one alias table, and the checks build and validate share exist once."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile.commands.build import BuildData, BuildEngine, BuildQuantization
from rescompile.commands.options import CalibrationOptions, ExportOptions, LatencyOptions, ModelOptions, PreprocessOptions, RayOptions
from rescompile.config import (
    FLAT,
    AutoFallback,
    BackendSettings,
    BuildConfig,
    CalibrateSettings,
    DataSettings,
    ExportConfig,
    Gates,
    LatencySettings,
    ModelSpec,
    PlanSettings,
    PreprocessSettings,
    TransformSettings,
)
from rescompile.errors import UsageError
from rescompile.pipeline.settings import FallbackSettings, build_settings, checked_latency

# The manifest's config keys of a default build (main @7d72fcc): a build without the off-unless-asked options keeps them.
MANIFEST_KEYS = set(
    "model weights num_classes in_channels input_size trust_checkpoint out calib val calib_size val_size layout preset "
    "calib_method percentile recipe pre_size resize mean std pre_channels channel_order policy backend target keep_fp "
    "keep_first_last opset exporter batch_size latency_batches latency_runs latency_warmup latency_budget_s layerwise "
    "auto_fallback save_reference threads seed gates".split()
)

ODD = {  # a value for every flat key that is not its default
    "model": "x.onnx",
    "weights": Path("w.pt"),
    "num_classes": 7,
    "in_channels": 1,
    "input_size": 28,
    "trust_checkpoint": True,
    "out": Path("o"),
    "calib": "c.npz",
    "val": "v.npz",
    "calib_size": 100,
    "val_size": 50,
    "layout": "nhwc",
    "preset": "cifar",
    "calib_method": "mse",
    "percentile": 99.9,
    "recipe": Path("r.yaml"),
    "pre_size": 24,
    "resize": 26,
    "mean": (0.5,),
    "std": (0.25,),
    "pre_channels": 1,
    "channel_order": "bgr",
    "policy": "onnxruntime",
    "backend": "tensorrt",
    "target": "orin",
    "keep_fp": ("Conv_*",),
    "keep_first_last": True,
    "opset": 18,
    "exporter": "dynamo",
    "batch_size": 16,
    "latency_batches": (1, 8),
    "latency_runs": 4,
    "latency_warmup": 2,
    "latency_budget_s": None,
    "layerwise": True,
    "auto_fallback": 3,
    "fallback_unit": "layer",
    "fallback_rank_samples": 30,
    "equalize": True,
    "bias_correction": True,
    "save_reference": Path("ref.npz"),
    "threads": 2,
    "seed": 3,
    "gates": Gates(max_top1_drop=1.0, latency_batch=8),
    "progress": True,
}


def test_a_default_config_records_the_manifest_keys_it_always_did() -> None:
    assert set(BuildConfig().to_dict()) == MANIFEST_KEYS
    assert set(ODD) == set(FLAT)  # the table above covers every flat key


def test_every_flat_key_lands_in_its_group_and_comes_back_out() -> None:
    cfg = BuildConfig.from_flat(**ODD)
    assert cfg.model == ModelSpec("x.onnx", Path("w.pt"), 7, 1, 28, True)
    assert cfg.pre == PreprocessSettings(Path("r.yaml"), "cifar", 24, 26, (0.5,), (0.25,), 1, "bgr")
    assert cfg.latency == LatencySettings((1, 8), 2, 4, None) and cfg.fallback == AutoFallback(3, "layer", 30)
    assert cfg.calibrate == CalibrateSettings("mse", 99.9) and cfg.backend == BackendSettings("tensorrt", "orin")
    assert {k: cfg.flat(k) for k in FLAT} == ODD
    record = cfg.to_dict()  # the manifest's form: paths as text, tuples as lists, gates as a mapping
    assert record["weights"] == "w.pt" and record["keep_fp"] == ["Conv_*"] and record["gates"]["latency_batch"] == 8
    assert "progress" not in record  # how a build runs is not what it is
    back = {**record, "gates": Gates(**record["gates"])}
    assert BuildConfig.from_flat(**back).to_dict() == record  # a manifest's config builds the same build again


def test_groups_and_flat_keys_replace_alike() -> None:
    cfg = BuildConfig.from_flat(calib_method="entropy", percentile=99.0)
    assert cfg == BuildConfig(calibrate=CalibrateSettings("entropy", 99.0))
    assert cfg.replace(calibrate=CalibrateSettings()) == BuildConfig()
    assert cfg.replace(model="resnet20").model == ModelSpec("resnet20")  # "model" the flat key: the spec
    assert cfg.replace(model=ModelSpec("resnet32", num_classes=10)).model.num_classes == 10  # "model" the group
    with pytest.raises(TypeError, match="no setting 'calib_methods'"):
        BuildConfig.from_flat(calib_methods="max")


def test_each_option_group_returns_its_stage_settings() -> None:
    assert ModelOptions(num_classes=10).spec("resnet20") == ModelSpec("resnet20", num_classes=10)
    assert ExportOptions(opset=18).settings() == ExportConfig(opset=18)
    assert PreprocessOptions(mean="0.5, 0.25", size=24).settings() == PreprocessSettings(size=24, mean=(0.5, 0.25))
    assert CalibrationOptions("percentile", 99.9).settings() == CalibrateSettings("percentile", 99.9)
    assert LatencyOptions(latency_batch=[8], latency_runs=3).settings(warmup=1) == LatencySettings((8,), 1, 3)
    assert BuildData(calib="c.npz", layout="nhwc").settings() == DataSettings("c.npz", layout="nhwc")
    q = BuildQuantization(policy="onnxruntime", keep_fp=["Add_*"], auto_fallback=2, equalize=True)
    assert (q.plan(), q.transform(), q.fallback()) == (PlanSettings("onnxruntime", ("Add_*",)), TransformSettings(True), AutoFallback(2))
    assert BuildEngine().settings() == BackendSettings() and RayOptions().settings() is None
    with pytest.raises(UsageError, match="--mean takes numbers"):
        PreprocessOptions(mean="a,b").settings()
    with pytest.raises(UsageError, match="layout"):
        BuildData(layout="chw").settings()


def test_the_gate_batch_is_checked_once_for_build_and_validate() -> None:
    latency = checked_latency(LatencySettings((1, 8)), Gates(max_p99_ms=5.0, latency_batch=8))
    assert latency.required == (8,)  # timed whatever the budget
    with pytest.raises(UsageError, match="--gate-batch 4 is not a timed batch size"):
        checked_latency(LatencySettings((1, 8)), Gates(latency_batch=4))
    with pytest.raises(UsageError, match="--gate-batch 4 is not a timed batch size"):  # build: the same check, the same words
        build_settings(BuildConfig.from_flat(latency_batches=(1, 8), gates=Gates(latency_batch=4)))


def test_auto_fallback_without_an_accuracy_gate_is_refused_in_one_place() -> None:
    assert FallbackSettings.of(AutoFallback(), Gates(), PlanSettings(), 0) is None  # off
    with pytest.raises(UsageError, match="needs an accuracy gate"):
        build_settings(BuildConfig.from_flat(auto_fallback=2, gates=Gates(max_p99_ms=5.0)))
    with pytest.raises(UsageError, match="unknown fallback unit 'row'"):
        FallbackSettings(2, Gates(min_cosine=0.9), unit="row").check()
    found = FallbackSettings.of(AutoFallback(2, "block"), Gates(min_cosine=0.9), PlanSettings(keep_fp=("Conv_0",)), seed=5)
    assert found == FallbackSettings(2, Gates(min_cosine=0.9), ("Conv_0",), unit="block", seed=5)
