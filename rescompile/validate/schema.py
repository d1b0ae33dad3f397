"""The versioned JSON Schemas of report.json and deploy.json, and a check that a document follows one.

The schema ids are spelled here once (:data:`REPORT_SCHEMA`; deploy.json's is
:data:`rescompile.deploy.device.DEPLOY_SCHEMA`). deploy.schema.json refers to report.schema.json
for the sections both share (accuracy, agreement, per-class, gates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rescompile.errors import UsageError, require

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
SCHEMA_PATH = SCHEMAS / "report.schema.json"
DEPLOY_SCHEMA_PATH = SCHEMAS / "deploy.schema.json"
REPORT_SCHEMA = "rescompile.report/1"  # the one spelling of report.json's schema id
SCHEMA_ID = REPORT_SCHEMA


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def schema_errors(report: dict[str, Any], schema: Path = SCHEMA_PATH) -> list[str]:
    """Every way ``report`` breaks the schema (report.json's; ``DEPLOY_SCHEMA_PATH`` for deploy.json),
    as ``path: message`` lines (empty when it validates).

    Raises:
        MissingDependency: the ``jsonschema`` package is not installed (it comes with the dev extra).
    """
    jsonschema = require("jsonschema", extra="dev")
    referencing = require("referencing", extra="dev")
    docs = [load_schema(p) for p in sorted(SCHEMAS.glob("*.schema.json"))]
    registry = referencing.Registry().with_resources((d["$id"], referencing.Resource.from_contents(d)) for d in docs)
    validator = jsonschema.Draft202012Validator(load_schema(schema), registry=registry)
    errors = sorted(validator.iter_errors(json.loads(json.dumps(report, default=str))), key=lambda e: list(e.path))
    return [f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors]


def check_report(report: dict[str, Any], what: str = "report") -> None:
    """Raise UsageError naming the first problems when ``report`` does not follow the schema."""
    errors = schema_errors(report)
    if errors:
        more = f" ... ({len(errors)} problems)" if len(errors) > 5 else ""
        raise UsageError(f"{what} does not follow {SCHEMA_ID}: " + "; ".join(errors[:5]) + more)
