"""What every way of running shares: the options, the sockets, and Control, the lifecycle.

Control builds nothing itself: it holds the snapshot, the health monitor, the load poller,
the watcher, the cluster session and the operator's surface, reloads on a change or a
signal, re-signs DNSSEC answers before they expire, and stops cleanly. gslb.app runs it as
one process (App) or as a supervisor with forked workers (Supervisor).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gslb.cluster.member import Cluster
from gslb.cluster.votes import default_instance
from gslb.dns.answer import Answerer
from gslb.dns.cookies import shared as shared_cookies
from gslb.dns.server import (
    TCP_IDLE_TIMEOUT,
    TCP_MAX_CONNECTIONS,
    TCP_PRESSURE,
    TCP_PRESSURE_IDLE_TIMEOUT,
    ListenAddress,
    TcpServer,
    UdpServer,
    raise_open_files_limit,
    udp_socket,
)
from gslb.dns.state import Counters
from gslb.health.load import LoadPoller
from gslb.health.monitor import HealthMonitor
from gslb.health.view import HealthView
from gslb.inputs import Inputs
from gslb.ops.metrics import Metrics
from gslb.ops.web import WebServer
from gslb.snapshot import Snapshot, SnapshotError, Sources, build, resign
from gslb.steering.spill import SpillView
from gslb.watch import Watcher

log = logging.getLogger("gslb.app")

COUNTER_INTERVAL = 1.0  # seconds between a worker's counter reports
RESIGN_CHECK = 3600.0  # the longest the DNSSEC re-signing timer sleeps before it looks again
WORKER_START_TIMEOUT = 30.0
OPEN_FILES_SPARE = 64  # open files a process needs beside its TCP connections (sockets, pipes, logs)


@dataclass
class Options:
    sources: Sources
    listen: list[ListenAddress] = field(default_factory=lambda: [ListenAddress("127.0.0.1", 5300)])
    state_file: Path | None = None
    watch: bool = True
    probes: bool = True
    workers: int = 1
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT
    tcp_max_connections: int = TCP_MAX_CONNECTIONS
    http: ListenAddress | None = None  # status page, /metrics and the admin API; None: off
    token: str | None = field(default=None, repr=False)  # for admin actions; None: refused
    query_log: float = 0.0  # share of queries logged (gslb.query); 0: off
    udp_loop: str = "auto"  # auto | compiled | python (see server.udp_loop)
    instance: str | None = None  # this instance's name in [cluster]; None: host name and DNS port
    probe_source: str | None = None  # the local address probes are sent from; None: the system's choice


@dataclass
class Listener:
    """The sockets one process answers on for one listen address."""

    address: ListenAddress
    udp: socket.socket
    tcp: socket.socket


def bind(address: ListenAddress) -> Listener:
    """A UDP and a TCP socket on one port (port 0: a free one, the same for both)."""
    for _ in range(20):
        udp = udp_socket(address)
        port = udp.getsockname()[1]
        tcp = socket.socket(address.family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.family == socket.AF_INET6:
            tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            tcp.bind((address.host, port))
        except OSError:
            udp.close()
            tcp.close()
            if address.port:
                raise
            continue  # the free UDP port was taken for TCP: try another
        tcp.listen(512)
        tcp.setblocking(False)
        return Listener(ListenAddress(address.host, port), udp, tcp)
    raise OSError(f"no port free for both UDP and TCP on {address.host}")


class Listening:
    """The UDP and TCP servers of one process, around one handler."""

    def __init__(
        self,
        handle: Callable[[bytes, str | None, bool], bytes | None],
        options: Options,
        answerer: Answerer | None = None,
    ):
        self.handle = handle
        self.options = options
        self.answerer = answerer  # given: UDP may run the compiled loop over its tables
        self.udp: list[UdpServer] = []
        self.tcp: list[TcpServer] = []

    async def add(self, listener: Listener) -> None:
        udp = UdpServer(listener.udp, self.handle, answerer=self.answerer, loop=self.options.udp_loop)
        tcp = TcpServer(
            self.handle, idle_timeout=self.options.tcp_idle_timeout, max_connections=self.options.tcp_max_connections
        )
        await tcp.start(listener.tcp)
        udp.start()
        self.udp.append(udp)
        self.tcp.append(tcp)

    async def stop(self) -> None:
        for udp in self.udp:
            await asyncio.to_thread(udp.stop)
        for tcp in self.tcp:
            await tcp.stop()


class Control:
    """What one server has whatever its shape: the snapshot, probes, reloads and signals.

    Metrics and the web endpoint see it through gslb.ops.view: ControlView to read, and
    ControlCommands for the admin actions (drain, undrain, reload).
    """

    def __init__(self, options: Options, snapshot: Snapshot):
        self.options = options
        self.snapshot = snapshot
        self.metrics = Metrics(self)
        self.monitor = HealthMonitor(
            snapshot.config.targets(),
            state_file=options.state_file,
            on_change=self.health_changed,
            on_probe=self.metrics.probed,
            probe_source=options.probe_source,
        )
        self.load = LoadPoller(
            snapshot.config, is_up=lambda name: self.monitor.view.is_up(name), on_change=self.spill_changed
        )
        self.cluster: Cluster | None = None  # with [cluster], once serving
        self._cluster_task: asyncio.Task[None] | None = None
        self.reloads = {"ok": 0, "failed": 0}
        if snapshot.config.cookies is not None:  # made before workers fork: they share the secret, one log line
            shared_cookies(snapshot.config.cookies.secrets, snapshot.config.cookies.large_answer_size)
        self.last_reload_error: list[str] = []
        self.bound: list[ListenAddress] = []
        self.started = time.time()
        self.on_reload: list[Callable[[Snapshot], None]] = []
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._inputs = snapshot.inputs  # what the last build read, as it was then: the watcher's
        self._watcher: Watcher | None = None

    # Overridden: where health verdicts and snapshots go.
    def health_changed(self, view: HealthView) -> None:
        raise NotImplementedError

    def spill_changed(self, view: SpillView) -> None:
        raise NotImplementedError

    async def install(self, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def counters(self) -> Counters:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def reload(self, why: str) -> bool:
        """Build a new snapshot off the query path and swap it in whole; keep the old on error."""
        async with self._reload_lock:
            started = time.perf_counter()
            try:
                snapshot = await _build_gently(self.options.sources)
            except SnapshotError as exc:
                self._inputs_replaced(exc.inputs)  # watch what it read: its fix is a change
                self.reloads["failed"] += 1
                self.last_reload_error = exc.problems
                for problem in exc.problems:
                    log.error("reload (%s) failed: %s", why, problem)
                log.error(
                    "reload failed: still serving the data loaded at %s",
                    time.strftime("%H:%M:%S", time.localtime(self.snapshot.loaded_at)),
                )
                return False
            await self.install(snapshot)
            self.snapshot = snapshot
            self._inputs_replaced(snapshot.inputs)
            self.monitor.update_targets(snapshot.config.targets())
            self.load.update(snapshot.config)
            await self._cluster_reloaded(snapshot)
            for hook in self.on_reload:
                hook(snapshot)
            self.reloads["ok"] += 1
            self.last_reload_error = []
            log.info(
                "reloaded (%s): %d zones, %d records, %d services in %.3f s",
                why,
                len(snapshot.zones.zones),
                snapshot.zones.record_count,
                len(snapshot.services),
                time.perf_counter() - started,
            )
            return True

    async def _resign(self) -> None:
        """Make the DNSSEC signatures again before they expire (gslb.dns.dnssec), without reading
        any file: the same snapshot with new signatures, installed as a reload installs one."""
        while True:
            signing = self.snapshot.signing
            wait = RESIGN_CHECK if signing is None else min(RESIGN_CHECK, max(1.0, signing.due - time.time()))
            await asyncio.sleep(wait)
            async with self._reload_lock:
                signing = self.snapshot.signing
                if signing is None or time.time() < signing.due:
                    continue  # a reload signed anew meanwhile
                try:
                    snapshot = await asyncio.to_thread(resign, self.snapshot)
                except Exception:  # the old signatures keep serving; the next try is in RESIGN_CHECK
                    log.exception("DNSSEC: signing again failed (signatures expire %s)", _utc(signing.expiration))
                    snapshot = None
                if snapshot is not None:
                    await self.install(snapshot)
                    self.snapshot = snapshot
                    assert snapshot.signing is not None
                    log.info("DNSSEC: serving the new signatures (valid until %s)", _utc(snapshot.signing.expiration))
            if snapshot is None:
                await asyncio.sleep(RESIGN_CHECK)

    def _inputs_replaced(self, inputs: Inputs) -> None:
        self._inputs = inputs
        if self._watcher is not None:
            self._watcher.wake()  # to watch the new set

    async def _watch(self) -> None:
        """Reload when a file the snapshot was built from changes (gslb.inputs, gslb.watch)."""
        watcher = self._watcher = Watcher()
        inputs = self._inputs
        directories = len(inputs.directories())
        log.info(
            "watching %d input files in %d director%s for changes (%s)",
            len(inputs.files),
            directories,
            "y" if directories == 1 else "ies",
            watcher.mode,
        )
        try:
            while True:
                inputs = self._inputs
                watcher.watch(inputs.directories())
                # Checked after the watches are set: nothing changed since the build read it.
                changed = inputs.changed()
                if not changed:
                    await watcher.wait(inputs)
                    continue
                log.info("changed: %s", _names(changed))
                try:
                    await self.reload("files changed")
                except Exception:
                    log.exception("reload failed")
                if self._inputs is inputs:  # the reload recorded nothing: wait for the next change
                    self._inputs = inputs.refreshed()
        finally:
            self._watcher = None
            watcher.close()

    # -- several instances (gslb.cluster)

    def _start_cluster(self) -> None:
        config = self.snapshot.config.cluster
        if config is None or self.cluster is not None:
            return
        port = self.bound[0].port if self.bound else 0
        self.cluster = Cluster(config, self.options.instance or default_instance(port), self.monitor)
        self.monitor.on_observe = self.cluster.observed
        self._cluster_task = asyncio.create_task(self.cluster.run(), name="cluster")

    async def _cluster_reloaded(self, snapshot: Snapshot) -> None:
        """A new [cluster] table: a new down_quorum applies at once; a new name, etcd or lease
        means leaving (the lease is revoked) and joining again."""
        config, cluster = snapshot.config.cluster, self.cluster
        if cluster is not None and config is not None and cluster.same_membership(config):
            cluster.reconfigure(config)
            return
        if cluster is None or cluster.config != config:
            await self._stop_cluster()
            self._start_cluster()

    async def _stop_cluster(self) -> None:
        cluster, task = self.cluster, self._cluster_task
        if cluster is None or task is None:
            return
        self.cluster = self._cluster_task = None
        self.monitor.on_observe = None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await cluster.close()

    async def drain(self, name: str) -> bool | None:
        """Drain `name` (a data center or a VIP): here, and with [cluster] on every instance.
        True: shared through etcd; False: etcd unreachable, shared once it is back; None: alone."""
        if self.cluster is None:
            self.monitor.drain(name, probed=False)
            return None
        return await self.cluster.drain(name)

    async def undrain(self, name: str) -> bool | None:
        if self.cluster is None:
            self.monitor.undrain(name)
            return None
        return await self.cluster.undrain(name)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_until_stopped(self, extra: list[Callable[[], Any]] | None = None) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
        self._start_cluster()
        tasks = []
        if self.options.probes:
            tasks.append(asyncio.create_task(self.monitor.run()))
            # Load sources beside the probes, on this loop; never a health verdict (gslb.health.load).
            tasks.append(asyncio.create_task(self.load.run(), name="load sources"))
        if self.options.watch:
            tasks.append(asyncio.create_task(self._watch()))
        tasks.append(asyncio.create_task(self._resign(), name="dnssec re-signing"))
        tasks.extend(asyncio.create_task(make()) for make in extra or [])
        web = None
        if self.options.http is not None:
            # The status page, /metrics and the admin API share this loop with probes and
            # reloads (never with UDP answering, which has threads or workers of its own).
            web = WebServer(self, self.options.http, self.options.token, commands=self)
            if await web.start():
                tasks.append(asyncio.create_task(web.sample()))
        log.info("serving %d zones, %d services", len(self.snapshot.zones.zones), len(self.snapshot.services))
        await self._stop.wait()
        log.info("stopping")
        if web is not None:
            await web.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_cluster()  # revokes the lease: the others stop counting us now
        await self.monitor.close()


def counts(counters: Counters) -> dict[str, Any]:
    """A worker's counters as plain data for the supervisor, copied while UDP threads bump them.

    dict.copy() and list.copy() are one C call each under the GIL; dataclasses.asdict walks a
    dict in Python and raises "dictionary changed size during iteration" when a UDP thread
    counts a new (transport, type, rcode) meanwhile.
    """
    out: dict[str, Any] = {}
    for item in dataclasses.fields(counters):
        value = getattr(counters, item.name)
        out[item.name] = value.copy() if isinstance(value, dict | list) else value
    return out


def add_counts(total: dict[str, Any], more: dict[str, Any]) -> None:
    """Add one process's counts (as from `counts`) into `total`, key by key."""
    for key, value in more.items():
        if isinstance(value, dict):
            bucket = total.setdefault(key, {})
            for k, v in value.items():
                bucket[k] = bucket.get(k, 0) + v
        elif isinstance(value, list):  # histogram buckets: added bucket by bucket, not appended
            mine = total.get(key) or [0] * len(value)
            total[key] = [a + b for a, b in zip(mine, value, strict=True)]
        else:
            total[key] = total.get(key, 0) + value


