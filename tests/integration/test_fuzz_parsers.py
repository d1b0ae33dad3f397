"""Fuzzing every parser the CLI exposes: hostile bytes and wrong content end in exit 0-3, one error line, nothing half-written.

The harness (strategies, targets, the contract) is tests/fuzzing.py; benchmarks/fuzz.py runs the
same targets for minutes. Here a small, derandomized profile keeps each parser to a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rescompile.cli import app
from rescompile.deploy.bundle import pack
from tests.fuzzing import _bundle_parts, check_cli, check_library, make_build, targets

settings.register_profile(
    "suite",
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
CLI = settings(settings.get_profile("suite"), max_examples=4)
NAMES = [
    "checkpoint",
    "onnx",
    "npy",
    "npz",
    "image",
    "recipe",
    "gates",
    "ranges",
    "calib_stats",
    "qdq_plan",
    "trt_cache",
    "reference",
    "bundle",
    "report",
    "manifest",
]


@pytest.fixture(scope="module")
def fuzz_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model's build folder and its sibling files (tests.fuzzing.make_build): the seeds, and model.rcb."""
    return make_build(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def fuzz_targets(fuzz_build: Path) -> dict[str, object]:
    found = {t.name: t for t in targets(fuzz_build)}
    assert sorted(found) == sorted(NAMES)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_parser_survives_hostile_input(name: str, fuzz_targets: dict, tmp_path: Path) -> None:
    target = fuzz_targets[name]
    outcomes = []

    @settings(settings.get_profile("suite"))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        outcomes.append(check_library(target, data.draw(target.strategy), tmp_path / "w"))

    run()
    assert any(o.startswith("exit 2") for o in outcomes), outcomes  # the hostile inputs were refused, not ignored


@pytest.mark.parametrize("name", NAMES)
def test_cli_survives_hostile_input(name: str, fuzz_targets: dict, tmp_path: Path) -> None:
    target = fuzz_targets[name]
    codes = []

    @CLI
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        codes.append(check_cli(target, data.draw(target.strategy), tmp_path / "w"))

    run()
    assert 2 in codes, codes


def test_deploy_of_a_bundle_whose_model_is_damaged(fuzz_build: Path, tmp_path: Path) -> None:  # found by benchmarks/fuzz.py (exit 4)
    parts, meta = _bundle_parts((fuzz_build.parent / "model.rcb").read_bytes())
    parts["model.int8.onnx"] = b'{"not": "onnx"}'  # the hashes in bundle.json are re-made: only the content is wrong
    (tmp_path / "bad.rcb").write_bytes(pack(parts, meta))
    res = CliRunner().invoke(app, ["deploy", str(tmp_path / "bad.rcb"), "--backend", "onnxruntime", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "is not a readable ONNX model (it is JSON text" in res.output
    assert not (tmp_path / "d").exists()
