"""TensorRT engines: target profiles, pure build settings, and the thin TensorRT layer.

Importing this package never imports TensorRT; only ``rescompile.engine.tensorrt`` does, lazily.
"""

from rescompile.engine.settings import EngineOptions, EngineSettings, compute_settings, parse_version
from rescompile.engine.targets import TARGETS, Target, get_target

__all__ = ["TARGETS", "EngineOptions", "EngineSettings", "Target", "compute_settings", "get_target", "parse_version"]