RELOAD_NICENESS = 10  # a reload's build yields the CPU to the workers answering beside it


async def _build_gently(sources: Sources) -> Snapshot:
    """Build a snapshot in a thread of its own at a lower CPU priority.

    On a machine whose cores are busy answering, a reload's second or so of CPU would take
    it from the workers, whose sockets then overflow; at niceness 10 the build gets what the
    workers leave (Linux sets niceness per thread, so the thread is not reused for anything
    else; a compile it starts inherits it).
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reload build")
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, _build_niced, sources)
    finally:
        pool.shutdown(wait=False)


def _build_niced(sources: Sources) -> Snapshot:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RELOAD_NICENESS)
    return build(sources)


def tcp_limits(options: Options) -> None:
    """Raise the open-files limit (workers inherit it) and say what TCP may hold."""
    before, limit = raise_open_files_limit()
    cap, processes = options.tcp_max_connections, max(options.workers, 1)
    log.info(
        "TCP: at most %d connections per process (%d in all) on each listen address, idle timeout "
        "%g s (%g s above %d %% of the cap); open files limit %d%s",
        cap,
        cap * processes,
        options.tcp_idle_timeout,
        min(options.tcp_idle_timeout, TCP_PRESSURE_IDLE_TIMEOUT),
        round(TCP_PRESSURE * 100),
        limit,
        f" (raised from {before})" if limit > before else "",
    )
    needed = cap * len(options.listen) + OPEN_FILES_SPARE
    if needed > limit:
        log.warning(
            "TCP: %d connections on %d addresses need about %d open files, above the limit "
            "of %d: raise it (ulimit -n, LimitNOFILE=) or lower --tcp-max-connections",
            cap,
            len(options.listen),
            needed,
            limit,
        )


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _names(paths: list[Path], most: int = 3) -> str:
    shown = ", ".join(str(path) for path in paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")
