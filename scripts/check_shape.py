"""Code shape, checked by `make lint`: rooms stay small enough to carry on. The runtime has no module over 350
lines and no class over 25 methods; the HTTP adapter no module over 300 lines; no function anywhere in the two
programs is over 60 lines."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "orchestrator" / "overhaul", ROOT / "agent" / "overhaul_agent"]
MODULE_LIMITS = {("overhaul", "runtime"): 350, ("overhaul", "adapters", "http"): 300}
MAX_CLASS_METHODS = {("overhaul", "runtime"): 25}
MAX_FUNCTION_LINES = 60


def within(path: Path, parts: tuple[str, ...]) -> bool:
    relative = path.relative_to(ROOT).parts
    return any(relative[i : i + len(parts)] == parts for i in range(len(relative)))


def problems(path: Path) -> list[str]:
    found = []
    source = path.read_text(encoding="utf-8")
    lines = source.count("\n")
    for parts, limit in MODULE_LIMITS.items():
        if within(path, parts) and lines > limit:
            found.append(f"{path}: {lines} lines (at most {limit} in {'/'.join(parts)})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION_LINES})")
        if isinstance(node, ast.ClassDef):
            methods = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in node.body)
            for parts, limit in MAX_CLASS_METHODS.items():
                if within(path, parts) and methods > limit:
                    found.append(f"{path}:{node.lineno}: class {node.name} has {methods} methods (at most {limit})")
    return found


def main() -> int:
    found = [p for source in SOURCES for path in sorted(source.rglob("*.py")) for p in problems(path)]
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
