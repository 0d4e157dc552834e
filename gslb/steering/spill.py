"""Spill-over: the share of each data center's clients sent to their next choice, from its load (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from gslb.config.model import Config

__all__ = [
    "GAIN",
    "MAX_STEP",
    "NO_SPILL",
    "Change",
    "Controller",
    "Limits",
    "Sample",
    "SpillView",
    "client_hash",
    "client_network",
    "goals",
    "held_share",
    "limits_of",
    "poll_interval",
]

MAX_STEP: Final = 0.2  # of a data center's clients moved by one change, at most
GAIN: Final = 0.7  # of the way to the share that would meet the goal, per change
DEADBAND: Final = 0.05  # of the goal: a load this close to it changes nothing
SNAP: Final = 0.02  # a share this close to the one wanted is set to it (no endless creeping)
INTERVAL_SLACK: Final = 0.1  # a poll this much of an interval early still counts as the next interval
V4_PREFIX: Final = 24  # the client network hashed (RFC 7871 §11.1: resolvers send /24 and /56)
V6_PREFIX: Final = 56
_WINDOW_POINTS: Final = 8  # samples of the held share over one measurement window


# -- which clients move: a stable hash of the client network -------------------------------


def client_network(version: int, address: int, prefix: int | None = None) -> tuple[int, int]:
    """(prefix length, network as an integer) hashed for a client: the /24 or /56 holding `address`,
    or the ECS source network itself when its `prefix` is shorter."""
    size, limit = (32, V4_PREFIX) if version == 4 else (128, V6_PREFIX)
    bits = limit if prefix is None else max(0, min(prefix, limit))
    shift = size - bits
    return bits, address >> shift << shift


def client_hash(version: int, network: int, bits: int) -> float:
    """A number in [0, 1) for a client network, the same in every process and run.

    A client is spilled while its hash is below the share: as the share grows the set of
    spilled networks only grows, so a network stays where it is while the share moves little.
    splitmix64's finalizer (Python's own hash() of bytes is salted per process).
    """
    x = _mix((network & _M64) ^ ((bits << 8 | version) * 0x9E3779B97F4A7C15 & _M64))
    return _mix(x ^ network >> 64) / 2.0**64


_M64: Final = (1 << 64) - 1


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


# -- what the answer path reads ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpillView:
    """The shares in force: sent to every answering process, read when picking answers."""

    version: int = 0
    shares: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # data center -> 0..1
    full: frozenset[str] = frozenset()  # at or above their max: spilled clients pass them over
    why: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # data center -> the last reason

    def share(self, name: str) -> float:
        return self.shares.get(name, 0.0)


NO_SPILL: Final = SpillView()


# -- limits and intervals from the configuration -------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """One data center's load source as the controller uses it."""

    target: float | None  # None: a json source whose document must say
    max: float | None  # None: 1.5 x target
    interval: float  # seconds between polls and between changes, at least `ttl`
    ttl: float  # the longest TTL of the services it serves: how long resolvers keep an answer


def poll_interval(config: Config, name: str) -> tuple[float, int]:
    """(seconds between polls, the longest TTL of a service of `name`): the configured interval
    raised to that TTL, since resolvers follow a change of share only once their answers expire."""
    source = config.datacenters[name].load
    ttl = max(
        (max(s.ttl, s.ttl_degraded) for s in config.services.values() if name in s.datacenters),
        default=0,
    )
    interval = source.interval if source is not None else 0.0
    return max(interval, float(ttl)), ttl


def limits_of(config: Config) -> dict[str, Limits]:
    out: dict[str, Limits] = {}
    for name, datacenter in config.datacenters.items():
        source = datacenter.load
        if source is not None:
            interval, ttl = poll_interval(config, name)
            out[name] = Limits(source.target, source.max, interval, float(ttl))
    return out


# -- the controller ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One poll of a load source: the load over [start, end] (monotonic seconds), or no data."""

    value: float | None  # None: no data (the source failed twice in a row)
    start: float
    end: float
    target: float | None = None  # a json document's own, which override the configuration's
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a data center's share, for the log."""

    datacenter: str
    before: float
    after: float
    load: float | None
    goal: float | None
    why: str


