"""Probing one target once: HTTP and HTTPS through httpx, plain HTTP on a lean path, TCP.

A probe never raises for network trouble: it returns a ProbeResult whose result is "ok" or a
short reason ("timeout", "refused", "status 503", "tls: …").
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import ssl
import time
from dataclasses import dataclass

import h11
import httpx

from gslb.config.model import Check, Target
from gslb.health.transport import USER_AGENT, probe_source

BODY_LIMIT = 4096  # bytes of a response body searched for Check.body_contains
MAX_REDIRECTS = 5


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
    asyncio path (one request, its response read with h11) that costs a third of the CPU
    of a request through httpx, unless `fast_path` is false. TCP passes when a
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

# What a _Response answers when it is given no request (any bytes may be fed to one): a GET.
_ANY_GET = h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"localhost")])


class _Response:
    """One HTTP/1.x response, read with h11: the status and the first BODY_LIMIT bytes of
    the body (Content-Length, chunked, or up to the close)."""

    __slots__ = ("_body", "_connection", "_read", "_request", "_want_body", "body", "status")

    def __init__(self, want_body: bool, request: h11.Request = _ANY_GET) -> None:
        self._request = request
        self._connection: h11.Connection | None = None
        self._read = 0
        self._want_body = want_body
        self._body = bytearray()
        self.status: int | None = None
        self.body = b""

    def feed(self, data: bytes) -> bool:
        """Take more bytes; True once nothing more is needed."""
        self._read += len(data)
        if self._read > READ_LIMIT:
            raise _ProtocolError("response too long")
        self._parser().receive_data(data)
        return self._events()

    def eof(self) -> None:
        """The server closed the connection: what we have is all there is."""
        if self.status is None:
            raise _ProtocolError("closed")  # before a whole response head: as h11 says it
        if not self._want_body:
            return
        self._parser().receive_data(b"")
        try:
            self._events()
        except _ProtocolError:
            raise _ProtocolError("truncated") from None

    def _parser(self) -> h11.Connection:
        # Made when the answer starts, not with the request: the parser of a probe still waiting
        # holds nothing, which keeps a thousand probes in flight light for the garbage collector
        # (made early, they doubled the monitor's time in it, tests/bench/bench_probes.py).
        if self._connection is None:
            self._connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_LIMIT)
            # h11 frames the answer by the request it answers (no body after HEAD): it "sends" it.
            self._connection.send(self._request)
        return self._connection

    def _events(self) -> bool:
        connection = self._parser()
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    return False
                if isinstance(event, h11.Response):
                    if not event.http_version.startswith(b"1."):
                        raise _ProtocolError("not an HTTP/1.x response")
                    self.status = event.status_code
                    if not self._want_body:
                        return True
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) >= BODY_LIMIT:
                        self.body = bytes(self._body[:BODY_LIMIT])
                        return True
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    self.body = bytes(self._body)
                    return True
                # else an interim response (RFC 9110 §15.2), which precedes the final one
        except h11.RemoteProtocolError as exc:
            raise _ProtocolError(str(exc)) from None


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
def _plain_request(target: Target) -> tuple[h11.Request, bytes]:
    """The request for a plain-HTTP target, and its bytes (cached: targets are immutable)."""
    check = target.check
    host = check.host
    if host is None:
        host = endpoint(target) if check.port != 80 else endpoint(target).rpartition(":")[0]
    path = httpx.URL(f"http://{endpoint(target)}{check.path}").raw_path  # percent-encoded
    headers = [
        (b"Host", host.encode("idna")),
        (b"User-Agent", USER_AGENT.encode("ascii")),
        (b"Accept", b"*/*"),
        (b"Connection", b"close"),
    ]
    request = h11.Request(method=check.method.encode("ascii"), target=path, headers=headers)
    return request, h11.Connection(h11.CLIENT).send(request) or b""


async def _probe_plain_http(target: Target, local: tuple[str, int] | None = None) -> str:
    check = target.check
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    want_body = check.body_contains is not None and check.method != "HEAD"
    request, request_bytes = _plain_request(target)
    response = _Response(want_body, request)
    try:
        transport, _ = await loop.create_connection(
            lambda: _PlainHttpProtocol(request_bytes, response, done),
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
