"""The health view and the anti-flap fold: plain data and a pure function, no I/O.

The probes (gslb.health.probe), the monitor that schedules them and the state file all
produce these; the answer path, the policy and the operator's surface only read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gslb.config.model import Check

# Status reasons the monitor itself assigns (probe failures bring their own).
NO_PROBE_YET = "no probe yet"
RESTORED = "restored from state file"
DRAINED = "drained"


def _empty_states() -> Mapping[str, Status]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Status:
    up: bool
    reason: str  # why it is in this state: "ok", "status 503", "timeout", "drained", …
    since: float  # wall-clock time of the last change (time.time())
    last_result: str = ""  # result of the latest probe
    last_latency: float | None = None  # seconds
    last_probe: float | None = None  # wall-clock time
    drained: bool = False


def drained_status(at: float) -> Status:
    """The status of a name an operator drained at `at`, whatever its probes say."""
    return Status(False, DRAINED, at, drained=True)


@dataclass(frozen=True, slots=True)
class HealthView:
    """Every target's status, immutable and published whole.

    `version` grows on every up/down/drain change and only then; views republished to
    refresh probe statistics keep the version, so a cache keyed by version stays valid.
    """

    version: int = 0
    states: Mapping[str, Status] = field(default_factory=_empty_states)
    # Whether anything is drained: only then does the policy look at each VIP's status
    # (a drained VIP is never answered), which it may skip on the query path otherwise.
    drains: bool = field(init=False, default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "drains", any(s.drained for s in self.states.values()))

    def is_up(self, name: str) -> bool:
        """An unknown name is up: answers must work before any probe ("all up")."""
        status = self.states.get(name)
        return status is None or status.up

    def status(self, name: str) -> Status | None:
        return self.states.get(name)


@dataclass(frozen=True, slots=True)
class ProbeStats:
    """Fresh per-target probe statistics (HealthMonitor.stats)."""

    probes: int = 0
    failures: int = 0
    last_result: str = ""
    last_latency: float | None = None  # seconds
    last_probe: float | None = None  # wall-clock time
    last_lateness: float | None = None  # seconds the probe started after its scheduled time


# --- the anti-flap fold ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlapState:
    up: bool = True
    count: int = 0  # consecutive probe results toward the opposite state


def fold(state: FlapState, passed: bool, check: Check) -> FlapState:
    """Fold one probe result into the verdict.

    Up goes down after `check.fall` consecutive failures; down goes up after `check.rise`
    consecutive successes. A result that agrees with the verdict resets the count.
    """
    if passed == state.up:
        return state if state.count == 0 else FlapState(state.up, 0)
    needed = max(1, check.fall if state.up else check.rise)
    count = state.count + 1
    if count >= needed:
        return FlapState(not state.up, 0)
    return FlapState(state.up, count)
