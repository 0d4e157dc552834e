"""What the operator's surface reads of a running server, and the commands it may give.

gslb.control's Control satisfies both protocols; metrics and the web endpoint depend on them
alone, so the operations layer sits below the app that wires it (imports point down).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gslb.cluster.votes import Record, Vote
    from gslb.config.model import Target
    from gslb.dns.server import ListenAddress
    from gslb.dns.state import Counters
    from gslb.health.view import HealthView, ProbeStats
    from gslb.snapshot import Snapshot
    from gslb.steering.spill import SpillView


class ProbesView(Protocol):
    """The health monitor as the surface reads it (gslb.health.monitor.HealthMonitor fits)."""

    @property
    def view(self) -> HealthView: ...

    @property
    def targets(self) -> tuple[Target, ...]: ...

    @property
    def drained(self) -> Mapping[str, float]: ...

    def stats(self, name: str) -> ProbeStats: ...


class ClusterView(Protocol):
    """This instance's part in a cluster, read only (gslb.cluster.member.Cluster fits)."""

    @property
    def instance(self) -> str: ...

    @property
    def etcd_up(self) -> bool: ...

    @property
    def peers(self) -> Mapping[str, Record]: ...

    @property
    def votes(self) -> Mapping[str, Vote]: ...

    def status(self) -> dict[str, Any]: ...

    def datacenter(self, name: str) -> dict[str, Any]: ...


class LoadView(Protocol):
    """The load sources, read only (gslb.health.load.LoadPoller fits)."""

    @property
    def view(self) -> SpillView: ...

    def status(self) -> dict[str, dict[str, Any]]: ...


class Settings(Protocol):
    """The options the surface shows (gslb.control.Options fits)."""

    @property
    def workers(self) -> int: ...  # 0: one process answers itself

    @property
    def probes(self) -> bool: ...


class Exposition(Protocol):
    """The /metrics text (gslb.ops.metrics.Metrics fits)."""

    def exposition(self) -> bytes: ...


class ControlView(Protocol):
    """A running server, read only: its snapshot, health, counters and history."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def monitor(self) -> ProbesView: ...

    @property
    def cluster(self) -> ClusterView | None: ...

    @property
    def load(self) -> LoadView: ...

    @property
    def metrics(self) -> Exposition: ...

    @property
    def options(self) -> Settings: ...

    @property
    def reloads(self) -> Mapping[str, int]: ...  # "ok" and "failed" -> count

    @property
    def last_reload_error(self) -> Sequence[str]: ...

    @property
    def started(self) -> float: ...  # time.time() at start

    @property
    def bound(self) -> Sequence[ListenAddress]: ...  # the DNS listen addresses, as bound

    def counters(self) -> Counters: ...


class ControlCommands(Protocol):
    """The admin actions: drain and undrain (True/False: shared through etcd or not yet; None:
    no cluster), and reload (False: the old snapshot keeps serving)."""

    async def drain(self, name: str) -> bool | None: ...

    async def undrain(self, name: str) -> bool | None: ...

    async def reload(self, why: str) -> bool: ...
