"""Which TensorRT Python API names exist in which version, and a static check of code that uses them.

``api_names.txt`` (generated from the real bindings of TensorRT 10.0-10.16 and 11.0-11.4 by
``_api_names_gen``) holds the table. ``check_source`` parses a module with ``ast``, collects
each ``trt.X.Y`` chain, works out which TensorRT majors can reach it (a function suffixed
``_trt10``/``_trt11``, or an ``if version.major == 10`` style branch), and reports every name
missing from a version of a major that reaches it, plus every call of a ``_trt10``/``_trt11``
function from a path that other majors can reach.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("api_names.txt")
MAJORS = frozenset({10, 11})


@dataclass(frozen=True)
class ApiTable:
    versions: tuple[str, ...]
    present: dict[str, frozenset[str]]  # name -> versions that have it

    def has(self, name: str, version: str) -> bool:
        return version in self.present.get(name, frozenset())

    def versions_of(self, major: int) -> tuple[str, ...]:
        return tuple(v for v in self.versions if int(v.split(".")[0]) == major)


def load_table(path: Path = TABLE) -> ApiTable:
    """Read ``api_names.txt``."""
    versions: tuple[str, ...] = ()
    present: dict[str, frozenset[str]] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("versions "):
            versions = tuple(line.split()[1:])
            continue
        name, _, mask = line.partition(" ")
        present[name] = frozenset(versions) if not mask else frozenset(v for v, m in zip(versions, mask, strict=True) if m == "+")
    return ApiTable(versions, present)


@dataclass(frozen=True)
class Use:
    name: str  # "BuilderFlag.INT8" (at most two levels, as in the table)
    line: int
    majors: frozenset[int]  # the TensorRT majors whose code path reaches this use


def _major_test(test: ast.expr) -> frozenset[int] | None:
    """Majors for which ``test`` is true, if it is a ``<x>.major <op> N`` compare (or an ``and`` of them)."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        parts = [p for p in (_major_test(v) for v in test.values) if p is not None]
        if not parts:
            return None
        out = MAJORS
        for p in parts:
            out = out & p
        return out
    if not (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.left, ast.Attribute)
        and test.left.attr == "major"
        and isinstance(test.comparators[0], ast.Constant)
        and isinstance(test.comparators[0].value, int)
    ):
        return None
    n = test.comparators[0].value
    ops = {
        ast.Eq: lambda m: m == n,
        ast.NotEq: lambda m: m != n,
        ast.Lt: lambda m: m < n,
        ast.LtE: lambda m: m <= n,
        ast.Gt: lambda m: m > n,
        ast.GtE: lambda m: m >= n,
    }
    fn = ops.get(type(test.ops[0]))
    return None if fn is None else frozenset(m for m in MAJORS if fn(m))


def _suffix_majors(name: str) -> frozenset[int] | None:
    for m in MAJORS:
        if name.endswith(f"_trt{m}"):
            return frozenset({m})
    return None


def _reach(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> frozenset[int]:
    majors = MAJORS
    child, cur = node, parents.get(node)
    while cur is not None:
        if isinstance(cur, ast.FunctionDef | ast.AsyncFunctionDef):
            s = _suffix_majors(cur.name)
            if s is not None:
                majors = majors & s
        elif isinstance(cur, ast.If | ast.IfExp):
            t = _major_test(cur.test)
            if t is not None and child is not cur.test:
                in_body = child in cur.body if isinstance(cur.body, list) else child is cur.body
                if in_body:
                    majors = majors & t
                elif not isinstance(cur.test, ast.BoolOp):  # "else" of a plain compare: the complement
                    majors = majors - t
        child, cur = cur, parents.get(cur)
    return majors


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    parts: list[str] = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    if not isinstance(cur, ast.Name):
        return None
    return cur.id, parts[::-1]


def attribute_uses(source: str, module_alias: str, depth: int = 2) -> list[Use]:
    """Every ``<module_alias>.X[.Y...]`` chain in ``source`` (cut to ``depth`` levels) and who reaches it."""
    tree = ast.parse(source)
    parents = _parents(tree)
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute):
            continue  # only the outermost attribute of a chain
        found = _chain(node)
        if found is None or found[0] != module_alias:
            continue
        uses.append(Use(".".join(found[1][:depth]), node.lineno, _reach(node, parents)))
    return sorted(uses, key=lambda u: (u.line, u.name))