@dataclass
class _State:
    share: float = 0.0
    changed: float = -math.inf  # when the share last changed
    history: list[tuple[float, float]] = field(default_factory=lambda: [(-math.inf, 0.0)])  # (since, share)
    sample: Sample | None = None


def held_share(history: list[tuple[float, float]], at: float, ttl: float) -> float:
    """The share of clients holding a spilled answer at `at`: answers given over the last `ttl`
    seconds, each under the share in force when given (resolvers re-ask evenly over a TTL)."""
    if ttl <= 0:
        return _share_at(history, at)
    start, total = at - ttl, 0.0
    for i, (since, share) in enumerate(history):
        until = history[i + 1][0] if i + 1 < len(history) else at
        lo, hi = max(since, start), min(until, at)
        if hi > lo:
            total += share * (hi - lo)
    return total / ttl


def _share_at(history: list[tuple[float, float]], at: float) -> float:
    share = 0.0
    for since, value in history:
        if since > at:
            break
        share = value
    return share


def _window_share(history: list[tuple[float, float]], sample: Sample, ttl: float) -> float:
    """The held share averaged over the sample's window (its load came from those clients)."""
    if sample.end <= sample.start:
        return held_share(history, sample.end, ttl)
    width = (sample.end - sample.start) / _WINDOW_POINTS
    points = (sample.start + width * (i + 0.5) for i in range(_WINDOW_POINTS))
    return sum(held_share(history, t, ttl) for t in points) / _WINDOW_POINTS


def goals(loads: Mapping[str, tuple[float, float, float]], up: Iterable[str]) -> dict[str, float]:
    """The load each data center steers to, from {name: (load, target, max)} of those with data.

    Its target while any data center that is up has room (no data counts as room). When every
    one is over target, the excess over the targets is spread in proportion to each one's
    headroom (max - target); past the sum of the maxima, in proportion to the maxima.
    """
    out = {name: target for name, (_, target, _) in loads.items()}
    alive = [name for name in up if name in loads]
    if not alive or len(alive) != len(set(up)) or any(loads[n][0] <= loads[n][1] for n in alive):
        return out
    total = sum(loads[n][0] for n in alive)
    targets = sum(loads[n][1] for n in alive)
    maxima = sum(loads[n][2] for n in alive)
    for name in alive:
        _, target, most = loads[name]
        if total >= maxima:
            out[name] = most * total / maxima
        else:
            out[name] = target + (total - targets) * (most - target) / (maxima - targets)
    return out


