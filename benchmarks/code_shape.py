"""The shape of the code: the widest signatures and the longest functions of a package, read with ``ast``.

A signature's width counts every parameter but ``self``/``cls`` (positional, keyword-only, ``*args``, ``**kwargs``);
a function's length is its lines from ``def`` to its last statement (decorators and docstring included).

    python benchmarks/code_shape.py                 # rescompile/, the top 10 of each
    python benchmarks/code_shape.py rescompile -n 5
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Function:
    where: str  # path:line
    name: str
    params: int
    lines: int


def functions(root: Path) -> list[Function]:
    """Every function and method under ``root`` (nested ones too)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            a = node.args
            names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)] + [p.arg for p in (a.vararg, a.kwarg) if p is not None]
            params = len([n for n in names if n not in ("self", "cls")])
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            out.append(Function(f"{path}:{node.lineno}", node.name, params, (node.end_lineno or node.lineno) - first + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="rescompile", type=Path)
    parser.add_argument("-n", type=int, default=10, help="how many of each to show")
    args = parser.parse_args()
    found = functions(args.root)
    print(f"widest signatures (parameters) under {args.root}/:")
    for f in sorted(found, key=lambda f: (-f.params, f.where))[: args.n]:
        print(f"  {f.params:3d}  {f.name}  {f.where}")
    print(f"longest functions (lines) under {args.root}/:")
    for f in sorted(found, key=lambda f: (-f.lines, f.where))[: args.n]:
        print(f"  {f.lines:3d}  {f.name}  {f.where}")


if __name__ == "__main__":
    main()
