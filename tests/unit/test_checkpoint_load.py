"""A torchvision architecture with a checkpoint is built without storage and takes the checkpoint's tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from rescompile.errors import UsageError
from rescompile.models import load_model


def test_a_checkpoint_is_assigned_in_the_architecture_dtypes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None, num_classes=4).state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}  # a half-precision checkpoint
    torch.save({"state_dict": half}, tmp_path / "w.pt")
    module = load_model("torchvision:resnet18", weights=tmp_path / "w.pt", num_classes=4).module
    tensors = dict(module.state_dict())
    assert not any(t.is_meta for t in tensors.values()) and set(tensors) == set(state)
    for k, v in tensors.items():
        assert v.dtype == state[k].dtype, k  # float32 parameters, int64 counters
        assert torch.equal(v, half[k].to(v.dtype)), k
    with torch.inference_mode():
        assert torch.isfinite(module(torch.zeros(1, 3, 32, 32))).all()


def test_a_checkpoint_that_does_not_fit_is_still_named(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None, num_classes=4).state_dict()
    del state["fc.bias"]
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UsageError, match="missing keys: fc.bias"):
        load_model("torchvision:resnet18", weights=tmp_path / "w.pt", num_classes=4)


def test_without_a_checkpoint_the_weights_are_random_and_real() -> None:
    module = load_model("torchvision:resnet18", num_classes=4).module
    assert not any(p.is_meta for p in module.parameters())
    assert float(module.conv1.weight.abs().sum()) > 0
