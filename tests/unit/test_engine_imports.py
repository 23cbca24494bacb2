"""The engine's modules import one another without a cycle, counting imports made only for type
checking: a cycle there is a shared type living in the wrong module (move it to a leaf)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in (ROOT / "processors").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts).removesuffix(".__init__")] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
    # "from package import submodule" depends on the submodule; on the package only for other names
    return submodules + ([base] if len(submodules) < len(node.names) else [])


def import_graph() -> dict[str, set[str]]:
    known = _module_names()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        edges: set[str] = set()

        def visit(body: list[ast.stmt], module: str = module, path: Path = path, edges: set[str] = edges) -> None:
            for node in body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for target in _imported(node, module, path.name == "__init__.py", known):
                        while target and target not in known:
                            target = target.rpartition(".")[0]
                        if target and target != module:
                            edges.add(target)
                elif isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING blocks and import fallbacks count
                    visit(node.body)
                    for handler in getattr(node, "handlers", []):
                        visit(handler.body)
                    visit(node.orelse)

        visit(ast.parse(path.read_text()).body)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                strong(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def test_engine_and_contract_modules_import_no_cycle():
    graph = import_graph()
    assert "processors.runtime._processor" in graph and graph["processors.runtime.agent"]
    engine = [c for c in cycles(graph) if any(m.startswith(("processors.runtime", "processors.contracts")) for m in c)]
    assert engine == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
