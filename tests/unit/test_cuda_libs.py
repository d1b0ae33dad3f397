"""The TensorRT runner's CUDA libraries: ``--cuda-lib`` resolution, the CUDA-graph record, and the names each
library's class calls, checked against the sourced tables in ``rescompile.engine.api_names`` (PyCUDA: from its
driver reference, as pycuda does not install here; torch: against the installed torch too)."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rescompile.engine.api_names import (
    PYCUDA_DRIVER_NAMES,
    PYCUDA_MEMBERS,
    TORCH_CUDA_NAMES,
    TORCH_MEMBERS,
    attribute_uses,
    member_uses,
)
from rescompile.errors import MissingDependency, UsageError
from rescompile.runtime import cuda_libs
from rescompile.runtime.cuda_libs import CHOICES, LIBS, graph_note, resolve_cuda_lib
from rescompile.validate.latency import measure_latency

NONE = dict.fromkeys(LIBS, False)


@pytest.mark.parametrize(
    ("have", "expected"),
    [
        ({"cuda-python": True, "pycuda": True, "torch": True}, "cuda-python"),
        ({"cuda-python": False, "pycuda": True, "torch": True}, "pycuda"),
        ({"cuda-python": False, "pycuda": False, "torch": True}, "torch"),
        ({"pycuda": True}, "pycuda"),  # a library not probed counts as missing
    ],
)
def test_auto_prefers_cuda_python_then_pycuda_then_torch(have: dict[str, bool], expected: str) -> None:
    assert resolve_cuda_lib("auto", have) == expected


def test_auto_without_any_library_is_a_missing_dependency_naming_all_three() -> None:
    with pytest.raises(MissingDependency) as err:
        resolve_cuda_lib("auto", NONE)
    assert err.value.exit_code == 3
    text = f"{err.value.message} {err.value.hint}"
    assert all(lib in text for lib in LIBS) and "pip install" in text


@pytest.mark.parametrize("lib", LIBS)
def test_an_explicit_choice_is_taken_or_refused(lib: str) -> None:
    assert resolve_cuda_lib(lib, {**NONE, lib: True}) == lib
    others = {k: k != lib for k in LIBS}  # every library but the chosen one: no silent substitute
    with pytest.raises(MissingDependency, match=lib):
        resolve_cuda_lib(lib, others)


def test_an_unknown_choice_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cupy"):
        resolve_cuda_lib("cupy", dict.fromkeys(LIBS, True))
    assert CHOICES == ("auto", "cuda-python", "pycuda", "torch")


def test_available_libs_probes_all_three() -> None:
    have = cuda_libs.available_libs()
    assert set(have) == set(LIBS)
    assert have["torch"] == torch.cuda.is_available()


def test_graph_note_records_use_and_fallbacks() -> None:
    assert graph_note("cuda-python", None)["used"] is True
    assert graph_note("torch", None) == {
        "used": True,
        "library": "torch",
        "reason": "execute_async_v3 captured once after warm-up, graph launched",
    }
    failed = graph_note("cuda-python", "CudaError: CUDA error 901: operation not permitted when stream is capturing")
    assert failed["used"] is False and "operation not permitted" in failed["reason"]
    assert graph_note("pycuda", None)["used"] is False  # no graph API: always plain enqueue
    assert "pycuda" in graph_note("pycuda", "anything")["reason"]


def _class_src(cls: type) -> str:
    return textwrap.dedent(inspect.getsource(cls))


PROTOCOL = {
    "alloc_device",
    "alloc_host",
    "device_ptr",
    "host_array",
    "h2d",
    "d2h",
    "stream_handle",
    "sync",
    "free_device",
    "free_host",
    "capture",
    "launch",
    "free_graph",
    "close",
    "name",
    "has_graphs",
}


@pytest.mark.parametrize("cls", [cuda_libs.CudaPython, cuda_libs.PyCuda, cuda_libs.TorchCuda])
def test_every_library_class_implements_the_whole_protocol(cls: type) -> None:
    assert [m for m in sorted(PROTOCOL) if not hasattr(cls, m)] == []


def test_pycuda_names_used_are_in_the_table_from_its_docs() -> None:
    src = _class_src(cuda_libs.PyCuda)
    used = {u.name for u in attribute_uses(src, "cuda", depth=1)}
    assert {"mem_alloc", "pagelocked_empty", "memcpy_htod_async", "memcpy_dtoh_async", "Stream"} <= used
    assert used <= PYCUDA_DRIVER_NAMES
    own = {"cuda", "context", "stream", "close"}  # attributes of the PyCuda object itself
    members = {u.name for u in member_uses(src, ("cuda", "np")) if u.name not in own}
    assert members <= {m.split(".")[-1] for m in PYCUDA_MEMBERS}, members - {m.split(".")[-1] for m in PYCUDA_MEMBERS}
    assert {"pop", "push", "free", "handle", "synchronize", "retain_primary_context"} <= members
    assert "make_context" not in members  # a second, non-primary context (D6)
    device_src = (Path(cuda_libs.__file__).parent.parent / "engine" / "device.py").read_text()
    probe = {u.name for u in attribute_uses(device_src, "cuda", depth=2)}  # the pycuda GPU probe of find_gpu
    assert {"Device.count", "init"} <= probe and {p.split(".")[0] for p in probe} <= PYCUDA_DRIVER_NAMES
    assert {p for p in probe if "." in p} <= PYCUDA_MEMBERS


def test_torch_names_used_are_in_the_table() -> None:
    src = _class_src(cuda_libs.TorchCuda)
    used = {u.name for u in attribute_uses(src, "torch", depth=2)}
    assert {"cuda.Stream", "cuda.CUDAGraph", "empty"} <= used
    assert used <= TORCH_CUDA_NAMES
    own = {"torch", "device", "stream"}
    members = {u.name for u in member_uses(src, ("torch", "np")) if u.name not in own}
    assert members <= {m.split(".")[-1] for m in TORCH_MEMBERS}, members - {m.split(".")[-1] for m in TORCH_MEMBERS}


@pytest.mark.parametrize("name", sorted(TORCH_CUDA_NAMES | TORCH_MEMBERS))
def test_torch_name_table_exists_in_the_installed_torch(name: str) -> None:
    obj: object = torch
    for part in name.split("."):
        obj = getattr(obj, part)  # AttributeError names the missing part


def test_pycuda_table_has_no_graph_api() -> None:
    assert not any("graph" in n.lower() for n in PYCUDA_DRIVER_NAMES | PYCUDA_MEMBERS)
    assert cuda_libs.PyCuda.has_graphs is False and cuda_libs.CudaPython.has_graphs and cuda_libs.TorchCuda.has_graphs


class _GraphRunner:
    """A runner that follows the TensorRT runner's graph protocol (enable_graph / graph_info / drop_graph)."""

    name = "graph-protocol"

    def __init__(self, note: dict[str, object]) -> None:
        self.note = note
        self.calls: list[str] = []
        self.graph_info: dict[str, object] | None = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls.append("infer")
        return x

    def enable_graph(self) -> None:
        self.calls.append("enable")
        self.graph_info = self.note

    def drop_graph(self) -> None:
        self.calls.append("drop")
        self.graph_info = None


