"""Turn a model spec (``demo``, ``resnet20``, ``torchvision:resnet50``, ``x.pt``, ``x.onnx``) into a model.

Checkpoints load with ``torch.load(weights_only=True)``; full pickles need ``trust_checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rescompile.data.preprocess import default_preset
from rescompile.errors import MissingDependency, UsageError
from rescompile.models.loaded import LoadedModel
from rescompile.models.resnet_cifar import DEPTHS, cifar_resnet

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_CHECKPOINT = ASSETS / "demo_resnet20.pt"
DEMO_INFO = ASSETS / "demo_resnet20.json"

TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def _read_checkpoint(path: Path, trust: bool) -> Any:
    """``torch.load`` of a checkpoint file; without ``trust`` only tensors and plain containers are unpickled.

    Raises:
        UsageError: missing, unreadable, not a ``torch.save`` file (what it is instead is named),
            corrupt, or holding pickled Python objects while ``trust`` is off.
    """
    import pickle
    import warnings

    import torch

    from rescompile.readers import check_file, describe, first_line

    path = check_file(path, "checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(64)
    # torch.save writes a zip archive (PyTorch >= 1.6) or a pickle (protocol 2+: first byte 0x80)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise UsageError(
            f"{path} is not a PyTorch checkpoint: it is {describe(head)}",
            hint="--weights takes a file written by torch.save (a state_dict)",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about legacy formats; the error below says what matters
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust and "Unsupported global" in str(exc):
            glob = next((ln.split("GLOBAL", 1)[1].split()[0] for ln in str(exc).splitlines() if "GLOBAL" in ln), "objects")
            raise UsageError(
                f"{path} holds pickled Python objects ({glob}), not only tensors; rescompile does not unpickle them",
                hint="save only the weights: torch.save(model.state_dict(), 'weights.pt')",
            ) from None
        raise UsageError(f"{path} is a corrupt PyTorch checkpoint ({first_line(exc)[:120]})") from None
    except MemoryError:
        raise UsageError(f"checkpoint {path} does not fit in memory") from None
    except Exception as exc:  # torch's readers (zip, pickle, storages) raise many types for a corrupt file
        raise UsageError(f"{path} is a corrupt or truncated PyTorch checkpoint ({type(exc).__name__}: {first_line(exc)[:120]})") from None


def _read_torchscript(path: Path) -> Any:
    """``torch.jit.load`` of a TorchScript archive (a zip); anything else is a UsageError saying what it is."""
    import torch

    from rescompile.readers import check_file, describe, first_line

    path = check_file(path, "model file")
    with open(path, "rb") as fh:
        head = fh.read(64)
    hint = "for a state_dict, name the architecture and pass the file with --weights"
    if not head.startswith(b"PK\x03\x04"):
        raise UsageError(f"{path} is not a TorchScript archive: it is {describe(head)}", hint=hint)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except MemoryError:
        raise UsageError(f"TorchScript model {path} does not fit in memory") from None
    except Exception as exc:  # the archive reader and the TorchScript deserializer raise many types
        raise UsageError(f"{path} is not a readable TorchScript archive ({first_line(exc)[:120]})", hint=hint) from None


def extract_state_dict(obj: Any, path: Path | str = "checkpoint") -> dict[str, Any]:
    """A state_dict from a plain dict, ``{"state_dict": ...}``/``{"model": ...}``, or a module."""
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{path} holds no state_dict (expected a dict of tensors, or one under 'state_dict'/'model')")
    prefixes = ("module.", "_orig_mod.")
    out = {}
    for k, v in obj.items():
        for p in prefixes:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def _all_finite(tensor: Any) -> bool:
    """No NaN or Inf in ``tensor``: numpy's check where the dtype has one (PyTorch's took 1.8 s of CPU over a
    ResNet-50's 267 tensors, numpy's 0.02 s), PyTorch's for the rest (bfloat16)."""
    import numpy as np
    import torch

    if tensor.dtype in (torch.float32, torch.float64, torch.float16) and tensor.device.type == "cpu":
        return bool(np.isfinite(tensor.detach().numpy()).all())
    return bool(torch.isfinite(tensor).all())