class Controller:
    """Damped spill shares from load samples: each step bounded, at most one change per interval.

    The share that would bring a data center to its goal is estimated from its load and the
    share its clients actually held over the measurement window (an answer changes only once
    a resolver's cached one expires); each change goes GAIN of the way there, at most
    MAX_STEP, and only when the load is off the goal by more than DEADBAND; past its max while
    another data center has room, the share goes at once to what brings it under. While a data
    center is down its share is kept (its load says nothing then), so it gets back only the
    clients it had. No data lowers the share to 0 at the damped rate, never at once: a stats
    page that fails beside a saturated balancer must not send every spilled client back in
    one TTL, and a source that recovers midway takes over from where the share is.
    """

    def __init__(self, limits: Mapping[str, Limits]) -> None:
        self.limits = dict(limits)
        self._states: dict[str, _State] = {name: _State() for name in limits}
        self._version = 0
        self.view = NO_SPILL

    def reconfigure(self, limits: Mapping[str, Limits]) -> list[Change]:
        """New limits (a reload): data centers without a load source any more spill nothing."""
        changes = []
        for name in list(self._states):
            if name not in limits:
                state = self._states.pop(name)
                if state.share:
                    changes.append(Change(name, state.share, 0.0, None, None, "no load source any more"))
        for name in limits:
            self._states.setdefault(name, _State())
        self.limits = dict(limits)
        if changes:
            self._publish()
        return changes

    def bounds(self, name: str) -> tuple[float | None, float | None]:
        """(target, max) in force: the latest json document's, else the configuration's."""
        limits, sample = self.limits[name], self._states[name].sample
        target = sample.target if sample is not None and sample.target is not None else limits.target
        most = sample.max if sample is not None and sample.max is not None else limits.max
        if most is None and target is not None:
            most = 1.5 * target
        return target, most

    def history(self, name: str) -> list[tuple[float, float]]:
        """(since, share) of `name`'s recent changes, oldest first."""
        return list(self._states[name].history)

    def observe(self, name: str, sample: Sample, now: float, up: Iterable[str]) -> Change | None:
        """Take one poll of `name`'s source (`up`: the data centers now healthy); the change made, if any."""
        state = self._states.get(name)
        if state is None:
            return None
        state.sample = sample
        up = set(up)
        change = self._step(name, state, sample, now, up)
        if change is not None:
            state.share = change.after
            state.changed = now
            state.history.append((now, change.after))
            # What a window can still reach: the last TTL and a window before it.
            horizon = now - self.limits[name].ttl - 2 * self.limits[name].interval
            while len(state.history) > 2 and state.history[1][0] < horizon:
                state.history.pop(0)
        self._publish(full=self._full(up), why=(name, change))
        return change

    def _step(self, name: str, state: _State, sample: Sample, now: float, up: set[str]) -> Change | None:
        limits = self.limits[name]
        if now - state.changed < limits.interval * (1 - INTERVAL_SLACK):
            return None  # at most one change per interval
        share = state.share
        if sample.value is None:
            if share <= 0:
                return None
            after = max(0.0, share - MAX_STEP)
            return Change(name, share, after, None, None, "no data from the load source: back to 0 at the damped rate")
        if name not in up:
            return None  # down: it gets nothing now, and keeps its share for when it is back
        loads = {}
        for other, st in self._states.items():
            target, most = self.bounds(other)
            if st.sample is not None and st.sample.value is not None and target is not None and most is not None:
                loads[other] = (st.sample.value, target, most)
        if name not in loads:
            return None  # a json source without a target
        load = sample.value
        goal = goals(loads, up)[name]
        if abs(load - goal) <= DEADBAND * goal:
            return None
        held = min(_window_share(state.history, sample, limits.ttl), 0.95)
        demand = load / (1 - held)  # what it would get without spilling
        want = 0.0 if demand <= goal else 1 - goal / demand
        if want == 0.0:
            after = max(0.0, share - MAX_STEP)
        elif abs(want - share) <= SNAP:
            after = want
        else:
            after = share + max(-MAX_STEP, min(MAX_STEP, GAIN * (want - share)))
        most = loads[name][2]
        capped = load > most and goal < most  # past its max while another has room: no damping
        if capped:
            after = max(after, 1 - most / demand)
        after = round(after, 4)
        if after == share:
            return None
        above = "above" if load > goal else "below"
        why = f"load {load:.1f} {above} its goal {goal:.1f}" + (f", past its max {most:g}" if capped else "")
        return Change(name, share, after, load, goal, why)

    def _full(self, up: set[str]) -> frozenset[str]:
        full = set()
        for name, state in self._states.items():
            _, most = self.bounds(name)
            sample = state.sample
            value = sample.value if sample is not None else None
            if name in up and value is not None and most is not None and value >= most:
                full.add(name)
        return frozenset(full)

    def _publish(self, full: frozenset[str] | None = None, why: tuple[str, Change | None] | None = None) -> None:
        shares = {name: state.share for name, state in self._states.items() if state.share > 0}
        reasons = {name: text for name, text in self.view.why.items() if name in shares}
        if why is not None and why[1] is not None and why[0] in shares:
            reasons[why[0]] = why[1].why
        full = self.view.full if full is None else full
        if shares == dict(self.view.shares) and full == self.view.full and reasons == dict(self.view.why):
            return
        self._version += 1
        self.view = SpillView(self._version, MappingProxyType(shares), full, MappingProxyType(reasons))
