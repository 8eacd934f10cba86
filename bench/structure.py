"""The package's structure in figures: module sizes, long functions, import circles.

Run: ``python bench/structure.py [--save]``. Prints ONE JSON object:
``modules``, ``median_lines``, ``max_lines`` (and ``largest``: the five
largest modules), ``over_400`` (modules over 400 lines), ``functions_over_60``
(functions and methods with more than 60 code lines: blank lines, comments
and the docstring not counted), and
``import_cycles``: circles among fedcrm's modules, counting imports inside
functions (they run too) but not those under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path
from typing import Any

from _results import add_save_flag, emit

PKG = Path(__file__).resolve().parents[1] / "fedcrm"


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.AST, module: str, known: set[str]) -> set[str]:
    """fedcrm modules ``module`` imports (outside ``TYPE_CHECKING`` blocks).

    ``from pkg import sub`` imports the submodule ``pkg.sub`` (its package is
    already being imported), not the package's own code.
    """
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: -node.level] if node.level else []
                base = ".".join([*pkg, base] if base else pkg)
            subs = {f"{base}.{a.name}" for a in node.names}
            found.update(subs)
            if not subs <= known:  # names from the module itself, not its submodules
                found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, source: list[str]) -> int:
    """Code lines of a function: not blank, not a comment, not its docstring."""
    skip: set[int] = set()
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        skip = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    end = node.end_lineno or node.lineno
    return sum(
        1
        for i in range(node.lineno, end + 1)
        if i not in skip and source[i - 1].strip() and not source[i - 1].strip().startswith("#")
    )


def measure() -> dict[str, Any]:
    files = sorted(PKG.rglob("*.py"))
    names = {module_name(f): f for f in files}
    lines = {m: len(f.read_text().splitlines()) for m, f in names.items()}
    graph: dict[str, set[str]] = {}
    long_functions = []
    for m, f in names.items():
        text = f.read_text()
        tree = ast.parse(text)
        graph[m] = imports_of(tree, m, set(names))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = function_lines(node, text.splitlines())
                if n > 60:
                    long_functions.append({"function": f"{m}.{node.name}", "lines": n})
    sizes = sorted(lines.values())
    return {
        "modules": len(lines),
        "median_lines": statistics.median(sizes),
        "max_lines": sizes[-1],
        "largest": sorted(lines.items(), key=lambda kv: -kv[1])[:5],
        "over_400": sorted(m for m, n in lines.items() if n > 400),
        "functions_over_60": sorted(long_functions, key=lambda d: -d["lines"]),
        "n_functions_over_60": len(long_functions),
        "import_cycles": cycles(graph),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_save_flag(ap)
    args = ap.parse_args()
    emit("structure", measure(), save=args.save)


if __name__ == "__main__":
    main()
