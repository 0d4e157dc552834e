"""The HTTP client for HTTPS probes and redirects: httpx on a transport of its own.

One new connection per request, on plain asyncio streams, with httpcore's errors mapped to
the httpx errors callers expect; no cookies, no proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from gslb.config.model import Check

USER_AGENT = "gslb-health/0.1"


def probe_source(address: str, source: str | None) -> tuple[str, int] | None:
    """The local (address, port) to probe `address` from: `source` (--probe-source) when it
    is of the same family, else None (the system picks, as without --probe-source)."""
    if source is None or (":" in source) != (":" in address):
        return None
    return (source, 0)


def client_key(check: Check) -> tuple[bool, str | None]:
    """Checks with the same key can share one client (new_client)."""
    return (check.verify_tls, check.ca_file if check.verify_tls else None)


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
