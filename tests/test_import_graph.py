"""The project's modules import each other without cycles, counting imports inside functions too (a lazy
import that closes a cycle is still a cycle: each module then needs the other to be imported first)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("finetune", "dataset_scripts")


def project_modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (`from pkg import submodule` included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {target for target in targets if target in modules and target != name}
    return found


def import_cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    modules = project_modules()
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return sorted(cycles)


def test_the_finder_sees_a_cycle_closed_by_a_lazy_import(tmp_path):
    """`imported_modules` counts an import inside a function, the kind that hid config <-> config_cli."""
    path = tmp_path / "a.py"
    path.write_text("import finetune.b\n\ndef f():\n    from finetune import c\n", encoding="utf-8")
    assert imported_modules("finetune.a", path, {"finetune.b": path, "finetune.c": path}) == {"finetune.b", "finetune.c"}


def test_the_configuration_modules_are_in_no_import_cycle():
    involved = [cycle for cycle in import_cycles() if any(m.startswith("finetune.config") for m in cycle)]
    assert involved == []


# The other cycle of issue #20 (finetune.inference.predictor <-> finetune.predictor_options) is broken on
# another branch; strict: once it is merged this test passes, the xfail fails, and the marker must go.
@pytest.mark.xfail(strict=True, reason="predictor <-> predictor_options, fixed on another branch (issue #20)")
def test_no_import_cycles():
    assert import_cycles() == []
