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
# code is laid out"). A new module needs a place here, which is the point. Each folder is a run
# of consecutive layers (test_folders_are_layers), so the layout itself shows the house.
LAYERS: list[tuple[str, ...]] = [
    ("__main__",),
    ("cli",),  # the command; the only module that prints
    ("report",),  # what it prints, as text: check, explain, status
    ("app",),  # one process, or a supervisor and its workers
    ("control",),  # what both share: options, sockets, the lifecycle (reload, signals, re-signing)
    ("watch",),  # what changed on disk
    # ops/: the operator's surface
    ("ops.web",),  # status page, JSON API, admin
    ("ops.metrics",),
    ("ops.logs", "ops.explain"),
    ("ops.view",),  # what the surface reads of a running server, and its admin commands (protocols)
    ("ops.http11",),  # one request read with h11 under limits, one response encoded
    # cluster/: several instances, observations and votes through etcd
    ("cluster.member",),  # the session: lease, records written and watched
    ("cluster.votes", "cluster.etcd"),  # the records and the vote; the etcd client
    # health/: probes, anti-flap fold, health view, state file
    ("health.monitor",),  # the scheduler: every target probed on time, folded, the view published
    ("health.load",),  # load sources polled beside the probes, feeding the spill controller
    ("health.probe",),  # one probe of one target (lean plain HTTP, httpx, TCP) and its reason
    ("health.transport", "health.state"),  # httpx on a connection per request; the state file
    ("health.view",),  # Status, HealthView and the anti-flap fold: plain data
    ("snapshot",),  # zones + config + compiled tables, built whole
    # dns/: the DNS core; I/O only frames packets, the answerer is bytes -> bytes
    ("dns.server",),
    ("dns.answer",),  # the answerer: fast path, general path, EDNS, ECS, cookies, RRL
    ("dns.state",),  # what it holds per snapshot and health view: caches, picks, counters
    ("dns.replies",),  # replies encoded once: Entry and the encoders
    ("dns.dnssec",),  # signatures made ahead, signed answers
    ("dns.denial",),  # minimal NSEC (white lies) for NXDOMAIN and NODATA
    ("dns.cookies", "dns.rrl", "dns.zones", "dns.keys"),  # keys: DNSSEC key files
    ("dns.masterfile",),
    ("dns.mastertext",),  # lines, tokens, entries, $GENERATE templates
    ("dns.wire",),
    # The pure core below: plain data and functions of it, no sockets, no event loop.
    # steering/: where each client goes
    ("steering.ranks",),
    ("steering.policy", "steering.spill"),  # spill: damped shares from load, the client hash
    ("steering.rules",),  # the geo map rule for a location, a data center's angles
    # config/: the configuration file as plain data
    ("config.load",),  # TOML -> the model, every problem gathered at its line
    ("config.schema",),  # what each table may hold: key -> converter
    ("config.locate", "config.values"),  # key path -> line; what a value may be, with its messages
    ("config.model",),  # the frozen dataclasses, Problem and ConfigError
    # geo/: places, the database reader, the compiled table
    ("geo.table",),
    ("geo.database",),  # the MMDB reader
    ("geo.places",),  # the location type, distances, special-purpose blocks
    ("inputs",),
]
PURE = {
    "steering.ranks",
    "steering.policy",
    "steering.spill",
    "steering.rules",
    "config.load",
    "config.schema",
    "config.locate",
    "config.values",
    "config.model",
    "geo.table",
    "geo.database",
    "geo.places",
    "inputs",
    "health.view",
    "health.state",
    "ops.view",
    "dns.zones",
    "dns.masterfile",
    "dns.mastertext",
    "dns.wire",
}
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
                found.add(node.module)
                if node.module == "gslb" or node.module.startswith("gslb."):
                    # `from gslb.dns import answer` imports the module gslb.dns.answer
                    found.update(
                        f"{node.module}.{alias.name}"
                        for alias in node.names
                        if f"{node.module}.{alias.name}".removeprefix("gslb.") in NAMES
                    )
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _name(path: Path) -> str:
    return ".".join(path.relative_to(GSLB).with_suffix("").parts)


PATHS = [path for path in sorted(GSLB.rglob("*.py")) if path.stem != "__init__"]
NAMES = {_name(path) for path in PATHS}
MODULES = {_name(path): _imports(path) for path in PATHS}
LAYER_OF = {name: index for index, layer in enumerate(LAYERS) for name in layer}


def test_folders_are_layers() -> None:
    # A folder's modules fill consecutive layers: nothing outside it sits between two of them.
    rows = [{name.split(".")[0] if "." in name else None for name in layer} for layer in LAYERS]
    folders = {folder for row in rows for folder in row if folder}
    for folder in folders:
        where = [index for index, row in enumerate(rows) if folder in row]
        between = [LAYERS[index] for index in range(where[0], where[-1] + 1) if rows[index] != {folder}]
        assert between == [], f"{folder}/ is not one run of layers: {between} sit inside it"


def test_only_the_command_imports_the_app() -> None:
    # Not even for types: the operator's surface reads the app through gslb.ops.view.
    importers = sorted(
        _name(path)
        for path in PATHS
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.ImportFrom) and node.module == "gslb.app")
        or (isinstance(node, ast.ImportFrom) and node.module == "gslb" and any(a.name == "app" for a in node.names))
        or (isinstance(node, ast.Import) and any(a.name == "gslb.app" for a in node.names))
    )
    assert set(importers) <= {"cli", "__main__"}, importers
    users = sorted(
        _name(path) for path in PATHS if "gslb.control" in _imports(path) and _name(path) not in ("app", "cli")
    )
    assert users == [], f"only the app and the command build on gslb.control: {users}"


def test_packages_import_nothing_themselves() -> None:
    # A folder's __init__ is a docstring: importing gslb.dns.wire must not drag in the server.
    for init in sorted(GSLB.rglob("__init__.py")):
        if init.parent != GSLB:
            assert _imports(init) == set(), f"{init.relative_to(ROOT)} imports"


def test_every_module_has_a_layer() -> None:
    assert sorted(set(MODULES) - set(LAYER_OF)) == [], "place the new module in LAYERS"
    assert sorted(set(LAYER_OF) - set(MODULES)) == [], "a module in LAYERS is gone"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = LAYER_OF[module]
    upward = sorted(
        target
        for target in (name.removeprefix("gslb.") for name in MODULES[module] if name.startswith("gslb."))
        if target in LAYER_OF and LAYER_OF[target] <= mine
    )
    assert upward == [], f"gslb.{module} imports {upward}: same layer or above"


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_pure_core_does_no_io(module: str) -> None:
    io = sorted(name for name in MODULES[module] if name.split(".")[0] in IO_MODULES)
    assert io == [], f"gslb.{module} imports {io}"


def test_the_policy_loads_without_the_prober() -> None:
    # What `python -X importtime -c "import gslb.steering.ranks"` shows: no httpx, asyncio or ssl.
    code = (
        "import sys, gslb.steering.policy, gslb.steering.ranks, gslb.snapshot; "
        "print(' '.join(sorted(m for m in ('httpx', 'httpcore', 'asyncio', 'ssl', 'gslb.health.monitor', "
        "'gslb.health.probe') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
