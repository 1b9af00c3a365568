"""The layout rule: each top-level package is one role, and imports only run downward.

    core  <-  index  <-  ingest
    core, index  <-  answer, generators  <-  web  <-  kb  <-  eval, finetune, bench

Every ``import`` and ``from ... import`` is read with :mod:`ast`, including the lazy ones inside
functions, so a deferred import cannot hide a wrong-way dependency or a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "index": {"core"},
    "ingest": {"core", "index"},
    "answer": {"core", "index"},
    "generators": {"core"},
    "web": {"core", "index", "answer", "generators"},
    "kb": {"core", "index", "ingest", "answer", "generators", "web"},
    "eval": {"core", "index", "ingest", "answer", "generators", "web", "kb"},
    "finetune": {"core", "index", "ingest", "answer", "generators", "kb", "eval"},
    "bench": {"core", "index", "ingest", "answer", "generators", "web", "kb", "eval"},
}
PACKAGES = set(ALLOWED)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    me = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import module"
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_imports_follow_the_layer_rule():
    wrong = []
    for mod, deps in _graph().items():
        pkg = mod.split(".")[0]
        for dep in deps:
            top = dep.split(".")[0]
            if top != pkg and top not in ALLOWED[pkg]:
                wrong.append(f"{mod} imports {dep} ({pkg} may import only {sorted(ALLOWED[pkg])})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    # Tarjan's strongly connected components; any component larger than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_rule_checker_sees_lazy_imports(tmp_path):
    """The checker must notice an import hidden inside a function (it can fail)."""
    f = ROOT / "core" / "_layout_probe.py"
    f.write_text("def f():\n    from web.app import build_app\n")
    try:
        wrong = [d for d in _graph()["core._layout_probe"] if d.split(".")[0] not in ALLOWED["core"]]
        assert wrong == ["web.app"] or "web.app" in wrong
    finally:
        f.unlink()
