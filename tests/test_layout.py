"""The layout rule: one import root, each unit one role, and imports only run downward.

    core  <-  index  <-  ingest
    core  <-  app.answer, app.generators, app.auth  <-  app.web  <-  app.kb  <-  eval  <-  finetune
    bench uses them all but the page

Every ``import`` and ``from ... import`` is read with :mod:`ast`, including the lazy ones inside
functions, so a deferred import cannot hide a wrong-way dependency or a circle. The checks run
on a tree given as an argument, so the tests that prove they can fail plant their wrong-way
import in a temporary copy, never in the source tree.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "kb_chatbot"
#: folder on disk -> the import name it installs as (pyproject's package-dir says the same)
FOLDERS = {"core": "core", "index": "index", "ingest": "ingest", "app": "app", "finetune": "finetune", "eval": "eval"}

#: unit -> the project units it imports (besides itself): exactly what the code does today, so a
#: new dependency is a decision someone makes here, not an accident.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "index": {"core"},
    "ingest": {"core", "index"},
    "app": set(),  # app/__init__.py: a docstring
    "app.generators": {"core"},
    "app.answer": {"core"},
    "app.auth": {"core"},
    "app.web": {"core", "app.auth"},
    "app.kb": {"core", "index", "ingest", "app.answer", "app.generators", "app.auth", "app.web"},
    "eval": {"core", "index", "ingest", "app.answer", "app.generators", "app.auth", "app.kb"},
    "finetune": {"core", "index", "app.answer", "app.generators", "app.kb", "eval"},
    "bench": {"core", "index", "ingest", "app.answer", "app.generators", "app.kb", "app.web", "eval", "finetune"},
}
#: The answer checks: one package, each check its own module, only the verifier combines them.
CHECKS = f"{PKG}.app.answer.checks"


def _unit(module: str) -> str | None:
    """``kb_chatbot.app.web.render`` -> ``app.web``; a module outside the project -> None."""
    if module.startswith("bench."):
        return "bench"
    if not module.startswith(PKG + "."):
        return None
    rest = module[len(PKG) + 1:]
    best = None
    for unit in ALLOWED:
        if rest == unit or rest.startswith(unit + "."):
            best = unit if best is None or len(unit) > len(best) else best
    return best


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == "bench":
        return ".".join(parts)
    return ".".join([PKG, FOLDERS[parts[0]], *parts[1:]])


def _imports(root: Path, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    me = _module_name(root, path)
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
    return out


def _files(root: Path) -> list[Path]:
    return [p for folder in [*FOLDERS, "bench"] for p in (root / folder).rglob("*.py")]


def _graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = {_module_name(root, p): p for p in _files(root)}
    return {name: {m for m in _imports(root, path) if m in modules and m != name} for name, path in modules.items()}


def _wrong_way(root: Path = ROOT) -> list[str]:
    wrong = []
    for mod, deps in _graph(root).items():
        unit = _unit(mod)
        for dep in deps:
            top = _unit(dep)
            if top is not None and top != unit and top not in ALLOWED[unit]:
                wrong.append(f"{mod} imports {dep} ({unit} may import only {sorted(ALLOWED[unit])})")
    return sorted(wrong)


def _bare_imports(root: Path = ROOT) -> list[str]:
    """Imports of the project's folders by their bare names (``import index``): they work only
    with the repository on sys.path and load a second copy of the module."""
    bare = set(FOLDERS) | {"answer", "generators", "web", "kb"}
    out = []
    for p in _files(root) + list((root / "tests").rglob("*.py")):
        for m in _imports(root, p) if p.parts[len(root.parts)] != "tests" else _test_imports(p):
            if m.split(".")[0] in bare:
                out.append(f"{p.relative_to(root)} imports {m}")
    return sorted(out)


def _test_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
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
    return circles


def test_imports_follow_the_layer_rule():
    assert not _wrong_way(), "\n".join(_wrong_way())


def test_the_map_is_no_looser_than_the_code():
    """Every allowed dependency is used: a stale entry would let the next wrong-way import in."""
    used: dict[str, set[str]] = {u: set() for u in ALLOWED}
    for mod, deps in _graph().items():
        for dep in deps:
            if _unit(dep) != _unit(mod):
                used[_unit(mod)].add(_unit(dep))
    loose = {u: sorted(ALLOWED[u] - used[u]) for u in ALLOWED if ALLOWED[u] - used[u]}
    assert not loose, f"allowed but unused (tighten ALLOWED): {loose}"


def test_no_import_circles():
    assert not _circles(_graph()), f"import circles: {_circles(_graph())}"


def test_no_bare_package_imports():
    assert not _bare_imports(), "\n".join(_bare_imports())


def test_checks_are_combined_only_by_the_verifier():
    """Outside the checks package, the service and the writer use the package's interface
    (``kb_chatbot.app.answer.checks``), never one check's module directly, except the tests."""
    direct = []
    for mod, deps in _graph().items():
        if mod.startswith(CHECKS) or _unit(mod) in ("eval", "bench", "finetune"):
            continue
        direct += [f"{mod} imports {d}" for d in deps if d.startswith(CHECKS + ".")]
    assert not direct, "\n".join(direct)


@pytest.fixture()
def tree_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "tree"
    for folder in [*FOLDERS, "bench", "tests"]:
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_checker_fails_on_a_planted_wrong_way_import(tree_copy: Path):
    """The checker can fail: a lazy import of the chat page from core, in a copy of the tree."""
    (tree_copy / "core" / "_probe.py").write_text("def f():\n    from kb_chatbot.app.web.app import build_app\n")
    wrong = _wrong_way(tree_copy)
    assert wrong == [f"{PKG}.core._probe imports {PKG}.app.web.app (core may import only [])"]
    (tree_copy / "app" / "answer" / "_probe.py").write_text("from kb_chatbot.app.kb import services\n")
    assert any("app.answer._probe imports kb_chatbot.app.kb" in w for w in _wrong_way(tree_copy))


def test_checker_fails_on_a_planted_bare_import_and_circle(tree_copy: Path):
    (tree_copy / "index" / "_probe.py").write_text("import core.types\n")
    assert "index/_probe.py imports core.types" in _bare_imports(tree_copy)
    (tree_copy / "index" / "_a.py").write_text("from kb_chatbot.index import _b\n")
    (tree_copy / "index" / "_b.py").write_text("def f():\n    from kb_chatbot.index import _a\n")
    assert [f"{PKG}.index._a", f"{PKG}.index._b"] in _circles(_graph(tree_copy))


def test_pyproject_installs_every_package_under_one_root():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {v: k for k, v in cfg["package-dir"].items()}
    assert mapped == {folder: f"{PKG}.{name}" for folder, name in FOLDERS.items()}
    on_disk = sorted(_module_name(ROOT, p) for folder in FOLDERS for p in (ROOT / folder).rglob("__init__.py"))
    assert sorted(cfg["packages"]) == on_disk, "pyproject.toml [tool.setuptools] packages lists every package"
    assert all(p.startswith(PKG + ".") for p in cfg["packages"])


def test_installed_root_is_the_only_import_name(tmp_path: Path):
    """From outside the repository, the venv knows ``kb_chatbot`` and none of the folders' names."""
    probe = ("import importlib.util, sys\n"
             f"missing = [n for n in {sorted(set(FOLDERS) | {'answer', 'generators', 'web', 'kb'})!r}"
             " if importlib.util.find_spec(n) is not None]\n"
             "import kb_chatbot.core.types, kb_chatbot.app.answer, kb_chatbot.eval\n"
             "print(missing)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importable outside the repository: {out.stdout}"
