"""Health probes (HTTP, HTTPS, TCP), the anti-flap fold, and the published health view."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import http.cookiejar
import ipaddress
import json
import logging
import math
import os
import random
import resource
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpcore
import httpx

# The model of what to probe lives with the rest of the configuration (plain data, no I/O);
# re-exported here, where the prober that runs it is.
from gslb.config.model import Check as Check
from gslb.config.model import Target as Target

log = logging.getLogger("gslb.health")

BODY_LIMIT = 4096  # bytes of a response body searched for Check.body_contains
MAX_REDIRECTS = 5
STATE_FILE_FORMAT = 1
USER_AGENT = "gslb-health/0.1"

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


# --- the anti-flap fold (pure) ------------------------------------------------------


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


# --- probes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeResult:
    passed: bool
    result: str  # "ok" or a short reason: "timeout", "refused", "status 503", "tls: …"
    latency: float  # seconds


async def probe(
    target: Target,
    client: httpx.AsyncClient | None,
    *,
    fast_path: bool = True,
    source: str | None = None,
) -> ProbeResult:
    """Probe `target` once, never raising for network trouble.

    The whole probe (connect, TLS, request, body) is bounded by `check.timeout`. HTTPS, and
    HTTP that follows redirects, go through `client`, whose TLS settings must be the
    check's (see new_client). Plain HTTP that does not follow redirects takes a lean
    asyncio path (one request, a strict little HTTP/1.1 reader) that costs a fifth of the
    CPU of a request through httpx, unless `fast_path` is false. TCP passes when a
    connection is accepted. `client` may be None when `needs_client(check)` is false.
    `source` is the local address plain-HTTP and TCP probes are sent from (see
    probe_source; an httpx client takes its own from new_client).
    """
    check = target.check
    if check.kind not in ("http", "https", "tcp"):
        raise ValueError(f"unknown check kind {check.kind!r}")
    if client is None and (needs_client(check) or (check.kind == "http" and not fast_path)):
        raise ValueError(f"an httpx client is needed to probe {target.name} ({check.kind})")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(check.timeout):
            local = probe_source(target.address, source)
            if check.kind == "tcp":
                result = await _probe_tcp(target, local)
            elif check.kind == "http" and fast_path and not check.follow_redirects:
                result = await _probe_plain_http(target, local)
            else:
                assert client is not None
                result = await _probe_httpx(target, client)
    except (TimeoutError, httpx.TimeoutException):
        result = "timeout"
    except (OSError, httpx.HTTPError, _ProtocolError) as exc:
        result = _reason(exc)
    return ProbeResult(result == "ok", result, time.perf_counter() - started)


def needs_client(check: Check) -> bool:
    """Whether probing with `check` goes through httpx (see probe)."""
    return check.kind == "https" or (check.kind == "http" and check.follow_redirects)


def probe_source(address: str, source: str | None) -> tuple[str, int] | None:
    """The local (address, port) to probe `address` from: `source` (--probe-source) when it
    is of the same family, else None (the system picks, as without --probe-source)."""
    if source is None or (":" in source) != (":" in address):
        return None
    return (source, 0)


async def _probe_tcp(target: Target, local: tuple[str, int] | None = None) -> str:
    _, writer = await asyncio.open_connection(target.address, target.check.port, local_addr=local)
    writer.close()
    return "ok"


def _judge(check: Check, status: int, body: bytes | None) -> str:
    if status not in check.expect_status:
        return f"status {status}"
    if check.body_contains is not None and (body is None or check.body_contains.encode() not in body[:BODY_LIMIT]):
        return "body mismatch"
    return "ok"


# -- the lean path for plain HTTP --


class _ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as we read it."""


HEAD_LIMIT = 16384  # bytes of a status line and headers
READ_LIMIT = 65536  # bytes read in all, chunk framing and interim responses included


