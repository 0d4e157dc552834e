"""UDP and TCP listeners: framing, limits and timeouts around one `handle(wire, source, tcp)` callable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

try:  # the compiled UDP loop (gslb/dns/_fastudp.c); optional, built when a C compiler is there
    from gslb.dns import _fastudp
except ImportError:  # not built (no compiler at install time) or built for another Python
    _fastudp = None  # type: ignore[assignment]

log = logging.getLogger("gslb.server")

Handler = Callable[[bytes, str | None, bool], bytes | None]
UDP_LOOPS = ("auto", "compiled", "python")

DEFAULT_PORT = 5300
TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 §6.2.3: close idle connections after seconds, not minutes
TCP_MAX_CONNECTIONS = 256
TCP_MAX_QUERIES = 10_000  # per connection, so one client cannot hold a slot forever
TCP_PRESSURE = 0.75  # share of the cap above which the idle timeout shortens (RFC 7766 §6.2.3)
TCP_PRESSURE_IDLE_TIMEOUT = 1.0  # seconds: the idle timeout while under pressure
TCP_BUSY = 0.25  # seconds: a connection that asked something this recently is not closed for room
TCP_SWEEP_INTERVAL = 0.25  # seconds between looks for idle connections
TCP_SWEEP_MIN = 0.01  # and never more often, whatever the idle timeout
OPEN_FILES_WANTED = 65536  # with no hard limit on open files: raise the soft one this far
UDP_WAKE = 0.5  # seconds: how often a blocked receive loop checks whether to stop
UDP_RECV_SIZE = 4096  # a query never needs more; a 64 KiB buffer per packet costs a large alloc


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_PORT) -> ListenAddress:
        """`HOST:PORT`, `[V6]:PORT`, `HOST` or `:PORT`."""
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text) if port_text else default_port
        else:
            host, port = text, default_port
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        return cls(host or "127.0.0.1", port)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def udp_socket(address: ListenAddress) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_DGRAM)
    if address.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    # A blocking receive that gives up now and then, so a receive loop can notice it should
    # stop even when other processes share the socket (no per-packet cost, unlike settimeout).
    seconds = int(UDP_WAKE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, int((UDP_WAKE - seconds) * 1e6)))
    sock.bind((address.host, address.port))
    return sock


def udp_loop(choice: str) -> str:
    """Which UDP loop `--udp-loop CHOICE` runs: "compiled" or "python"; ValueError if it cannot."""
    if choice not in UDP_LOOPS:
        raise ValueError(f"unknown UDP loop {choice!r} (one of {', '.join(UDP_LOOPS)})")
    if choice == "python" or (choice == "auto" and _fastudp is None):
        return "python"
    if _fastudp is None:
        raise ValueError(
            "the compiled UDP loop (gslb.dns._fastudp) is not built: install gcc and python3-dev, "
            "then reinstall gslb (pip install -e .), or use --udp-loop python"
        )
    return "compiled"


class UdpServer:
    """A blocking receive loop in its own thread, compiled or in Python.

    The compiled loop (gslb.dns._fastudp.Loop, when built and given the Answerer) receives and
    sends in batches (recvmmsg/sendmmsg), answers the common query from the answerer's tables
    in C, and calls `handle` for the rest. The Python loop is one recvfrom/sendto per query:
    asyncio's datagram transport costs about a third more per packet here (see README,
    Performance). Either way `handle` never blocks.
    """

    def __init__(self, sock: socket.socket, handle: Handler, *, answerer: object | None = None, loop: str = "auto"):
        self.sock = sock
        self.handle = handle
        self.address = sock.getsockname()
        self.kind = udp_loop(loop) if answerer is not None else "python"
        self._compiled = None
        if self.kind == "compiled":
            self._compiled = _fastudp.Loop(sock.fileno(), answerer, handle)
        self._stopping = False
        target = self._run if self._compiled is None else self._run_compiled
        self._thread = threading.Thread(target=target, name=f"udp {self.address[:2]}", daemon=True)

    def start(self) -> None:
        log.info(
            "UDP on %s: %s",
            ListenAddress(*self.address[:2]),
            f"compiled loop (batches of {_fastudp.BATCH})" if self._compiled is not None else "Python loop",
        )
        self._thread.start()

    def _run_compiled(self) -> None:
        assert self._compiled is not None
        try:
            self._compiled.run()  # returns within UDP_WAKE seconds of stop()
        except OSError as exc:
            if not self._stopping:
                log.error("UDP loop on %s stopped: %s", self.address[:2], exc)

    def _run(self) -> None:
        recvfrom, sendto, handle = self.sock.recvfrom, self.sock.sendto, self.handle
        while not self._stopping:
            try:
                wire, peer = recvfrom(UDP_RECV_SIZE)
            except OSError:
                if self._stopping:
                    break
                continue
            if not wire:
                continue
            reply = handle(wire, peer[0], False)
            if reply is not None:
                try:
                    sendto(reply, peer)
                except OSError as exc:  # the client's problem, not ours (ICMP errors, buffers)
                    log.debug("sendto %s: %s", peer, exc)

    def stop(self) -> None:
        # The receive loop notices within UDP_WAKE seconds (SO_RCVTIMEO); it finishes the
        # packet (or batch) in hand first. The socket may be shared with other processes:
        # only this process's descriptor is closed.
        self._stopping = True
        if self._compiled is not None:
            self._compiled.stop()
        self._thread.join(timeout=UDP_WAKE + 2)
        self.sock.close()


class TcpServer:
    """DNS over TCP (RFC 7766): length-prefixed messages, several per connection, idle timeout.

    A protocol per connection rather than stream reader tasks: framing a buffer in
    data_received costs a fraction of awaiting readexactly twice under a timeout per query.

    Under pressure (RFC 7766 §6.2.3) idle connections give way: at the cap a new connection
    closes the oldest one that has not finished a query yet, else the longest idle one (unless
    every connection is busy: then the newcomer is closed), and above TCP_PRESSURE of the cap
    the idle timeout drops to TCP_PRESSURE_IDLE_TIMEOUT.
    """

    def __init__(
        self, handle: Handler, *, idle_timeout: float = TCP_IDLE_TIMEOUT, max_connections: int = TCP_MAX_CONNECTIONS
    ):
        self.handle = handle
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        # Both ordered by last activity, longest idle first (move_to_end on activity): those
        # that have not yet completed a query, and those that have.
        self.fresh: OrderedDict[_DnsOverTcp, None] = OrderedDict()
        self.used: OrderedDict[_DnsOverTcp, None] = OrderedDict()
        self.server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def connections(self) -> int:
        return len(self.fresh) + len(self.used)

    def current_idle_timeout(self) -> float:
        if self.connections > self.max_connections * TCP_PRESSURE:
            return min(self.idle_timeout, TCP_PRESSURE_IDLE_TIMEOUT)
        return self.idle_timeout

    async def start(self, sock: socket.socket) -> None:
        """Serve on a bound, listening socket (the supervisor's, shared by its workers)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _DnsOverTcp(self), sock=sock)
        self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.server is not None:
            self.server.close()
            for connection in [*self.fresh, *self.used]:
                connection.close()
            await self.server.wait_closed()

    def admit(self, connection: _DnsOverTcp, now: float) -> bool:
        """Make room for a new connection if there is none; False: the newcomer must go."""
        if self.connections < self.max_connections:
            self.fresh[connection] = None
            return True
        if self.fresh:  # connected, and not one query completed: the likeliest to be abandoned
            victim = next(iter(self.fresh))
        elif self.used and now - (oldest := next(iter(self.used))).last_active >= TCP_BUSY:
            victim = oldest
        else:
            return False  # every slot asked something just now: all busy
        victim.close()
        self.fresh[connection] = None
        return True

    def _sweep_interval(self) -> float:
        return max(TCP_SWEEP_MIN, min(TCP_SWEEP_INTERVAL, self.current_idle_timeout() / 2))

    def _sweep(self) -> None:
        # RFC 7766 §6.2.3: close connections idle for the timeout (shorter under pressure),
        # walking each list from its longest idle end and stopping at the first still in time.
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.current_idle_timeout()
        for connections in (self.fresh, self.used):
            expired = []
            for connection in connections:
                if connection.last_active > deadline:
                    break
                expired.append(connection)
            for connection in expired:
                connection.close()
        self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's open-files limit (RLIMIT_NOFILE) as far as allowed: (before, now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _DnsOverTcp(asyncio.Protocol):
    """One TCP connection: frames queries out of the byte stream and answers each in turn."""

    def __init__(self, server: TcpServer):
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.source: str | None = None
        self.queries = 0
        self.last_active = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.last_active = asyncio.get_running_loop().time()
        if not self.server.admit(self, self.last_active):
            # Full of busy connections: close at once rather than queue (RFC 7766 §6.2.2 allows it).
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.source = peer[0] if peer else None

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buffer += data
        self.last_active = asyncio.get_running_loop().time()
        server = self.server
        buffer = self.buffer
        handle = server.handle
        answered = self.queries
        while len(buffer) >= 2:
            end = 2 + (buffer[0] << 8 | buffer[1])
            if len(buffer) < end:
                break
            wire = bytes(buffer[2:end])
            del buffer[:end]
            reply = handle(wire, self.source, True)
            if reply is None:
                self.close()  # garbage: close the connection rather than answer
                return
            transport.write(struct.pack("!H", len(reply)) + reply)
            self.queries += 1
            if self.queries >= TCP_MAX_QUERIES:
                self.close()  # so one client cannot hold a slot forever
                return
        # The most recently active go to the far end of their list, away from eviction.
        if self in server.used:
            server.used.move_to_end(self)
        elif self in server.fresh:
            if self.queries > answered:  # its first query answered: one of the established now
                del server.fresh[self]
                server.used[self] = None
            else:
                server.fresh.move_to_end(self)

    def pause_writing(self) -> None:
        # The client sends faster than it reads: stop reading until its replies drain.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.fresh.pop(self, None)
        self.server.used.pop(self, None)
