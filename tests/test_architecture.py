"""The package's shape: no import cycle, dependencies in one direction (layers -> models -> engine -> tasks -> cli),
and every module importable first in a fresh interpreter, whatever the order."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pvtv2

ROOT = Path(pvtv2.__file__).parent
TASKS = ("classification", "detection", "segmentation")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """The pvtv2 modules ``name`` imports (resolved to module names; ``from pkg import mod`` counts as ``pkg.mod``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            if c in MODULES and c != name:
                found.add(c)
                break
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle_at_module_level() -> None:
    graph = {m: _imports(m, p, top_level_only=True) for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages work; a cycle is anything else
    for m in graph:
        graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") and MODULES[d].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# What each part may not import, anywhere in its code (function-level imports included).
FORBIDDEN = {
    "layers": {"models", "weights", "data", "engine", *TASKS, "cli", "analysis", "export", "bench", "runtime"},
    "models": {"data", "engine", *TASKS, "cli", "analysis", "bench"},
    "weights": {"models", "layers", "data", "engine", *TASKS, "cli"},
    "data": {"layers", "models", "engine", *TASKS, "cli"},
    "engine": {*TASKS, "cli", "data", "models", "layers"},
    "classification": {"detection", "segmentation", "cli"},
    "detection": {"classification", "segmentation", "cli"},
    "segmentation": {"classification", "detection", "cli"},
    "serve": {"cli"},  # the web page: uses the tasks and analysis; only the cli imports it (test below)
    # the mmcv-convention counting rules and complexity tables: read by the tasks (cost forwards, flops), never above
    "analysis": {"data", "engine", *TASKS, "cli", "serve", "bench"},
}

# What a task may import besides itself: the "may import" column of docs/architecture.md, word for word. analysis is
# there because the detectors' cost forwards count with its mmcv rules (analysis.counting.unseen_by_mmcv) and each
# task's complexity table calls analysis.complexity.
TASK_MAY_IMPORT = {"models", "weights", "engine", "data", "analysis", "export", "runtime", "_io", "errors"}


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_dependencies_point_one_way(part: str) -> None:
    bad = [f"{m} imports {d}" for m, p in MODULES.items() if _layer(m) == part
           for d in _imports(m, p, top_level_only=False) if _layer(d) in FORBIDDEN[part]]
    assert not bad, bad


@pytest.mark.parametrize("task", TASKS)
def test_tasks_import_only_what_the_architecture_doc_lists(task: str) -> None:
    bad = [f"{m} imports {d}" for m, p in MODULES.items() if _layer(m) == task
           for d in _imports(m, p, top_level_only=False) if _layer(d) not in TASK_MAY_IMPORT | {task}]
    assert not bad, bad
    row = next(line for line in (Path(__file__).parents[1] / "docs/architecture.md").read_text().splitlines()
               if line.startswith("| `classification/`"))
    listed = {w.strip("`/ ") for w in row.rsplit("|", 2)[1].split(",")}
    assert listed == TASK_MAY_IMPORT, listed


def test_nothing_imports_the_command_line() -> None:
    bad = [f"{m} imports {d}" for m, p in MODULES.items() if _layer(m) not in ("cli", "__main__")
           for d in _imports(m, p, top_level_only=False) if _layer(d) == "cli"]
    assert not bad, bad


def test_only_the_command_line_imports_serve() -> None:
    bad = [f"{m} imports {d}" for m, p in MODULES.items() if _layer(m) not in ("cli", "serve")
           for d in _imports(m, p, top_level_only=False) if _layer(d) == "serve"]
    assert not bad, bad


@pytest.mark.parametrize("order", ["sorted", "reversed"])
def test_every_module_imports_first_in_a_fresh_interpreter(order: str) -> None:
    """One interpreter per order: each module is imported before or after its neighbours, never half-initialised."""
    names = sorted(m for m in MODULES if not m.endswith("__main__"))
    if order == "reversed":
        names.reverse()
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\nprint(len(sys.argv) - 1)"
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) == len(names)