@pytest.mark.parametrize("note", [graph_note("cuda-python", None), graph_note("cuda-python", "CudaError: 900"), graph_note("pycuda", None)])
def test_latency_enables_the_graph_after_warm_up_and_records_what_happened(note: dict[str, object]) -> None:
    r = _GraphRunner(note)
    lat = measure_latency(r, np.zeros((1, 3, 8, 8), np.float32), 2, warmup=2, runs=3)
    assert r.calls == ["infer", "infer", "enable", "infer", "infer", "infer", "infer", "drop"]  # capture call untimed
    assert lat.runs == 3 and lat.cuda_graph == note and lat.to_dict()["cuda_graph"] == note
    assert r.graph_info is None  # later (accuracy) calls enqueue plainly


def test_latency_of_a_runner_without_graphs_records_none() -> None:
    class Plain:
        name = "plain"

        def infer(self, x: np.ndarray) -> np.ndarray:
            return x

    assert measure_latency(Plain(), np.zeros((1, 3, 8, 8), np.float32), 1, warmup=1, runs=3).cuda_graph is None


def test_remote_deploy_forwards_a_chosen_cuda_lib_only() -> None:
    from rescompile.deploy.remote import HostSpec, RemoteOptions, remote_deploy_command

    assert "--cuda-lib" not in remote_deploy_command(HostSpec("h"), RemoteOptions(), "f")
    assert remote_deploy_command(HostSpec("h"), RemoteOptions(cuda_lib="pycuda"), "f").endswith("--cuda-lib pycuda")
    assert "--rest-precision" not in remote_deploy_command(HostSpec("h"), RemoteOptions(), "f")  # issue 20: fp16 is the default
    assert remote_deploy_command(HostSpec("h"), RemoteOptions(rest_precision="fp32"), "f").endswith("--rest-precision fp32")


@pytest.mark.parametrize("note", [graph_note(lib, err) for lib in LIBS for err in (None, "CudaError: 900")] + [None])
def test_what_latency_records_about_graphs_fits_the_report_schema(note: dict[str, object] | None) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(cuda_libs.__file__).parent.parent / "schemas" / "report.schema.json").read_text())
    sub = schema["$defs"]["latency"]["properties"]["cuda_graph"]
    jsonschema.validate(note, sub)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"used": "yes", "library": "cupy", "reason": ""}, sub)
