"""Load sources: poll each data center's second tier (nginx, HAProxy, a JSON load object) and
feed the spill controller (gslb.steering.spill), which publishes the shares to the answer path."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from gslb.config.model import Config, LoadSource
from gslb.steering.spill import Change, Controller, Sample, SpillView, limits_of, poll_interval

log = logging.getLogger("gslb.load")

FAILURES_FOR_NO_DATA = 2  # failed polls in a row before a source counts as giving no data
BODY_LIMIT = 1 << 20  # bytes read of a stats page


class LoadError(Exception):
    """A load source answered nothing usable; the message says what."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What one poll read: a gauge, or a counter the rate is derived from, and a document's bounds."""

    gauge: float | None = None
    counter: float | None = None  # nginx: the requests counter (requests_per_second)
    target: float | None = None
    max: float | None = None


_STUB = re.compile(
    r"Active connections:\s*(\d+)\s+server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)", re.IGNORECASE
)


def parse_stub_status(text: str, metric: str) -> Reading:
    """nginx's stub_status page: active connections, or the requests counter for a rate."""
    found = _STUB.search(text)
    if found is None:
        raise LoadError("not an nginx stub_status page (no 'Active connections' and request counters)")
    if metric == "active_connections":
        return Reading(gauge=float(found.group(1)))
    return Reading(counter=float(found.group(4)))


def parse_haproxy_csv(text: str, metric: str, proxy: str | None, row: str) -> Reading:
    """HAProxy's stats CSV (`;csv`): `metric` (rate or scur) of the row (pxname, svname); for scur,
    the row's slim is its max."""
    lines = text.lstrip().splitlines()
    if not lines or not lines[0].startswith("# pxname,"):
        raise LoadError("not an HAProxy stats CSV (the first line is not '# pxname,svname,...')")
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    try:
        records = list(reader)
    except csv.Error as exc:
        raise LoadError(f"unreadable HAProxy stats CSV: {exc}") from exc
    for record in records:
        if record.get("pxname") == proxy and record.get("svname") == row:
            value = _number(record.get(metric), f"{proxy}/{row} {metric}")
            if value is None:
                raise LoadError(f"{proxy}/{row} has no {metric} value")
            most = _number(record.get("slim"), f"{proxy}/{row} slim") if metric == "scur" else None
            return Reading(gauge=value, max=most or None)
    raise LoadError(f"no {row} row for {proxy!r} in the HAProxy stats")


def parse_json(text: str) -> Reading:
    """A load object: {"current": N, "target": N, "max": N}; target and max are optional."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past the parser's depth
        raise LoadError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise LoadError(f"expected a JSON object with current, target and max, got {type(document).__name__}")
    current = _number(document.get("current"), "current")
    if current is None:
        raise LoadError('no "current" in the load document')
    target = _number(document.get("target"), "target")
    most = _number(document.get("max"), "max")
    if target == 0 or most == 0:
        raise LoadError("target and max must be above 0")
    return Reading(gauge=current, target=target, max=most)


def _number(value: Any, what: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise LoadError(f"{what}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise LoadError(f"{what}: expected a number, got {value!r}") from exc
    if not math.isfinite(number) or number < 0:
        raise LoadError(f"{what}: expected a number of 0 or more, got {value!r}")
    return number


def parse(source: LoadSource, text: str) -> Reading:
    if source.kind == "nginx":
        return parse_stub_status(text, source.metric)
    if source.kind == "haproxy":
        return parse_haproxy_csv(text, source.metric, source.proxy, source.row)
    return parse_json(text)


def describe(name: str, source: LoadSource) -> str:
    """The log's name for a load source: `eu (nginx http://127.0.2.1:8081/stub_status)`."""
    return f"{name} ({source.kind} {source.url})"


@dataclass
class SourceState:
    """What the poller knows of one load source, for the status page and /metrics."""

    source: LoadSource
    interval: float  # the configured one, raised to the longest TTL of its services
    polls: int = 0
    failures: int = 0  # in a row
    error: str | None = None
    no_data: bool = False
    load: float | None = None
    last_poll: float | None = None  # Unix time
    previous: tuple[float, float] | None = None  # (monotonic time, counter) of the last good poll