def member_uses(source: str, skip_roots: tuple[str, ...] = ("trt",)) -> list[Use]:
    """Every attribute name accessed on an object (``x.attr``) whose chain does not start at ``skip_roots``."""
    tree = ast.parse(source)
    parents = _parents(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found = _chain(node)
            if found is not None and found[0] in skip_roots:
                continue
            out.append(Use(node.attr, node.lineno, _reach(node, parents)))
    return sorted(out, key=lambda u: (u.line, u.name))


def versioned_calls(source: str) -> list[Use]:
    """Calls of functions suffixed ``_trtNN``, with the majors that reach each call."""
    tree = ast.parse(source)
    parents = _parents(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if _suffix_majors(name) is not None:
                out.append(Use(name, node.lineno, _reach(node, parents)))
    return out


def check_source(source: str, table: ApiTable, module_alias: str = "trt") -> list[str]:
    """Problems with the TensorRT names ``source`` uses (empty: every path uses names its versions have)."""
    problems = []
    for use in attribute_uses(source, module_alias):
        for major in sorted(use.majors):
            missing = [v for v in table.versions_of(major) if not table.has(use.name, v)]
            if missing:
                problems.append(
                    f"line {use.line}: {module_alias}.{use.name} is reached on TensorRT {major}.x "
                    f"but does not exist in {', '.join(missing)}"
                )
    for call in versioned_calls(source):
        allowed = _suffix_majors(call.name) or MAJORS
        if not call.majors <= allowed:
            problems.append(
                f"line {call.line}: {call.name}() is reached on TensorRT "
                f"{', '.join(f'{m}.x' for m in sorted(call.majors - allowed))} without a version check"
            )
    return problems


# CUDA calls made through cuda-python (``cuda.bindings.runtime`` as ``cudart``, ``cuda.bindings.driver``).
# Source for each: the CUDA Runtime / Driver API reference (docs.nvidia.com/cuda/cuda-runtime-api,
# cuda-driver-api), which cuda-python exposes under the same names in 12.x and 13.x, each call
# returning ``(err, value...)``; the host-memory pair is what NVIDIA's TensorRT Python samples use
# for copies (samples/python/common_runtime.py: cudaMallocHost / cudaFreeHost).
# tests/unit/test_trt_api.py checks every name used against this list and the list against the
# installed cuda-bindings.
CUDA_RUNTIME_NAMES = frozenset(
    {
        "cudaError_t",
        "cudaGetErrorString",
        "cudaGetDeviceCount",
        "cudaGetDeviceProperties",
        "cudaSetDevice",
        "cudaMalloc",
        "cudaFree",
        "cudaMallocHost",
        "cudaFreeHost",
        "cudaMemcpyAsync",
        "cudaMemcpyKind",
        "cudaStreamCreate",
        "cudaStreamDestroy",
        "cudaStreamSynchronize",
        # CUDA graphs (runtime API "Graph Management" / "Stream Management"; TensorRT developer guide "CUDA Graphs")
        "cudaStreamBeginCapture",
        "cudaStreamEndCapture",
        "cudaStreamCaptureMode",
        "cudaGetLastError",  # clears the error after a failed capture, as trtexec does (sampleInference.cpp)
        "cudaGraphInstantiate",
        "cudaGraphLaunch",
        "cudaGraphExecDestroy",
        "cudaGraphDestroy",
    }
)

# PyCUDA (``import pycuda.driver as cuda``), written from its driver reference,
# https://documen.tician.de/pycuda/driver.html (pycuda is not installable here without the CUDA
# toolkit, so this table is the check): module functions and classes, then the members called on
# the objects they return (Device.retain_primary_context -> Context.push / Context.pop, as
# pycuda.autoprimaryctx does; mem_alloc -> DeviceAllocation.free;
# Stream.handle is the CUstream as an int, Stream.synchronize).
PYCUDA_DRIVER_NAMES = frozenset(
    {
        "init",
        "Device",
        "mem_alloc",
        "pagelocked_empty",
        "Stream",
        "memcpy_htod_async",
        "memcpy_dtoh_async",
    }
)
PYCUDA_MEMBERS = frozenset(
    {
        "Device.retain_primary_context",
        "Context.push",
        "Device.count",
        "Device.name",
        "Device.compute_capability",
        "Context.pop",
        "DeviceAllocation.free",
        "Stream.handle",
        "Stream.synchronize",
    }
)

# torch's CUDA names the runner calls (torch docs: torch.cuda, "CUDA semantics", torch.Tensor);
# tests/unit/test_trt_api.py checks each against the installed torch (they exist without a GPU).
TORCH_CUDA_NAMES = frozenset(
    {
        "empty",
        "uint8",
        "device",
        "cuda.set_device",
        "cuda.Stream",
        "cuda.stream",
        "cuda.CUDAGraph",
        "cuda.graph",
        "cuda.is_available",
        "cuda.get_device_properties",  # engine/device.py: the SM count (DeviceInfo.sm_count)
    }
)
TORCH_MEMBERS = frozenset(
    {
        "Tensor.data_ptr",
        "Tensor.pin_memory",
        "Tensor.numpy",
        "Tensor.copy_",
        "cuda.Stream.cuda_stream",
        "cuda.Stream.synchronize",
        "cuda.CUDAGraph.replay",
    }
)
CUDA_DRIVER_NAMES = frozenset({"cuDriverGetVersion", "CUresult"})

# TensorRT calls that report failure by returning False (or None): their result must be used.
CHECKED_RESULTS = frozenset(
    {
        "set_input_shape",
        "set_tensor_address",
        "set_timing_cache",
        "execute_async_v3",
        "parse",
        "create_execution_context",
        "deserialize_cuda_engine",
        "build_serialized_network",
    }
)


def discarded_results(source: str, names: frozenset[str] = CHECKED_RESULTS) -> list[Use]:
    """Calls of ``names`` whose result is thrown away (a bare expression statement)."""
    tree = ast.parse(source)
    parents = _parents(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
            if isinstance(parents.get(node), ast.Expr):
                out.append(Use(node.func.attr, node.lineno, _reach(node, parents)))
    return out
