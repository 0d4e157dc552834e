"""Wiring and lifecycle: build the snapshot, start listeners and probes, reload, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gslb.answer import Answerer
from gslb.health import HealthMonitor, HealthView
from gslb.server import ListenAddress, TcpServer, UdpServer, udp_socket
from gslb.snapshot import Snapshot, SnapshotError, Sources, build

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0  # seconds between checks of the zone and config files


@dataclass
class Options:
    sources: Sources
    listen: list[ListenAddress] = field(default_factory=lambda: [ListenAddress("127.0.0.1", 5300)])
    state_file: Path | None = None
    watch: bool = True
    probes: bool = True


class App:
    """One server process: listeners, answerer, prober, reloads."""

    def __init__(self, options: Options, snapshot: Snapshot):
        self.options = options
        self.snapshot = snapshot
        self.monitor = HealthMonitor(
            snapshot.config.targets(), state_file=options.state_file, on_change=self._health_changed
        )
        self.answerer = Answerer(snapshot, self.monitor.view)
        self.udp: list[UdpServer] = []
        self.tcp: list[TcpServer] = []
        self.bound: list[ListenAddress] = []
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload_error: list[str] = []
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._watched = _fingerprint(options.sources)
        self.on_reload: list[Callable[[Snapshot], None]] = []

    # -- health and reload -------------------------------------------------------------------

    def _health_changed(self, view: HealthView) -> None:
        self.answerer.set_health(view)

    async def reload(self, why: str) -> bool:
        """Build a new snapshot off the query path and swap it in whole; keep the old on error."""
        async with self._reload_lock:
            started = time.perf_counter()
            try:
                snapshot = await asyncio.to_thread(build, self.options.sources)
            except SnapshotError as exc:
                self.reloads["failed"] += 1
                self.last_reload_error = exc.problems
                for problem in exc.problems:
                    log.error("reload (%s) failed: %s", why, problem)
                log.error("reload failed: still serving the data loaded at %s",
                          time.strftime("%H:%M:%S", time.localtime(self.snapshot.loaded_at)))
                return False
            self.snapshot = snapshot
            self.answerer.set_snapshot(snapshot)
            self.monitor.update_targets(snapshot.config.targets())
            for hook in self.on_reload:
                hook(snapshot)
            self.reloads["ok"] += 1
            self.last_reload_error = []
            log.info("reloaded (%s): %d zones, %d records, %d services in %.3f s", why,
                     len(snapshot.zones.zones), snapshot.zones.record_count, len(snapshot.services),
                     time.perf_counter() - started)
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            current = await asyncio.to_thread(_fingerprint, self.options.sources)
            if current != self._watched:
                self._watched = current
                await self.reload("files changed")

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for address in self.options.listen:
            sock = udp_socket(address)
            port = sock.getsockname()[1]
            bound = ListenAddress(address.host, port)
            server = UdpServer(sock, self.answerer.handle)
            tcp = TcpServer(self.answerer.handle)
            # Port 0 picks a free UDP port; TCP then takes the same number.
            await tcp.start(bound)
            server.start()
            self.udp.append(server)
            self.tcp.append(tcp)
            self.bound.append(bound)
            log.info("listening on %s (UDP and TCP)", bound)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.start()
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
        async with asyncio.TaskGroup() as tasks:
            probing = tasks.create_task(self.monitor.run()) if self.options.probes else None
            watching = tasks.create_task(self._watch()) if self.options.watch else None
            log.info("serving %d zones, %d services", len(self.snapshot.zones.zones),
                     len(self.snapshot.services))
            await self._stop.wait()
            log.info("stopping")
            for task in (probing, watching):
                if task is not None:
                    task.cancel()
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        for udp in self.udp:
            await asyncio.to_thread(udp.stop)
        for tcp in self.tcp:
            await tcp.stop()
        await self.monitor.close()
        log.info("stopped")


def _fingerprint(sources: Sources) -> tuple[tuple[str, int, int], ...]:
    prints = []
    for path in sources.watched():
        try:
            stat = path.stat()
        except OSError:
            continue
        prints.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(prints)


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port number free for both UDP and TCP (for tests and examples)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise OSError("no free port")
