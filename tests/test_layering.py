"""The layering rule of the codebase, enforced by reading every module's imports (ast).

Lowest layer first; a module imports only from its own layer or lower ones:

    0 utilities      corr.errors, corr.io, corr.runtime, corr.cli, corr.geometry
    1 data           datasets.*
    2 models, losses corr.* (encoders, graph, losses, warps, global match, flow tracking, adaptation)
    3 training       corr.train.*
    4 propagation    propagate.* (config, propagator, dense, labels, metrics, cache, visualize)
    5 tasks, runner  propagate.tasks.*, propagate.run and what tasks and runner share (task, eval_config,
                     encoder_loading, video, sweep, run_folder), reports of runs (propagate.report.*);
                     propagate.track, the video API, which the package ``propagate`` itself exports
    6 entry points   train, evaluate

There is no import cycle between modules, and project modules are imported at the top of a
module, never inside a function (optional third-party dependencies may be).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("corr", "datasets", "propagate")
RUN_MODULES = ("propagate.run", "propagate.run_folder", "propagate.task", "propagate.eval_config",
               "propagate.encoder_loading", "propagate.video", "propagate.sweep", "propagate.track")
LAYER_NAMES = ("utilities", "data", "models and losses", "training", "propagation", "tasks and runner",
               "entry points")


def layer_of(module: str) -> int:
    """The layer of a project module (dotted name)."""
    if module in ("train", "evaluate"):
        return 6
    if module in RUN_MODULES or module == "propagate" or module.split(".")[:2] in (["propagate", "tasks"],
                                                                                  ["propagate", "report"]):
        return 5
    if module == "propagate" or module.startswith("propagate."):
        return 4
    if module == "corr.train" or module.startswith("corr.train."):
        return 3
    if module in ("corr.errors", "corr.io", "corr.runtime", "corr.cli", "corr.geometry"):
        return 0
    if module == "datasets" or module.startswith("datasets."):
        return 1
    if module == "corr" or module.startswith("corr."):
        return 2
    raise AssertionError(f"{module} is not placed in a layer")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for the packages and the entry points."""
    modules = {"train": REPO / "train.py", "evaluate": REPO / "evaluate.py"}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = project_modules()


def resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement of ``module`` (file ``path``) reaches."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    found = []
    for name in candidates:
        while name and name not in MODULES:   # "corr.losses.walk.WalkLoss" -> the module that defines it
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, child.lineno, in_function) for target in resolve(module, path, child))
            visit(child, nested)

    visit(tree, False)
    return [(target, line, inside) for target, line, inside in found if target != module]


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    violations = []
    for module, targets in GRAPH.items():
        for target, line, _ in targets:
            if layer_of(target) > layer_of(module):
                violations.append(f"{MODULES[module].relative_to(REPO)}:{line}: {module} "
                                  f"({LAYER_NAMES[layer_of(module)]}) imports {target} "
                                  f"({LAYER_NAMES[layer_of(target)]})")
    assert not violations, "\n".join(violations)


def test_project_imports_are_at_the_top_of_modules():
    inside = [f"{MODULES[module].relative_to(REPO)}:{line}: imports {target} inside a function"
              for module, targets in GRAPH.items() for target, line, in_function in targets if in_function]
    assert not inside, "\n".join(inside)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_there_is_no_import_cycle():
    graph = {module: sorted({target for target, _, _ in targets}) for module, targets in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_catch_what_they_are_for():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
    assert layer_of("corr.geometry") < layer_of("datasets.davis") < layer_of("corr.losses.walk") \
        < layer_of("corr.train.loop") < layer_of("propagate.labels") < layer_of("propagate.tasks.davis") \
        < layer_of("evaluate")
    with pytest.raises(AssertionError, match="not placed"):
        layer_of("numpy")
    module = "propagate.tasks.davis"
    node = ast.parse("from ..labels import masks_to_labels").body[0]
    assert resolve(module, REPO / "propagate" / "tasks" / "davis.py", node) == ["propagate.labels"]
