"""Wiring and lifecycle: build the snapshot, start listeners, probes and workers, reload, signals.

By default a supervisor probes, watches files and reloads, and forks workers that answer on
the sockets it bound; it sends them every health verdict over a pipe, they send their
counters back, and a reload forks a new generation. `--workers 0` does everything in one
process (a reload then competes with answering for the interpreter).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gslb.control import (
    COUNTER_INTERVAL,
    WORKER_START_TIMEOUT,
    Control,
    Listener,
    Listening,
    Options,
    add_counts,
    bind,
    counts,
    tcp_limits,
)
from gslb.dns.answer import Answerer
from gslb.dns.state import Counters
from gslb.health.view import HealthView
from gslb.ops.logs import QueryLog
from gslb.snapshot import Snapshot
from gslb.steering.spill import SpillView

log = logging.getLogger("gslb.app")

Connection = multiprocessing.connection.Connection


class App(Control):
    """A single process that answers, probes and reloads."""

    def __init__(self, options: Options, snapshot: Snapshot):
        super().__init__(options, snapshot)
        self.answerer = Answerer(snapshot, self.monitor.view)
        if options.query_log > 0:
            self.answerer.query_log = QueryLog(self.answerer, options.query_log)
        self.listening = Listening(self.answerer.handle, options, self.answerer)

    def health_changed(self, view: HealthView) -> None:
        self.answerer.set_health(view)

    def spill_changed(self, view: SpillView) -> None:
        self.answerer.set_spill(view)

    async def install(self, snapshot: Snapshot) -> None:
        self.answerer.set_snapshot(snapshot)

    def counters(self) -> Counters:
        return self.answerer.counters

    async def run(self) -> None:
        for address in self.options.listen:
            listener = bind(address)
            await self.listening.add(listener)
            self.bound.append(listener.address)
            log.info("listening on %s (UDP and TCP)", listener.address)
        try:
            await self.serve_until_stopped()
        finally:
            await self.listening.stop()
        log.info("stopped")


# -- several worker processes ------------------------------------------------------------


class Worker:
    """A forked process answering on the supervisor's sockets, with the snapshot it was forked with.

    A reload forks a new generation of workers from the supervisor's new snapshot, and only
    then retires this one: it stops taking packets from the shared sockets, where the new
    generation finds them, so no query is lost to a reload.
    """

    def __init__(self, snapshot: Snapshot, options: Options, listeners: list[Listener], control: Connection):
        self.answerer = Answerer(snapshot, HealthView(), processes=options.workers)  # each limits rates to its share
        if options.query_log > 0:  # each worker logs a sample of its own queries
            self.answerer.query_log = QueryLog(self.answerer, options.query_log)
        self.listeners = listeners
        self.control = control
        self.listening = Listening(self.answerer.handle, options, self.answerer)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        for listener in self.listeners:
            await self.listening.add(listener)
        loop.add_reader(self.control.fileno(), self._message)
        self.control.send(("ready",))
        reporter = asyncio.create_task(self._report())
        await self._stop.wait()
        reporter.cancel()
        loop.remove_reader(self.control.fileno())
        await self.listening.stop()
        with contextlib.suppress(OSError):  # the last counts, for the supervisor's totals
            self.control.send(("counters", counts(self.answerer.counters)))

    def _message(self) -> None:
        try:
            message = self.control.recv()
        except (EOFError, OSError):
            self._stop.set()  # the supervisor is gone
            return
        if message[0] == "health":
            _, version, states = message
            self.answerer.set_health(HealthView(version, MappingProxyType(states)))
        elif message[0] == "spill":
            _, version, shares, full = message
            self.answerer.set_spill(SpillView(version, MappingProxyType(shares), frozenset(full)))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(COUNTER_INTERVAL)
            with contextlib.suppress(OSError):
                self.control.send(("counters", counts(self.answerer.counters)))


@dataclass
class _Child:
    pid: int
    control: Connection
    counters: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor(Control):
    """Probes, watches and reloads; forks `workers` processes that answer.

    The supervisor binds the sockets once and every worker, of every generation, inherits
    them: a socket's queue outlives the worker reading it. A reload builds the snapshot here,
    where no query waits on the build, then forks the next generation with it.
    """

    def __init__(self, options: Options, snapshot: Snapshot):
        super().__init__(options, snapshot)
        self.children: list[_Child | None] = [None] * options.workers
        self.retiring: list[_Child] = []
        self.listeners: list[Listener] = []
        self.exited_counters = Counters()
        self.health = self.monitor.view
        self.spill = self.load.view
        self._child_exited = asyncio.Event()  # set on SIGCHLD: a dead worker is replaced at once

    def health_changed(self, view: HealthView) -> None:
        self.health = view
        self._send_all(("health", view.version, dict(view.states)))

    def spill_changed(self, view: SpillView) -> None:
        self.spill = view
        self._send_all(("spill", view.version, dict(view.shares), tuple(view.full)))

    def _send_all(self, message: tuple[Any, ...]) -> None:
        for child in [*self.children, *self.retiring]:
            if child is not None:
                with contextlib.suppress(OSError):
                    child.control.send(message)

    async def install(self, snapshot: Snapshot) -> None:
        """Fork a generation of workers with the new snapshot; retire the old once it answers."""
        old = [child for child in self.children if child is not None]
        for index in range(len(self.children)):
            self._spawn(index, snapshot)
        for child in self.children:
            if child is not None:
                try:
                    async with asyncio.timeout(WORKER_START_TIMEOUT):
                        await child.ready.wait()
                except TimeoutError:
                    log.error("worker (pid %d) did not start in %.0f s", child.pid, WORKER_START_TIMEOUT)
        for child in old:
            self.retiring.append(child)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        # Once the old generation is gone, every answer comes from the new snapshot: only
        # then is the reload done (a worker notices within UDP_WAKE seconds).
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while self.retiring and time.monotonic() < deadline:
            self._collect_retired()
            await asyncio.sleep(0.02)

    def counters(self) -> Counters:
        total = counts(self.exited_counters)
        for child in [*self.children, *self.retiring]:
            if child is not None:
                add_counts(total, child.counters)
        return Counters(**total)

    async def run(self) -> None:
        for address in self.options.listen:
            listener = bind(address)
            self.listeners.append(listener)
            self.bound.append(listener.address)
        for index in range(len(self.children)):
            self._spawn(index, self.snapshot)
        for address in self.bound:
            log.info("listening on %s (UDP and TCP, %d workers)", address, len(self.children))
        asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, self._child_exited.set)
        try:
            await self.serve_until_stopped([self._reap])
        finally:
            await self._stop_children()
        log.info("stopped")

    def _spawn(self, index: int, snapshot: Snapshot) -> None:
        ours, theirs = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                # What came from the supervisor (the snapshot above all) is never garbage
                # here: keep the collector from walking it, which would copy every page the
                # fork shares (copy-on-write) and stall answers while it does.
                gc.freeze()
                ours.close()
                for child in [*self.children, *self.retiring]:
                    if child is not None:
                        child.control.close()
                signal.set_wakeup_fd(-1)
                worker = Worker(snapshot, self.options, self.listeners, theirs)
                worker.answerer.set_health(self.health)
                worker.answerer.set_spill(self.spill)
                asyncio.run(worker.run())
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        theirs.close()
        child = _Child(pid, ours)
        self.children[index] = child
        asyncio.get_running_loop().add_reader(ours.fileno(), self._message, child)
        log.info("worker %d started (pid %d)", index, pid)

    def _message(self, child: _Child) -> None:
        try:
            message = child.control.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(child.control.fileno())
            return
        if message[0] == "counters":
            child.counters = message[1]
        elif message[0] == "ready":
            child.ready.set()

    async def _reap(self) -> None:
        """Restart a worker that died, so the port keeps its full set of answerers."""
        while True:
            # Woken by SIGCHLD: the shared sockets' queues hold a few tens of milliseconds of
            # traffic, so a worker that died is replaced before they overflow.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._child_exited.wait()
            self._child_exited.clear()
            self._collect_retired()
            for index, child in enumerate(self.children):
                if child is None:
                    continue
                status = self._exited(child)
                if status is None:
                    continue
                log.error("worker %d (pid %d) exited with status %d; restarting it", index, child.pid, status)
                self._forget(child)
                self._spawn(index, self.snapshot)

    def _collect_retired(self) -> None:
        for old in list(self.retiring):
            if self._exited(old) is not None:
                self.retiring.remove(old)
                self._forget(old)

    @staticmethod
    def _exited(child: _Child) -> int | None:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        return os.waitstatus_to_exitcode(status) if pid else None

    def _forget(self, child: _Child) -> None:
        while True:  # its last counts may still be in the pipe
            try:
                if not child.control.poll():
                    break
                message = child.control.recv()
            except (EOFError, OSError):
                break
            if message[0] == "counters":
                child.counters = message[1]
        total = counts(self.exited_counters)
        add_counts(total, child.counters)
        self.exited_counters = Counters(**total)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(child.control.fileno())
        child.control.close()

    async def _stop_children(self) -> None:
        children = [child for child in [*self.children, *self.retiring] if child is not None]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in children:
            while time.monotonic() < deadline:
                pid, _ = os.waitpid(child.pid, os.WNOHANG)
                if pid:
                    break
                await asyncio.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)


def serve(options: Options, snapshot: Snapshot) -> None:
    tcp_limits(options)
    server: Control
    server = Supervisor(options, snapshot) if options.workers > 0 else App(options, snapshot)

    async def main() -> None:
        await server.run()

    asyncio.run(main())