def apply_state_dict(module: Any, state: dict[str, Any], path: Path | str, arch: str) -> None:
    """Load ``state`` strictly; missing, unexpected, mis-shaped, mistyped or non-finite tensors are a UsageError."""

    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if shape:
        problems.append("shape mismatch: " + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shape]))
    if problems:
        raise UsageError(
            f"checkpoint {path} does not fit {arch}: " + "; ".join(problems),
            hint="check the architecture, --num-classes and --in-channels",
        )
    for k in sorted(own):
        want, got = own[k], state[k]
        if want.is_floating_point() != got.is_floating_point():
            raise UsageError(
                f"checkpoint {path}: {k} is {str(got.dtype).removeprefix('torch.')}, {arch} needs {str(want.dtype).removeprefix('torch.')}"
            )
        if got.is_floating_point() and not _all_finite(got):
            raise UsageError(f"checkpoint {path}: {k} holds NaN or Inf", hint="a diverged training run? use an earlier checkpoint")
    if any(t.is_meta for t in own.values()):  # built without storage: take the checkpoint's tensors, in the module's dtypes
        module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True, assign=True)
        left = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if left:
            raise ValueError(f"{arch}: no checkpoint tensor for {left[:3]} (a buffer outside the state_dict)")
        return
    module.load_state_dict(state, strict=True)


def _build_torchvision(arch: str, num_classes: int, in_channels: int, *, storage: bool = True) -> Any:
    """A torchvision architecture with random weights; ``storage=False`` builds it on the meta device (no memory,
    no random init: 0.4 s for a ResNet-50) for a checkpoint that :func:`apply_state_dict` then assigns."""
    import contextlib

    import torch
    import torchvision

    if arch not in TORCHVISION_ARCHS:
        raise UsageError(f"unknown torchvision architecture {arch!r}", hint="one of: " + ", ".join(TORCHVISION_ARCHS))
    with contextlib.nullcontext() if storage else torch.device("meta"):
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def load_model(
    spec: str,
    *,
    weights: Path | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Resolve a model spec.

    Args:
        spec: ``demo``; ``resnet20``..``resnet110``; ``torchvision:<arch>``; a TorchScript
            file (``.pt``/``.pth``/``.ts`` archive); or an ``.onnx`` file (export is skipped).
        weights: a checkpoint for the CIFAR or torchvision families.
        num_classes, in_channels, input_size: architecture and input overrides.
        trust_checkpoint: allow unpickling arbitrary objects from ``weights``.

    Raises:
        UsageError: unknown spec, unreadable or mismatched checkpoint.
    """

    if spec == "demo":
        if weights is not None:
            raise UsageError("the demo model has its own weights; use resnet20 --weights to bring yours")
        if not (DEMO_CHECKPOINT.is_file() and DEMO_INFO.is_file()):
            raise MissingDependency(
                f"the demo model is missing from this installation ({DEMO_CHECKPOINT})",
                hint="reinstall rescompile, or regenerate it with benchmarks/train_demo.py",
            )
        info = json.loads(DEMO_INFO.read_text())
        module = cifar_resnet("resnet20", num_classes=10, in_channels=1)
        apply_state_dict(module, extract_state_dict(_read_checkpoint(DEMO_CHECKPOINT, False)), DEMO_CHECKPOINT, "resnet20")
        preset = default_preset(1, 28, family="demo")
        return LoadedModel("demo", module.eval(), None, (1, 28, 28), 10, preset, {"spec": "demo", **info})

    if spec in DEPTHS:
        nc, ic, size = num_classes or 10, in_channels or 3, input_size or 32
        module = cifar_resnet(spec, num_classes=nc, in_channels=ic)
        if weights is not None:
            apply_state_dict(module, extract_state_dict(_read_checkpoint(weights, trust_checkpoint), weights), weights, spec)
        preset = default_preset(ic, size, family="cifar")
        return LoadedModel(spec, module.eval(), None, (ic, size, size), nc, preset, {"spec": spec, "weights": str(weights)})

    if spec.startswith("torchvision:"):
        arch = spec.split(":", 1)[1]
        nc, ic, size = num_classes or 1000, in_channels or 3, input_size or 224
        module = _build_torchvision(arch, nc, ic, storage=weights is None)
        if weights is not None:
            apply_state_dict(module, extract_state_dict(_read_checkpoint(weights, trust_checkpoint), weights), weights, arch)
        preset = default_preset(ic, size, family="torchvision")
        return LoadedModel(arch, module.eval(), None, (ic, size, size), nc, preset, {"spec": spec, "weights": str(weights)})

    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        from rescompile.models.onnx_source import describe_onnx

        return describe_onnx(path)
    if path.suffix.lower() in (".pt", ".pth", ".ts", ".torchscript", ".jit"):
        module = _read_torchscript(path)
        if input_size is None or in_channels is None or num_classes is None:
            raise UsageError("a TorchScript model needs --in-channels, --input-size and --num-classes")
        return LoadedModel(
            path.stem,
            module.eval(),
            None,
            (in_channels, input_size, input_size),
            num_classes,
            default_preset(in_channels, input_size),
            {"spec": spec},
        )
    raise UsageError(
        f"unknown model {spec!r}",
        hint="use demo, resnet20..resnet110, torchvision:<arch>, a TorchScript file or an .onnx file",
    )
