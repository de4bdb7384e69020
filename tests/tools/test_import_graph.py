"""The tools import each other without cycles, and never the tests: the launcher ``make run`` uses
and the benchmark stand on their own, and the test kit builds on them, not the other way round.

Every import counts, those inside functions too: a cycle hidden in a function still makes two
modules that cannot be understood (or split) one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package: str) -> dict[str, set[str]]:
    """module -> the modules of the project it imports (``from tools import x`` names ``tools.x``)."""
    files = {_module(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m.split(".")[0] in {"tools", "tests"} and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle among the graph's modules, each as the path that closes it."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set()) & set(graph)):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def test_the_tools_have_no_import_cycle() -> None:
    assert cycles(imports("tools")) == []


def test_a_cycle_is_found() -> None:
    graph = {"tools.a": {"tools.b"}, "tools.b": {"tools.c"}, "tools.c": {"tools.a"}, "tools.d": set()}
    assert cycles(graph) == [["tools.a", "tools.b", "tools.c", "tools.a"]]


def test_the_tools_never_import_the_tests() -> None:
    leaks = {m: sorted(d for d in deps if d.startswith("tests")) for m, deps in imports("tools").items()}
    assert {m: d for m, d in leaks.items() if d} == {}
