"""The house's import rules, read from every module's import statements (top level and inside functions):
no module imports one that imports it back, and nothing on the serving side imports training code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".venv", ".git", "migrations", "notebooks", "node_modules"}
SERVING = {"app", "wsgi", "cli", "worker", "jobs", "reports", "pacs", "config", "storage", "database", "predict",
           "model_loader", "web", "tasks", "imaging", "ops"}
# The one-way flow, outermost first: a module may import those after it, never one before it.
LAYERS = [{"wsgi", "worker"}, {"app", "cli"}, {"web", "ops"}, {"jobs", "reports", "pacs"}, {"predict"}, {"tasks"},
          {"model_loader", "imaging"}]
NOT_FOR_SERVING = {"training", "benchmarks", "tests"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIPPED_DIRS:
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _owner(dotted: str) -> str | None:
    """The project module a dotted name lives in (its longest prefix that is a module), or None."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def imports_of(name: str) -> set[str]:
    """Project modules `name` imports anywhere in its body."""
    path = MODULES[name]
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}".strip(".")
            # `from pkg import sub` depends on pkg.sub when that is a module, else on pkg itself.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        else:
            continue
        deps.update(owner for owner in map(_owner, targets) if owner and owner != name)
    return deps


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_sees_a_cycle_and_a_clean_graph():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_walker_reads_the_project():
    assert {"app", "predict", "model_loader", "web", "tasks", "imaging", "training"} <= set(MODULES)
    assert "model_loader" in GRAPH["predict"] or any(d.startswith("tasks") for d in GRAPH["predict"])


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def _layer(name: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if name.split(".")[0] in layer), None)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) is not None))
def test_imports_run_one_way(name):
    """web -> jobs -> predict -> tasks -> model_loader / imaging: nothing imports a layer outside its own."""
    outward = sorted(d for d in GRAPH[name] if _layer(d) is not None and _layer(d) < _layer(name))
    assert outward == [], f"{name} imports {outward}, which sit above it"


def test_the_layers_are_read():
    assert "jobs" in GRAPH["web.api"] or "jobs" in GRAPH["web.scans"]
    assert "predict" in GRAPH["jobs"] and {"app", "jobs"} <= GRAPH["worker"]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] in SERVING))
def test_serving_code_never_imports_training(name):
    wrong = sorted(d for d in GRAPH[name] if d.split(".")[0] in NOT_FOR_SERVING)
    assert wrong == [], f"{name} imports {wrong}"


def test_tasks_import_neither_flask_nor_tensorflow():
    """Task code never touches Flask, and scanning the tasks stays cheap (TensorFlow loads on first use)."""
    probe = ("import sys, tasks; tasks.all_tasks(); "
             "print(sorted(m for m in ('flask', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
