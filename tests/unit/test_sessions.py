"""One ONNX Runtime session factory: each caller's sessions get exactly the options that caller had."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rescompile.calibrate.collect import CollectSettings, collect_stats
from rescompile.export import run_onnx
from rescompile.runtime import OnnxRuntimeRunner, sessions
from rescompile.validate.layerwise import layerwise_blame

LEVEL = ort.GraphOptimizationLevel
SPIN = "session.intra_op.allow_spinning"


def options(sess: Any) -> dict[str, Any]:
    """What a session was made with, read back from ONNX Runtime itself."""
    o = sess.get_session_options()
    try:
        spin = o.get_session_config_entry(SPIN)
    except RuntimeError:  # not set
        spin = None
    return {
        "level": o.graph_optimization_level,
        "intra": o.intra_op_num_threads,
        "inter": o.inter_op_num_threads,
        "log": o.log_severity_level,
        "spin": spin,
        "providers": sess.get_providers(),
    }


@pytest.fixture()
def made(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The options of every session the package makes while the test runs (the real factory, observed)."""
    seen: list[dict[str, Any]] = []
    real = sessions.ort_session

    def observed(*args: Any, **kwargs: Any) -> Any:
        sess = real(*args, **kwargs)
        seen.append(options(sess))
        return sess

    monkeypatch.setattr(sessions, "ort_session", observed)
    return seen


CPU = ["CPUExecutionProvider"]


def test_onnx_runtimes_defaults_are_what_the_factory_leaves_alone() -> None:
    # calibration never set the level: ONNX Runtime's default is "all on", what optimize=True sets
    default = ort.SessionOptions()
    assert default.graph_optimization_level == LEVEL.ORT_ENABLE_ALL
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (0, 0)


def test_runner_sessions_optimize_fully_with_its_threads_and_one_inter_op_thread(
    made: list, tiny_onnx: onnx.ModelProto, tmp_path: Path
) -> None:
    OnnxRuntimeRunner(tiny_onnx, threads=2)
    OnnxRuntimeRunner(tiny_onnx.SerializeToString(), threads=1, optimized_path=str(tmp_path / "opt.onnx"))
    assert made == [{"level": LEVEL.ORT_ENABLE_ALL, "intra": n, "inter": 1, "log": 3, "spin": None, "providers": CPU} for n in (2, 1)]
    assert onnx.load(str(tmp_path / "opt.onnx")).graph.node  # ONNX Runtime wrote the graph it optimized


def test_parity_sessions_run_the_graph_unoptimized(made: list, tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray) -> None:
    out = run_onnx(tiny_onnx, tiny_data[:2])
    assert out.shape[0] == 2
    assert made == [{"level": LEVEL.ORT_DISABLE_ALL, "intra": 0, "inter": 0, "log": 3, "spin": None, "providers": CPU}]


@pytest.mark.parametrize("threads", [None, 2])
def test_calibration_sessions_do_not_spin(made: list, tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray, threads: int | None) -> None:
    relu = next(n.output[0] for n in tiny_onnx.graph.node if n.op_type == "Relu")
    stats = collect_stats(tiny_onnx, [relu], [tiny_data[:4]], CollectSettings(threads=threads))
    assert stats[relu].count > 0
    assert made == [{"level": LEVEL.ORT_ENABLE_ALL, "intra": threads or 0, "inter": 0, "log": 3, "spin": "0", "providers": CPU}]


def test_layerwise_sessions_run_the_graph_unoptimized(
    made: list, quantize_tiny: Callable[..., Any], tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray
) -> None:
    int8 = quantize_tiny("tensorrt").model
    made.clear()  # the fixture's own calibration, on first use
    layerwise_blame(tiny_onnx, int8, tiny_data[:4])
    assert made and all(
        m == {"level": LEVEL.ORT_DISABLE_ALL, "intra": 0, "inter": 0, "log": 3, "spin": None, "providers": CPU} for m in made
    )


def test_the_factory_takes_a_model_its_bytes_or_a_path(tiny_onnx: onnx.ModelProto, tiny_data: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(tiny_onnx, str(path))
    x = tiny_data[:2]
    outs = [
        s.run(None, {s.get_inputs()[0].name: x})[0]
        for s in (sessions.ort_session(m, optimize=False) for m in (tiny_onnx, tiny_onnx.SerializeToString(), str(path)))
    ]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def test_no_module_but_the_factory_makes_a_session() -> None:
    root = Path(sessions.__file__).parents[1]
    makers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if "InferenceSession(" in p.read_text())
    assert makers == ["runtime/sessions.py"]
