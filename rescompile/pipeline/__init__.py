"""The build pipeline: typed stages, the build's validator and auto-fallback, one report type, one gate path.

``build`` (:mod:`rescompile.pipeline.builder`) runs the stages of :mod:`rescompile.pipeline.stages`
with the settings of :mod:`rescompile.pipeline.settings`; ``validate_candidate``
(:mod:`rescompile.pipeline.check`) is ``rescompile validate``. Both assemble a
:class:`rescompile.pipeline.report.Report` and judge it with :func:`rescompile.pipeline.verdict.judge`.
"""

from __future__ import annotations

from rescompile.buildfolder import ARTIFACTS, ENGINE_ARTIFACTS
from rescompile.pipeline.builder import BuildResult, build, versions
from rescompile.pipeline.validator import validate_models

__all__ = ["ARTIFACTS", "ENGINE_ARTIFACTS", "BuildResult", "build", "validate_models", "versions"]