class _Response:
    """An incremental, strict reader of one HTTP/1.x response: status, headers, and the first
    BODY_LIMIT bytes of the body (Content-Length, chunked, or up to the close)."""

    __slots__ = ("_buffer", "_chunked", "_length", "_read", "_want_body", "body", "status")

    def __init__(self, want_body: bool) -> None:
        self._buffer = bytearray()
        self._read = 0
        self._want_body = want_body
        self._length: int | None = None
        self._chunked = False
        self.status: int | None = None
        self.body = b""

    def feed(self, data: bytes) -> bool:
        """Take more bytes; True once nothing more is needed."""
        self._buffer += data
        self._read += len(data)
        if self._read > READ_LIMIT:
            raise _ProtocolError("response too long")
        if self.status is None and not self._read_head():
            return False
        if not self._want_body:
            return True
        if self._chunked:
            return self._dechunk()
        body = self._buffer
        if self._length is not None and len(body) >= self._length:
            self.body = bytes(body[: self._length])
            return True
        if len(body) >= BODY_LIMIT:
            self.body = bytes(body[:BODY_LIMIT])
            return True
        return False

    def eof(self) -> None:
        """The server closed the connection: what we have is all there is."""
        if self.status is None:
            raise _ProtocolError("closed")  # before a whole response head: as h11 says it
        if not self._want_body:
            return
        if self._chunked:
            if not self._dechunk():
                raise _ProtocolError("truncated")
        elif self._length is not None and len(self._buffer) < self._length:
            raise _ProtocolError("truncated")
        else:
            self.body = bytes(self._buffer[:BODY_LIMIT])

    def _read_head(self) -> bool:
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > HEAD_LIMIT:
                    raise _ProtocolError("response head too long")
                return False
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            del self._buffer[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit() or len(code) != 3:
                raise _ProtocolError("not an HTTP/1.x response")
            status = int(code)
            if status < 100:
                raise _ProtocolError("bad status code")
            if status < 200:
                continue  # RFC 9110 §15.2: interim responses precede the final one
            self.status = status
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon:
                    raise _ProtocolError("malformed header line")
                name = name.strip().lower()
                if name == b"content-length":
                    if not value.strip().isdigit():
                        raise _ProtocolError("bad Content-Length")
                    self._length = int(value)
                elif name == b"transfer-encoding":
                    self._chunked = value.strip().lower().endswith(b"chunked")
            if status in (204, 304):
                self._length = 0
            return True

    def _dechunk(self) -> bool:
        """Decode as much of a chunked body as has arrived (RFC 9112 §7.1)."""
        body: list[bytes] = []
        pos, data = 0, self._buffer
        size_total = 0
        while True:
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                break
            size_text = bytes(data[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ProtocolError("bad chunk size") from None
            if size == 0:
                self.body = b"".join(body)
                return True
            chunk = data[line_end + 2 : line_end + 2 + size]
            body.append(bytes(chunk))
            size_total += len(chunk)
            if size_total >= BODY_LIMIT or len(chunk) < size:
                break
            pos = line_end + 2 + size + 2
        self.body = b"".join(body)[:BODY_LIMIT]
        return size_total >= BODY_LIMIT


class _PlainHttpProtocol(asyncio.Protocol):
    def __init__(self, request: bytes, response: _Response, done: asyncio.Future[None]) -> None:
        self._request = request
        self._response = response
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            if self._response.feed(data):
                self._done.set_result(None)
        except _ProtocolError as exc:
            self._done.set_exception(exc)

    def eof_received(self) -> bool:
        self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._done.done():
            return
        if exc is not None:
            self._done.set_exception(exc)
            return
        try:
            self._response.eof()
        except _ProtocolError as error:
            self._done.set_exception(error)
        else:
            self._done.set_result(None)


@functools.lru_cache(maxsize=8192)
def _plain_request(target: Target) -> bytes:
    """The request bytes for a plain-HTTP target (cached: targets are immutable)."""
    check = target.check
    host = check.host
    if host is None:
        host = endpoint(target) if check.port != 80 else endpoint(target).rpartition(":")[0]
    path = httpx.URL(f"http://{endpoint(target)}{check.path}").raw_path  # percent-encoded
    return (
        check.method.encode("ascii") + b" " + path + b" HTTP/1.1\r\n"
        b"Host: " + host.encode("idna") + b"\r\n"
        b"User-Agent: " + USER_AGENT.encode("ascii") + b"\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n"
    )


async def _probe_plain_http(target: Target, local: tuple[str, int] | None = None) -> str:
    check = target.check
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    want_body = check.body_contains is not None and check.method != "HEAD"
    response = _Response(want_body)
    try:
        transport, _ = await loop.create_connection(
            lambda: _PlainHttpProtocol(_plain_request(target), response, done),
            target.address,
            check.port,
            local_addr=local,
        )
        try:
            await done
        finally:
            transport.close()
    finally:
        # Cancelled or failed before awaiting `done`: settle it now, so that the protocol
        # does not set an exception nobody will ever read.
        if not done.done():
            done.cancel()
    assert response.status is not None
    return _judge(check, response.status, response.body if want_body else None)


# -- httpx, for HTTPS and for redirects --


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Probes neither keep nor send cookies: a sticky-session cookie would pin every later
    probe to one server behind the VIP."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: object) -> bool:
        return False


def new_client(check: Check, *, max_connections: int = 100, source: str | None = None) -> httpx.AsyncClient:
    """An HTTP client for every check sharing `check`'s TLS settings (verify_tls, ca_file).

    Every request gets a fresh connection, closed after the response (no keep-alive), as a
    new visitor would: a listener that stopped accepting is noticed even while an old
    connection still works (nginx's graceful quit keeps serving open keep-alive
    connections). At most `max_connections` requests are open at once. `trust_env=False`:
    a probe goes to the address probed, never through an HTTP_PROXY.
    """
    ssl_context: ssl.SSLContext
    if not check.verify_tls:
        ssl_context = httpx.create_ssl_context(verify=False)
    elif check.ca_file is not None:
        ssl_context = ssl.create_default_context(cafile=check.ca_file)
    else:
        ssl_context = httpx.create_ssl_context()
    return httpx.AsyncClient(
        transport=_FreshConnectionTransport(ssl_context, max_connections, source),
        trust_env=False,
        follow_redirects=False,  # probe() follows them itself, see _next_hop
        headers={"User-Agent": USER_AGENT},
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
    )


class _FreshConnectionTransport(httpx.AsyncBaseTransport):
    """httpx transport with one new connection per request, on plain asyncio streams.

    Why not httpx's own transport with max_keepalive_connections=0: its pool rescans every
    connection for every request, which took a quarter of the CPU with hundreds of probes
    in flight (tests/bench/bench_probes.py); and the AnyIO backend leaks the socket when a
    probe's deadline cancels it during the TLS handshake (its cleanup catches Exception,
    not CancelledError). A pool brings nothing when connections are never reused.
    """

    def __init__(self, ssl_context: ssl.SSLContext, max_connections: int, source: str | None = None) -> None:
        self._ssl_context = ssl_context
        self._source = source
        self._slots = asyncio.Semaphore(max_connections)
        self._backend = _AsyncioBackend()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        await self._slots.acquire()
        local = probe_source(url.host, self._source)
        connection = httpcore.AsyncHTTPConnection(
            origin=core_request.url.origin,
            ssl_context=self._ssl_context,
            local_address=local[0] if local else None,
            network_backend=self._backend,
        )
        try:
            with _httpx_errors():
                response = await connection.handle_async_request(core_request)
        except BaseException:
            await _close_connection(connection, self._slots)
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response, connection, self._slots),
            extensions=response.extensions,
        )


async def _close_connection(connection: httpcore.AsyncHTTPConnection, slots: asyncio.Semaphore) -> None:
    try:
        await connection.aclose()
    finally:
        slots.release()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(
        self,
        response: httpcore.Response,
        connection: httpcore.AsyncHTTPConnection,
        slots: asyncio.Semaphore,
    ) -> None:
        self._response = response
        self._connection = connection
        self._slots: asyncio.Semaphore | None = slots

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._response.aiter_stream():
                yield part

    async def aclose(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            try:
                await self._response.aclose()
            finally:
                await _close_connection(self._connection, slots)


# httpcore's errors and the httpx errors callers expect, most specific first.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPX_ERRORS:
            if isinstance(exc, core_error):
                raise httpx_error(str(exc)) from exc
        raise


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one connection, on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout("timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except BaseException as exc:
            self._writer.close()  # even when cancelled: no socket left to the GC
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout("timed out") from exc
            if isinstance(exc, OSError):
                raise httpcore.ConnectError(str(exc)) from exc
            raise
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return self._reader.at_eof()
        name = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        return self._writer.get_extra_info(name)


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return _AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _client_key(check: Check) -> tuple[bool, str | None]:
    return (check.verify_tls, check.ca_file if check.verify_tls else None)


def endpoint(target: Target) -> str:
    """`address:port` with IPv6 literals in brackets, as in a URL."""
    host = f"[{target.address}]" if ":" in target.address else target.address
    return f"{host}:{target.check.port}"


async def _probe_httpx(target: Target, client: httpx.AsyncClient) -> str:
    check = target.check
    scheme = "https" if check.kind == "https" else "http"
    url = httpx.URL(f"{scheme}://{endpoint(target)}{check.path}")
    method = check.method
    for _ in range(MAX_REDIRECTS + 1):
        headers, extensions = _naming(url, target)
        request = client.build_request(method, url, headers=headers, extensions=extensions, timeout=check.timeout)
        response = await client.send(request, stream=True)
        try:
            if check.follow_redirects and response.has_redirect_location:
                url, method = _next_hop(response, method, target)
                continue
            body = None
            if check.body_contains is not None and response.status_code in check.expect_status:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= BODY_LIMIT:
                        break
            return _judge(check, response.status_code, body)
        finally:
            await response.aclose()
    return "too many redirects"


def _naming(url: httpx.URL, target: Target) -> tuple[dict[str, str], dict[str, str]]:
    """Host header and SNI for a request to `url`: the check's host while we talk to the
    target's own address (probing a VIP by IP while naming the site), else httpx's default."""
    host = target.check.host
    if host is None or not _same_address(url.host, target.address):
        return {}, {}
    return {"Host": host}, ({"sni_hostname": host} if url.scheme == "https" else {})


def _same_address(host: str, address: str) -> bool:
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(address)
    except ValueError:
        return host.lower() == address.lower()


def _next_hop(response: httpx.Response, method: str, target: Target) -> tuple[httpx.URL, str]:
    """Where a redirect leads. A redirect to the check's own host name stays on the target's
    address: resolving the name would reach whichever data center DNS picks, not this one."""
    url = response.url.join(response.headers["Location"])
    host = target.check.host
    if host is not None and url.host.lower() == host.lower():
        url = url.copy_with(host=target.address)
    # RFC 9110 §15.4: 303 turns into GET; so do 301/302 after POST, as browsers do.
    status = response.status_code
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method = "GET"
    return url, method


def _reason(exc: BaseException) -> str:
    """A short reason for a failed probe, from the exception and what it wraps."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, ssl.SSLCertVerificationError):
            message = (err.verify_message or "certificate verify failed").rstrip(".")
            if message[1:2].islower():  # "Hostname mismatch" → "hostname …", "IP …" stays
                message = message[:1].lower() + message[1:]
            return f"tls: {message}"
        if isinstance(err, ssl.SSLError):
            what = err.reason or err.strerror or type(err).__name__
            return f"tls: {what.lower().replace('_', ' ')}"
    for err in chain:
        if isinstance(err, _ProtocolError):
            return str(err) if str(err) in ("closed", "truncated") else "protocol error"
        if isinstance(err, (TimeoutError, httpx.TimeoutException)):
            return "timeout"
        if isinstance(err, ConnectionRefusedError):
            return "refused"
        if isinstance(err, (ConnectionResetError, BrokenPipeError)):
            return "reset"
        if isinstance(err, OSError) and err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        if isinstance(err, httpx.RemoteProtocolError):
            # h11's words when the peer closed early: before a status line, a closed
            # connection; inside the body, a truncated response.
            if "complete message body" in str(err):
                return "truncated"
            return "closed" if "without sending" in str(err) else "protocol error"
        if isinstance(err, httpx.TooManyRedirects):
            return "too many redirects"
        if isinstance(err, OSError) and err.strerror:
            return f"error: {err.strerror.lower()}"
    if isinstance(exc, httpx.ReadError):
        return "reset"
    return f"error: {type(exc).__name__}"


# --- the monitor ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeStats:
    """Fresh per-target probe statistics (HealthMonitor.stats)."""

    probes: int = 0
    failures: int = 0
    last_result: str = ""
    last_latency: float | None = None  # seconds
    last_probe: float | None = None  # wall-clock time
    last_lateness: float | None = None  # seconds the probe started after its scheduled time


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

        saved, self._drained = self._load_state()
        now = time.time()
        for target in _unique(targets):
            verdict = saved.get(target.name)
            if verdict is None or verdict[0] != target.address:
                status = Status(True, NO_PROBE_YET, now)
            else:
                status = verdict[1]
            self._entries[target.name] = _Entry(target, status)
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
        key = _client_key(check)
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
                verdict = Status(False, DRAINED, drained_at, drained=True)
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
                states[name] = Status(False, DRAINED, drained_at, drained=True)
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
        data = {
            "format": STATE_FILE_FORMAT,
            "saved": time.time(),
            "targets": {
                name: {
                    "address": entry.target.address,
                    "up": entry.verdict.up,
                    "reason": entry.verdict.reason,
                    "since": entry.verdict.since,
                }
                for name, entry in self._entries.items()
            },
            "drained": self._drained,
        }
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    json.dump(data, file, indent=1, sort_keys=True)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.error("cannot write health state file %s: %s", path, exc)

    def _load_state(self) -> tuple[dict[str, tuple[str, Status]], dict[str, float]]:
        path = self._state_file
        if path is None:
            return {}, {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FILE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            saved = {
                name: (
                    str(item["address"]),
                    Status(bool(item["up"]), RESTORED, float(item["since"])),
                )
                for name, item in data["targets"].items()
            }
            drained = {str(name): float(at) for name, at in data["drained"].items()}
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring health state file %s: %s", path, exc)
            return {}, {}
        log.info("restored %d health verdicts and %d drains from %s", len(saved), len(drained), path)
        return saved, drained


def _unique(targets: Sequence[Target]) -> list[Target]:
    names: set[str] = set()
    for target in targets:
        if target.name in names:
            raise ValueError(f"duplicate health target name {target.name!r}")
        names.add(target.name)
    return list(targets)


def _describe(target: Target) -> str:
    return f"{target.name} ({endpoint(target)} {target.check.kind})"
