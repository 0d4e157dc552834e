"""The house rules, read from the source: imports point down the layers, the pure core does no I/O."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

GSLB = ROOT / "gslb"

# Top to bottom: a module imports only modules of the layers below its own (README, "How the
# code is laid out"). A new module needs a place here, which is the point.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli",),  # the command; the only module that prints
    ("app",),  # lifecycle: supervisor, workers, reload, signals
    ("web",),  # the operator's surface: status page, JSON API, admin
    ("metrics",),
    ("logs", "explain"),
    ("cluster",),  # several instances: observations and votes through etcd
    ("etcd",),
    ("server", "watch"),  # I/O: UDP/TCP framing; what changed on disk
    ("answer",),  # bytes -> bytes
    ("snapshot",),  # zones + config + compiled tables, built whole
    ("cookies", "rrl"),
    ("health",),  # probes, anti-flap fold, health view, state file
    # The pure core: plain data and functions of it, no sockets, no event loop.
    ("ranks",),
    ("geotable", "policy"),
    ("zones",),
    ("masterfile",),
    ("config",),
    ("inputs", "geo", "wire"),
]
PURE = {"ranks", "geotable", "policy", "zones", "masterfile", "config", "inputs", "geo", "wire"}
# (socket is allowed: the zone reader packs addresses with inet_pton, which does no I/O.)
IO_MODULES = {"asyncio", "httpx", "httpcore", "ssl", "threading", "selectors", "http", "urllib"}


def _imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (not under TYPE_CHECKING, not inside functions)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "gslb":
                    found.update(f"gslb.{alias.name}" for alias in node.names)
                else:
                    found.add(node.module)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


MODULES = {path.stem: _imports(path) for path in sorted(GSLB.glob("*.py")) if path.stem != "__init__"}
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYER_OF)) == [], "place the new module in LAYERS"
    assert sorted(set(LAYER_OF) - set(MODULES)) == [], "a module in LAYERS is gone"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = LAYER_OF[module]
    upward = sorted(
        target for target in (name.removeprefix("gslb.") for name in MODULES[module] if name.startswith("gslb."))
        if target in LAYER_OF and LAYER_OF[target] <= mine
    )
    assert upward == [], f"gslb.{module} imports {upward}: same layer or above"


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_pure_core_does_no_io(module: str) -> None:
    io = sorted(name for name in MODULES[module] if name.split(".")[0] in IO_MODULES)
    assert io == [], f"gslb.{module} imports {io}"


def test_the_policy_loads_without_the_prober() -> None:
    # What `python -X importtime -c "import gslb.ranks"` shows: no httpx, asyncio or ssl.
    code = ("import sys, gslb.policy, gslb.ranks, gslb.snapshot; "
            "print(' '.join(sorted(m for m in ('httpx', 'httpcore', 'asyncio', 'ssl', 'gslb.health') "
            "if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
