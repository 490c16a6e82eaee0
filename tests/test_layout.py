"""The pure modules load no database, HTTP or Slack library: checked in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = ("sqlalchemy", "httpx", "aiohttp", "slack_sdk", "slack_bolt")
# The decisions, the alert types, the error family and every Block Kit builder.
PURE_MODULES = (
    "bot.alerts",
    "bot.tasks",
    "bot.errors",
    "bot.stale",
    "bot.blockkit",
    "bot.blocks",
    "bot.notices",
)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    # A fresh interpreter: this test process has every library loaded already.
    probe = f"import sys, {module}; print(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules))"
    done = subprocess.run(  # noqa: S603 - our own interpreter, a fixed probe
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# The product's layers, lowest first. A module imports only from layers below its own (within
# `handlers/` its modules may import each other); the README's "Layout" table says the same.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {"tasks", "errors", "secret", "body", "intent", "inflight", "logs", "gate", "retryafter"}
    ),
    frozenset({"alerts", "config", "blockkit"}),
    frozenset({"blocks", "notices", "stale", "store", "kps", "auth"}),
    frozenset({"listing", "replies", "outbox", "scan"}),
    frozenset({"watcher", "services", "readiness"}),
    frozenset({"handlers"}),
    frozenset({"app"}),
    frozenset({"server", "check"}),
    frozenset({"__main__"}),
)


def _product_imports() -> dict[str, set[str]]:
    """Each product module (handlers/ as one) and the product modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "bot").rglob("*.py")):
        parts = path.relative_to(ROOT / "bot").with_suffix("").parts
        if parts[0] == "sandbox" or parts == ("__init__",):
            continue
        name = parts[0]
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "bot":
                    found.update(alias.name for alias in node.names)
                elif node.module.startswith("bot."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("bot."))
        found.discard(name)
    return graph


def test_every_product_module_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    assert set(_product_imports()) == layered


def test_imports_point_down_the_layers() -> None:
    level = {name: index for index, layer in enumerate(LAYERS) for name in layer}
    upward = [
        f"{module} (layer {level[module]}) imports {used} (layer {level.get(used)})"
        for module, used_set in _product_imports().items()
        for used in sorted(used_set)
        # `sandbox` is imported lazily by __main__ for `python -m bot demo` only.
        if not (module == "__main__" and used == "sandbox")
        and level.get(used, len(LAYERS)) >= level[module]
    ]
    assert upward == []
