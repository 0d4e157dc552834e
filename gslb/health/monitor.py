"""The health monitor: probes every target on its own schedule and publishes a HealthView.

The probes themselves are gslb.health.probe, the fold and the view gslb.health.view, the
state file gslb.health.state; this is the scheduler and the bookkeeping between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import resource
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import httpx

from gslb.config.model import Check, Target
from gslb.health.probe import ProbeResult, endpoint, needs_client, probe
from gslb.health.state import SavedState, read_state, write_state
from gslb.health.transport import client_key, new_client
from gslb.health.view import (
    NO_PROBE_YET,
    RESTORED,
    FlapState,
    HealthView,
    ProbeStats,
    Status,
    drained_status,
    fold,
)

log = logging.getLogger("gslb.health")


class _Entry:
    """One target's mutable monitor state; touched only from the event loop."""

    __slots__ = ("flap", "stats", "target", "task", "verdict")

    def __init__(self, target: Target, verdict: Status) -> None:
        self.target = target
        self.verdict = verdict  # the probes' verdict, drain aside
        self.flap = FlapState(verdict.up, 0)
        self.stats = ProbeStats()
        self.task: asyncio.Task[None] | None = None


class HealthMonitor:
    """Probes every target on its own schedule and publishes an immutable HealthView.

    Cold start: verdicts saved in `state_file` are restored for targets whose name and
    address match (reason "restored from state file"); the first probes then fold in as
    usual. A target with no saved verdict starts *up* with reason "no probe yet": a fresh
    server answering every data center (a fraction of them wrongly) for one or two seconds
    does less harm than one answering none, or answering from a fallback only. The fold
    starts in the up state, so a target failing its first `fall` probes goes down
    after them (≈2 s with the defaults) and one that passes stays up without a flap.

    Drains are keyed by name only, so a drained data center stays drained when its address
    changes, and they survive restarts through the state file.

    `on_change(view)` is called after every up/down/drain change. Probe statistics
    (`Status.last_*`) are republished in the view at most every `stats_interval` seconds
    without calling on_change; `stats(name)` reads them fresh. `on_probe(target, result,
    lateness)` is called after every probe, e.g. for metrics.

    Several instances (gslb.cluster.votes): `observations` are this instance's own verdicts, drains
    aside; `on_observe()` is called whenever one changes (and when the targets do).
    `set_verdicts()` hands in the cluster's vote, which the view then shows instead of them.
    `probe_source` is the local address probes are sent from (--probe-source).

    At most `max_concurrent_probes` probes run at once (also bounded by half the open-file
    limit); a probe's timeout starts only once it has a slot, so a crowd of hanging
    targets delays other probes rather than failing them. Not thread-safe: call every
    method from the event loop that runs `run()`.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        state_file: Path | None = None,
        on_change: Callable[[HealthView], None] | None = None,
        on_probe: Callable[[Target, ProbeResult, float], None] | None = None,
        max_concurrent_probes: int = 512,
        stats_interval: float = 1.0,
        probe_source: str | None = None,
        on_observe: Callable[[], None] | None = None,
    ) -> None:
        self._state_file = state_file
        self._probe_source = probe_source
        self.on_observe = on_observe
        self._verdicts: Mapping[str, Status] | None = None  # the cluster's vote, when it decides
        self._on_change = on_change
        self._on_probe = on_probe
        self._stats_interval = stats_interval
        soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_nofile != resource.RLIM_INFINITY:
            max_concurrent_probes = max(1, min(max_concurrent_probes, soft_nofile // 2))
        self._max_concurrent = max_concurrent_probes
        self._slots = asyncio.Semaphore(max_concurrent_probes)
        self._clients: dict[tuple[bool, str | None], httpx.AsyncClient] = {}
        self._entries: dict[str, _Entry] = {}
        self._drained: dict[str, float] = {}  # name -> when drained
        self._version = 0
        self._stats_dirty = False
        self._running = False
        self._closed = False
        self._stopped = asyncio.Event()
        self._save_handle: asyncio.Handle | None = None
        self._last_save = 0.0

        saved = read_state(state_file)
        self._drained = dict(saved.drained)
        now = time.time()
        for target in _unique(targets):
            self._entries[target.name] = _Entry(target, saved.verdict(target, now))
        self._view = self._build_view()

    # -- reading ------------------------------------------------------------------------

    @property
    def view(self) -> HealthView:
        return self._view

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(entry.target for entry in self._entries.values())

    @property
    def observations(self) -> Mapping[str, Status]:
        """This instance's own verdict of every target, from its probes alone (no drains)."""
        return MappingProxyType({name: entry.verdict for name, entry in self._entries.items()})

    def set_verdicts(self, verdicts: Mapping[str, Status] | None) -> None:
        """Publish `verdicts` (the cluster's vote, by target name) instead of this instance's
        own observations; a target they leave out, or None for all, keeps its own. Drains
        still win. The version grows only when some target's up/down changes."""
        before = {name: status.up for name, status in self._view.states.items()}
        self._verdicts = verdicts
        view = self._build_view()
        if {name: status.up for name, status in view.states.items()} != before:
            self._changed()
        else:
            self._view = view

    def stats(self, name: str) -> ProbeStats:
        """Fresh probe statistics of target `name`; KeyError if there is no such target."""
        return self._entries[name].stats

    # -- control ------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe until cancelled or closed."""
        if self._closed:
            raise RuntimeError("HealthMonitor is closed")
        if self._running:
            raise RuntimeError("HealthMonitor is already running")
        self._running = True
        try:
            for entry in self._entries.values():
                self._start(entry)
            while not self._stopped.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._stats_interval):
                        await self._stopped.wait()
                if self._stats_dirty:
                    self._stats_dirty = False
                    self._view = self._build_view()
        finally:
            self._running = False
            await self._stop_all()

    def update_targets(self, targets: Sequence[Target]) -> None:
        """Switch to a new target list (config reload).

        A target whose name, address and check are unchanged keeps its verdict, flap count,
        statistics and schedule; any other is new and starts as at a cold start with no
        saved state.
        """
        new = _unique(targets)
        old = self._entries
        entries: dict[str, _Entry] = {}
        now = time.time()
        for target in new:
            entry = old.get(target.name)
            if entry is not None and entry.target == target:
                entries[target.name] = entry
            else:
                entries[target.name] = _Entry(target, Status(True, NO_PROBE_YET, now))
        for name, entry in old.items():
            if entries.get(name) is not entry and entry.task is not None:
                entry.task.cancel()
        self._entries = entries
        if self._running:
            for entry in entries.values():
                if entry.task is None:
                    self._start(entry)
        added = [t.name for t in new if old.get(t.name) is not entries[t.name]]
        removed = [name for name in old if name not in entries]
        if added or removed:
            log.info("health targets updated: %d new or changed, %d removed", len(added), len(removed))
            self._changed()
            self._observed()

    @property
    def drained(self) -> Mapping[str, float]:
        """Every drained name (targets, and others such as VIPs) -> when it was drained."""
        return MappingProxyType(dict(self._drained))

    def drain(self, name: str, *, probed: bool = True, at: float | None = None) -> None:
        """Report `name` down with reason "drained" until undrain(name).

        `name` is a target's; with `probed=False` it may be any name the caller vouches for
        (a VIP, a data center without a check), which the view then lists as drained. `at`:
        when it was drained (default now; another instance's time for a cluster-wide drain).
        """
        entry = self._entries.get(name)
        if entry is None and probed:
            raise KeyError(name)
        if name in self._drained:
            return
        self._drained[name] = time.time() if at is None else at
        log.warning("%s DRAINED", _describe(entry.target) if entry is not None else name)
        self._changed()

    def undrain(self, name: str) -> None:
        entry = self._entries.get(name)
        if self._drained.pop(name, None) is None:
            if entry is None:
                raise KeyError(name)
            return
        if entry is None:
            log.info("%s UNDRAINED", name)
        else:
            # The drain ended now, so the probes' verdict takes over from now.
            entry.verdict = replace(entry.verdict, since=time.time())
            log.info(
                "%s UNDRAINED: %s (%s)",
                _describe(entry.target),
                "UP" if entry.verdict.up else "DOWN",
                entry.verdict.reason,
            )
        self._changed()

    async def close(self) -> None:
        """Stop probing, close the HTTP clients and write the state file."""
        self._closed = True
        self._stopped.set()
        await self._stop_all()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        self._save()

    # -- probing ------------------------------------------------------------------------

    def _start(self, entry: _Entry) -> None:
        entry.task = asyncio.get_running_loop().create_task(self._probe_loop(entry), name=f"health {entry.target.name}")

    async def _stop_all(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for entry in self._entries.values():
            entry.task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe_loop(self, entry: _Entry) -> None:
        """Probe at start + k·interval (+ jitter): rounds never drift, never overlap; a
        round that would start while the previous probe still runs is skipped."""
        check = entry.target.check
        loop = asyncio.get_running_loop()
        interval = max(check.interval, 0.001)
        # A random phase spreads the first round of many targets over one interval.
        start = loop.time() + random.uniform(0, interval)
        k = 0
        while True:
            scheduled = start + k * interval + random.uniform(0, check.jitter * interval)
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._slots:
                lateness = loop.time() - scheduled
                result = await self._probe_once(entry.target)
            if self._entries.get(entry.target.name) is not entry:
                return  # replaced by update_targets while probing
            self._record(entry, result, lateness)
            k = max(k + 1, math.ceil((loop.time() - start) / interval))

    async def _probe_once(self, target: Target) -> ProbeResult:
        try:
            client = self._client(target.check) if needs_client(target.check) else None
        except (OSError, ssl.SSLError) as exc:
            return ProbeResult(False, f"tls: ca_file: {exc}", 0.0)
        try:
            return await probe(target, client, source=self._probe_source)
        except Exception as exc:
            # A bug, not the target's fault; the loop must live on.
            log.debug("probe of %s failed unexpectedly", target.name, exc_info=True)
            return ProbeResult(False, f"error: {type(exc).__name__}", 0.0)

    def _client(self, check: Check) -> httpx.AsyncClient:
        key = client_key(check)
        client = self._clients.get(key)
        if client is None:
            client = new_client(check, max_connections=self._max_concurrent, source=self._probe_source)
            self._clients[key] = client
        return client

    def _record(self, entry: _Entry, result: ProbeResult, lateness: float) -> None:
        target = entry.target
        stats = entry.stats
        if not result.passed and result.result != stats.last_result:
            log.debug("%s probe failed: %s", target.name, result.result)
        entry.stats = ProbeStats(
            probes=stats.probes + 1,
            failures=stats.failures + (not result.passed),
            last_result=result.result,
            last_latency=result.latency,
            last_probe=time.time(),
            last_lateness=lateness,
        )
        self._stats_dirty = True
        if self._on_probe is not None:
            try:
                self._on_probe(target, result, lateness)
            except Exception:
                log.exception("on_probe callback failed")
        flap = fold(entry.flap, result.passed, target.check)
        entry.flap = flap
        verdict = entry.verdict
        if flap.up != verdict.up:
            entry.verdict = Status(flap.up, result.result, time.time())
            if flap.up:
                log.info(
                    "%s UP: %s (%d consecutive successes)",
                    _describe(target),
                    result.result,
                    target.check.rise,
                )
            else:
                log.warning(
                    "%s DOWN: %s (%d consecutive failures)",
                    _describe(target),
                    result.result,
                    target.check.fall,
                )
            if entry.target.name in self._drained or self._verdicts is not None:
                # The published view stays "drained", or the cluster's vote decides (and is
                # asked again by _observed).
                self._save_soon()
            else:
                self._changed()
            self._observed()
        elif verdict.reason in (NO_PROBE_YET, RESTORED) and result.passed == verdict.up:
            # The first probe agreeing with a placeholder verdict gives it a real reason;
            # not an up/down change, so it waits for the next statistics refresh.
            entry.verdict = replace(verdict, reason=result.result)
            self._save_soon()
            self._observed()

    # -- publishing ---------------------------------------------------------------------

    def _observed(self) -> None:
        if self.on_observe is not None:
            try:
                self.on_observe()
            except Exception:
                log.exception("on_observe callback failed")

    def _changed(self) -> None:
        self._version += 1
        self._stats_dirty = False
        self._view = view = self._build_view()
        self._save_soon()
        if self._on_change is not None:
            try:
                self._on_change(view)
            except Exception:
                log.exception("on_change callback failed")

    def _build_view(self) -> HealthView:
        states: dict[str, Status] = {}
        verdicts = self._verdicts or {}
        for name, entry in self._entries.items():
            verdict = verdicts.get(name, entry.verdict)
            drained_at = self._drained.get(name)
            if drained_at is not None:
                verdict = drained_status(drained_at)
            stats = entry.stats
            if stats.probes:
                verdict = replace(
                    verdict,
                    last_result=stats.last_result,
                    last_latency=stats.last_latency,
                    last_probe=stats.last_probe,
                )
            states[name] = verdict
        for name, drained_at in self._drained.items():
            if name not in states:  # a VIP, or a data center that is not probed
                states[name] = drained_status(drained_at)
        return HealthView(self._version, MappingProxyType(states))

    # -- the state file -----------------------------------------------------------------

    def _save_soon(self) -> None:
        """Write the state file soon, at most four times a second, so that a thousand
        targets failing together cost a few writes, not a thousand."""
        if self._state_file is None or self._save_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._save()
            return
        delay = max(0.0, self._last_save + 0.25 - loop.time())
        self._save_handle = loop.call_later(delay, self._save)

    def _save(self) -> None:
        self._save_handle = None
        path = self._state_file
        if path is None:
            return
        with contextlib.suppress(RuntimeError):
            self._last_save = asyncio.get_running_loop().time()
        verdicts = {name: (entry.target.address, entry.verdict) for name, entry in self._entries.items()}
        write_state(path, SavedState(verdicts, dict(self._drained)))


def _unique(targets: Sequence[Target]) -> list[Target]:
    names: set[str] = set()
    for target in targets:
        if target.name in names:
            raise ValueError(f"duplicate health target name {target.name!r}")
        names.add(target.name)
    return list(targets)


def _describe(target: Target) -> str:
    return f"{target.name} ({endpoint(target)} {target.check.kind})"
