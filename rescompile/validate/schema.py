"""The versioned JSON Schema of report.json, and a check that a report follows it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rescompile.errors import UsageError, require

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "report.schema.json"
REPORT_SCHEMA = "rescompile.report/1"  # the one spelling of report.json's schema id
SCHEMA_ID = REPORT_SCHEMA


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())  # type: ignore[no-any-return]


def schema_errors(report: dict[str, Any]) -> list[str]:
    """Every way ``report`` breaks the schema, as ``path: message`` lines (empty when it validates).

    Raises:
        MissingDependency: the ``jsonschema`` package is not installed (it comes with the dev extra).
    """
    jsonschema = require("jsonschema", extra="dev")
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(json.loads(json.dumps(report, default=str))), key=lambda e: list(e.path))
    return [f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errors]


def check_report(report: dict[str, Any], what: str = "report") -> None:
    """Raise UsageError naming the first problems when ``report`` does not follow the schema."""
    errors = schema_errors(report)
    if errors:
        more = f" ... ({len(errors)} problems)" if len(errors) > 5 else ""
        raise UsageError(f"{what} does not follow {SCHEMA_ID}: " + "; ".join(errors[:5]) + more)
