"""Every placement rule code the code cites (R*, O*, G*) is defined in docs/placement-rules.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One-digit codes: "R36" (a Jetson L4T release in engine/device.py) is not a rule.
CODE = re.compile(r"\b([ROG][1-9])\b")


def _cited() -> dict[str, str]:
    cited: dict[str, str] = {}
    for path in sorted((ROOT / "rescompile").rglob("*.py")):
        for code in CODE.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(code, str(path.relative_to(ROOT)))
    return cited


def test_every_cited_rule_code_is_defined_in_the_docs() -> None:
    doc = (ROOT / "docs" / "placement-rules.md").read_text(encoding="utf-8")
    defined = set(re.findall(r"^- \*\*([ROG][1-9])\*\*", doc, flags=re.M))
    cited = _cited()
    assert {"R4", "R5", "O4", "G1"} <= set(cited)  # the scan really reads the code
    missing = {c: where for c, where in cited.items() if c not in defined}
    assert not missing, f"rule codes cited but not defined in docs/placement-rules.md: {missing}"


def test_every_policy_rule_text_names_a_defined_code() -> None:
    from rescompile.quantize.registry import all_policies

    doc = (ROOT / "docs" / "placement-rules.md").read_text(encoding="utf-8")
    for policy in all_policies():
        for code in policy.rules:
            assert f"**{code}**" in doc, f"{policy.name} cites {code}, not defined in docs/placement-rules.md"