class LoadPoller:
    """Polls every data center's load source on the supervisor's loop, beside the health probes.

    A source is never a health check: one that fails counts as no data, which only lowers
    its data center's share (gslb.steering.spill), and one log line says so.
    """

    def __init__(
        self,
        config: Config,
        *,
        is_up: Callable[[str], bool],
        on_change: Callable[[SpillView], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.is_up = is_up
        self.on_change = on_change
        self.clock = clock
        self.controller = Controller(limits_of(config))
        self.config = config
        self.sources: dict[str, SourceState] = {}
        self._reconfigured = asyncio.Event()
        self._set_sources(config)

    @property
    def view(self) -> SpillView:
        return self.controller.view

    def _set_sources(self, config: Config) -> None:
        sources: dict[str, SourceState] = {}
        for name, datacenter in config.datacenters.items():
            if datacenter.load is None:
                continue
            interval = poll_interval(config, name)[0]
            old = self.sources.get(name)
            if old is not None and old.source == datacenter.load and old.interval == interval:
                sources[name] = old
            else:
                sources[name] = SourceState(datacenter.load, interval)
        self.sources = sources

    def update(self, config: Config) -> None:
        """A reload: poll what the new configuration names, keep the shares of what stays."""
        self.config = config
        self._set_sources(config)
        for change in self.controller.reconfigure(limits_of(config)):
            self._log(change)
        self.on_change(self.view)
        self._reconfigured.set()

    async def run(self) -> None:
        while True:
            self._reconfigured.clear()
            tasks = [
                asyncio.create_task(self._poll(name, state), name=f"load {name}")
                for name, state in self.sources.items()
            ]
            try:
                await self._reconfigured.wait()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self, name: str, state: SourceState) -> None:
        source = state.source
        async with httpx.AsyncClient(timeout=source.timeout, trust_env=False, follow_redirects=False) as client:
            due = self.clock()
            while True:
                try:
                    await self.poll_once(name, state, client)
                except Exception:  # a bug must not end the polling; the share keeps its damping
                    log.exception("load source %s: unexpected error", describe(name, source))
                due += state.interval
                now = self.clock()
                if due < now:  # late (a stalled loop): the next poll one interval from now
                    due = now + state.interval
                await asyncio.sleep(due - now)

    async def poll_once(self, name: str, state: SourceState, client: httpx.AsyncClient) -> Change | None:
        """One poll of `name`'s source: read it, fold it into a sample, let the controller step."""
        source = state.source
        started = self.clock()
        state.polls += 1
        state.last_poll = time.time()
        try:
            reading = parse(source, await _fetch(client, source.url))
        except LoadError as exc:
            return self._failed(name, state, str(exc))
        except (httpx.HTTPError, OSError) as exc:
            return self._failed(name, state, _reason(exc))
        now = self.clock()
        if state.no_data:
            log.info("load source %s reports again", describe(name, source))
        state.failures, state.error, state.no_data = 0, None, False
        if reading.counter is not None:
            previous = state.previous
            state.previous = (now, reading.counter)
            # The page's own request is in the counter: one per poll, not the clients'.
            if previous is None or reading.counter < previous[1] or now <= previous[0]:
                return None  # the first poll, or a restarted balancer: a rate needs two readings
            value = max(0.0, reading.counter - previous[1] - 1) / (now - previous[0])
            sample = Sample(value, previous[0], now, reading.target, reading.max)
        else:
            assert reading.gauge is not None
            value = reading.gauge
            sample = Sample(value, started, now, reading.target, reading.max)
        state.load = value
        return self._observe(name, sample, now)

    def _failed(self, name: str, state: SourceState, reason: str) -> Change | None:
        state.failures += 1
        state.error = reason
        state.previous = None
        if state.failures < FAILURES_FOR_NO_DATA:
            return None
        now = self.clock()
        if not state.no_data:
            state.no_data = True
            state.load = None
            log.warning(
                "load source %s gives no data (%d failed polls, last: %s): its spill share returns to 0 at "
                "the damped rate; health alone decides whether it is up",
                describe(name, state.source),
                state.failures,
                reason,
            )
        return self._observe(name, Sample(None, now, now), now)

    def _observe(self, name: str, sample: Sample, now: float) -> Change | None:
        before = self.controller.view
        up = [n for n in self.config.datacenters if self.is_up(n)]
        change = self.controller.observe(name, sample, now, up)
        if change is not None:
            self._log(change)
        if self.controller.view is not before:
            self.on_change(self.controller.view)
        return change

    def _log(self, change: Change) -> None:
        source = self.sources.get(change.datacenter)
        metric = source.source.metric if source is not None else "load"
        load = "no data" if change.load is None else f"{change.load:.1f} {metric}"
        log.info(
            "spill %s: share %.0f%% -> %.0f%% of its clients to their next choice (load %s; %s)",
            change.datacenter,
            change.before * 100,
            change.after * 100,
            load,
            change.why,
        )

    def status(self) -> dict[str, dict[str, Any]]:
        """Per data center with a load source: what it reports against its target, and the share."""
        out: dict[str, dict[str, Any]] = {}
        view = self.controller.view
        for name, state in self.sources.items():
            target, most = self.controller.bounds(name) if name in self.controller.limits else (None, None)
            source = state.source
            out[name] = {
                "kind": source.kind,
                "url": source.url,
                "metric": source.metric,
                "interval": state.interval,
                "interval_raised": state.interval > source.interval,
                "load": None if state.load is None else round(state.load, 2),
                "target": target,
                "max": most,
                "share": round(view.share(name), 4),
                "full": name in view.full,
                "why": view.why.get(name),
                "state": "no data" if state.no_data else ("ok" if state.load is not None else "waiting"),
                "error": state.error,
                "polls": state.polls,
                "last_poll": state.last_poll,
            }
        return out


async def _fetch(client: httpx.AsyncClient, url: str) -> str:
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise LoadError(f"status {response.status_code}")
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > BODY_LIMIT:
                raise LoadError(f"the page is larger than {BODY_LIMIT} bytes")
    return body.decode("utf-8", errors="replace")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return f"connect: {exc}" if str(exc) else "connect error"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
