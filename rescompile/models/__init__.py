"""Model sources: the shipped demo, CIFAR ResNets, torchvision ResNets, TorchScript, ONNX files."""

from rescompile.models.loader import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
