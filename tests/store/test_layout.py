"""The store package's shape: parts that import each other without a cycle, the shared
rules in ``base.py`` (no other store module imports ``memory.py``), and the checkpoint
names kept as stored."""

from __future__ import annotations

import ast
from pathlib import Path

from sync.store.base import (
    BACKFILL_CHECKPOINT_PREFIX,
    BP_ENV_CHECKPOINT_PREFIX,
    HELD_LINKS_CHECKPOINT,
    PERMANENT_ERROR_PREFIX,
)

STORE = Path(__file__).resolve().parents[2] / "sync" / "store"


def _runtime_imports(path: Path) -> set[str]:
    """The ``sync.store`` modules ``path`` imports when it runs (function-level imports
    included, ``if TYPE_CHECKING:`` blocks not)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sync.store":
                # ``from sync.store import tables`` is the submodule, anything else __init__
                for alias in node.names:
                    sub = STORE / f"{alias.name}.py"
                    found.add(f"sync.store.{alias.name}" if sub.is_file() else "sync.store")
            elif node.module.startswith("sync.store."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sync.store"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(STORE.glob("*.py")):
        name = "sync.store" if path.stem == "__init__" else f"sync.store.{path.stem}"
        graph[name] = _runtime_imports(path) - {name}
    return graph


def test_only_the_memory_store_is_the_memory_store() -> None:
    importers = [name for name, deps in _graph().items() if "sync.store.memory" in deps]
    assert importers == []


def test_no_store_module_imports_the_package_itself() -> None:
    importers = [
        name for name, deps in _graph().items() if name != "sync.store" and "sync.store" in deps
    ]
    assert importers == []


def test_the_store_modules_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name in done:
            return
        for dep in sorted(graph.get(name, ())):
            walk(dep, (*path, name))
        done.add(name)

    for name in graph:
        walk(name, ())


def test_checkpoint_names_are_the_stored_ones() -> None:
    # stored names: a change would lose what running deployments remember
    assert BP_ENV_CHECKPOINT_PREFIX == "bp_env:"  # retired: migration 0002 reads it
    assert HELD_LINKS_CHECKPOINT == "held_links"
    assert BACKFILL_CHECKPOINT_PREFIX == "backfill:"


def test_the_permanent_error_prefix_is_the_one_delivery_writes() -> None:
    # stored in ``last_error``: ``open_writes`` tells a dead item refused for good by it
    from sync.executor.delivery import PERMANENT_PREFIX

    assert PERMANENT_ERROR_PREFIX == PERMANENT_PREFIX == "permanent: "
