"""Real loopback HTTP, HTTPS and TCP servers for probe tests, switchable at runtime."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

OK_BODY = b"gslb probe target: all good\n"
WRONG_BODY = b"maintenance\n"


class Behaviour(enum.Enum):
    OK = "ok"  # 200 with ok_body (OK_BODY unless changed)
    STATUS_503 = "status 503"  # 503 with ok_body
    WRONG_BODY = "wrong body"  # 200 with WRONG_BODY
    HANG = "hang"  # read the request, never answer
    CLOSE = "close"  # read the request, then close without a word
    RESET = "reset"  # accept, then reset (RST)
    CLOSED = "closed"  # not listening: connections are refused


@dataclass(frozen=True, slots=True)
class Certificate:
    ca_file: Path  # the CA that signed cert_file
    cert_file: Path
    key_file: Path
    name: str  # the DNS name the certificate is for


def make_certificate(directory: Path, name: str = "site.test") -> Certificate:
    """A throwaway CA and a server certificate for `name` (not for any IP), via openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=gslb test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl("req", "-new", *ec, "-keyout", "site.key", "-out", "site.csr", "-subj", f"/CN={name}")
    (directory / "site.ext").write_text(
        f"subjectAltName=DNS:{name}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "site.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "2",
        "-extfile",
        "site.ext",
        "-out",
        "site.pem",
    )
    return Certificate(directory / "ca.pem", directory / "site.pem", directory / "site.key", name)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str
    host: str | None  # the Host header


class _LoopThread:
    """An asyncio loop in a daemon thread, so servers work from sync and async tests alike."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        # Handshake failures and resets are what these servers are for; keep them quiet.
        self.loop.set_exception_handler(lambda loop, context: None)
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Listener:
    """A listener on 127.0.0.1 (port 0 → any free port) that can stop and restart on the
    same port; subclasses say what a connection gets."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._thread = _LoopThread(f"{type(self).__name__} {host}")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()
        self.connections = 0  # accepted so far
        self.active = 0  # open right now
        self.max_active = 0
        self.listen()

    @property
    def address(self) -> str:
        return self.host

    def listen(self) -> None:
        """Start listening (again, on the same port)."""
        if self._server is None:
            self._server = self._thread.call(self._listen())

    def stop_listening(self) -> None:
        """Stop listening and drop open connections: new connections are refused."""
        if self._server is not None:
            server, self._server = self._server, None
            self._thread.call(self._close(server))

    async def _listen(self) -> asyncio.Server:
        server = await asyncio.start_server(
            self._connected, self.host, self.port, ssl=self._ssl, reuse_address=True
        )
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for writer in list(self._writers):
            writer.close()
        await server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        with self._lock:
            self.connections += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            await self.serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            with self._lock:
                self.active -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop_listening()
        self._thread.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    # SO_LINGER with a zero timeout turns close() into a RST.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HttpTarget(_Listener):
    """A minimal HTTP/1.1 server (HTTPS when given a Certificate) for probe tests.

    `behave()` switches what it does; `raw_response`, when set, is sent verbatim instead of
    a response of our making; `redirects` maps a path to a Location it answers
    302 with; `requests` and `sni_names` record what clients sent.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, certificate: Certificate | None = None
    ) -> None:
        self.behaviour = Behaviour.OK
        self.ok_body = OK_BODY
        self.raw_response: bytes | None = None  # sent verbatim instead, if set
        self.redirects: dict[str, str] = {}
        self.requests: list[SeenRequest] = []
        self.sni_names: list[str | None] = []
        context = None
        if certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certificate.cert_file, certificate.key_file)
            context.sni_callback = self._sni
        super().__init__(host, port, context)

    @property
    def scheme(self) -> str:
        return "http" if self._ssl is None else "https"

    def behave(self, behaviour: Behaviour) -> None:
        if behaviour is Behaviour.CLOSED:
            self.stop_listening()
        else:
            self.listen()
        self.behaviour = behaviour

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.sni_names.append(name)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        behaviour = self.behaviour
        if behaviour is Behaviour.RESET:
            _reset(writer)
            return
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        host = next((v.strip() for k, v in headers.items() if k.lower() == "host"), None)
        self.requests.append(SeenRequest(method, path, host))
        if behaviour is Behaviour.CLOSE:
            return
        if behaviour is Behaviour.HANG:
            await reader.read()  # until the client gives up
            return
        if self.raw_response is not None:
            writer.write(self.raw_response)
            await writer.drain()
            return
        status, body, extra = 200, self.ok_body, ""
        if path in self.redirects:
            status, extra = 302, f"Location: {self.redirects[path]}\r\n"
        elif behaviour is Behaviour.STATUS_503:
            status = 503
        elif behaviour is Behaviour.WRONG_BODY:
            body = WRONG_BODY
        reason = {200: "OK", 302: "Found", 503: "Service Unavailable"}[status]
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + (b"" if method == "HEAD" else body)
        )
        await writer.drain()


class TcpTarget(_Listener):
    """A TCP listener that accepts connections and closes them; stop_listening() → refused."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (connections to it are refused)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_async(func: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an async test body on a fresh event loop (no pytest-asyncio here)."""
    return asyncio.run(func())
