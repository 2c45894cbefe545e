"""The package's rooms and the direction of their imports (README, "Project layout").

Each room of `tuner/` sits on a layer, and a module may import only from its own layer or below:
bottom (errors, paths, config, events, metrics) -> model, data, runtime -> train, infer, export ->
cli, ui, bench. Modules import one another at the top of the file; no import is deferred into a
function to dodge a cycle. The deploy script beside exported models imports nothing of tuner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tuner

PACKAGE = Path(tuner.__file__).parent
LAYERS = {
    "errors": 0, "paths": 0, "config": 0, "events": 0, "metrics": 0, "__init__": 0,
    "model": 1, "data": 1, "runtime": 1,
    "train": 2, "infer": 2, "export": 2,
    "cli": 3, "ui": 3, "bench": 3,
    "__main__": 4,
}
STANDALONE = {"tuner.export.deploy.predict_onnx"}  # copied next to exports; runs without tuner installed


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def tuner_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported tuner module, line, at the top of the file) for every import of a tuner module."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        modules = {_existing_module(name) for name in names if name == "tuner" or name.startswith("tuner.")}
        found += [(module, node.lineno, id(node) in top) for module in sorted(m for m in modules if m)]
    return found


def _existing_module(name: str) -> str | None:
    """The module a dotted name refers to (`tuner.model.resnet.STAGES` -> `tuner.model.resnet`)."""
    parts = name.split(".")
    while parts:
        candidate = PACKAGE.parent.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        edges[module] = {target for target, _, _ in tuner_imports(path) if target != module}
    return edges


def test_every_room_has_a_layer():
    rooms = {room(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(LAYERS), f"rooms without a layer: {sorted(rooms - set(LAYERS))}"


def test_imports_only_point_down_or_sideways():
    upward = [f"{module} ({room(module)}, layer {LAYERS[room(module)]}) imports {target} "
              f"({room(target)}, layer {LAYERS[room(target)]})"
              for module, targets in graph().items() for target in targets
              if LAYERS[room(target)] > LAYERS[room(module)]]
    assert not upward, "\n".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others():
    assert not _cycles(graph())


def test_no_two_rooms_import_each_other():
    rooms: dict[str, set[str]] = {}
    for module, targets in graph().items():
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    assert not _cycles(rooms)


def test_tuner_modules_are_imported_at_the_top_of_files():
    deferred = [f"{module_name(path)}:{line} imports {target} inside a function or block"
                for path in sorted(PACKAGE.rglob("*.py"))
                for target, line, at_top in tuner_imports(path) if not at_top]
    assert not deferred, "\n".join(deferred)


@pytest.mark.parametrize("module", sorted(STANDALONE))
def test_the_deploy_script_imports_nothing_of_tuner(module):
    path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
    assert not tuner_imports(path)
