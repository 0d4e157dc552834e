"""Real loopback HTTP, HTTPS and TCP servers for probe tests, switchable at runtime."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import selectors
import socket
import ssl
import struct
import subprocess
import threading
import time
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
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=gslb test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
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
        "x509", "-req", "-in", "site.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", "2", "-days", "2", "-extfile", "site.ext", "-out", "site.pem",
    )  # fmt: skip
    return Certificate(directory / "ca.pem", directory / "site.pem", directory / "site.key", name)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str
    host: str | None  # the Host header
    cookie: str | None = None  # the Cookie header


class _Listener:
    """A listener on 127.0.0.1 (port 0: any free port) with a thread per connection; it can
    stop (connections refused) and listen again on the same port. Subclasses say what a
    connection gets. Every socket is closed by its owner thread, so nothing is left to the GC.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._acceptor: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self.connections = 0  # accepted so far
        self.spans: list[tuple[float, float]] = []  # (accepted, finished), time.monotonic()
        self.listen()

    @property
    def address(self) -> str:
        return self.host

    def listen(self) -> None:
        """Start listening (again, on the same port)."""
        if self._listener is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._wakeup = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener, self._wakeup[0]), daemon=True)
        self._acceptor.start()

    def stop_listening(self) -> None:
        """Stop listening and drop open connections: new connections are refused."""
        if self._listener is None or self._wakeup is None or self._acceptor is None:
            return
        self._wakeup[1].send(b"x")
        self._acceptor.join(10)
        self._listener.close()
        for sock in self._wakeup:
            sock.close()
        self._listener = self._wakeup = self._acceptor = None
        with self._lock:
            connections, handlers = list(self._connections), list(self._handlers)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv
        for handler in handlers:
            handler.join(10)

    def _accept_loop(self, listener: socket.socket, wakeup: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wakeup, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is wakeup:
                        return
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    conn.setblocking(True)
                    handler = threading.Thread(target=self._handle, args=(conn,), daemon=True)
                    with self._lock:
                        self.connections += 1
                        self._connections.add(conn)
                        self._handlers.add(handler)
                    handler.start()

    def _handle(self, conn: socket.socket) -> None:
        accepted = time.monotonic()
        stream: socket.socket = conn
        try:
            conn.settimeout(10)
            if self._ssl is not None:
                stream = self._ssl.wrap_socket(conn, server_side=True)  # takes over the fd
                with self._lock:
                    self._connections.discard(conn)
                    self._connections.add(stream)
            self.serve(stream)
        except OSError:  # ssl.SSLError included: handshakes are meant to fail here too
            pass
        finally:
            stream.close()
            conn.close()
            with self._lock:
                self.spans.append((accepted, time.monotonic()))
                self._connections.discard(conn)
                self._connections.discard(stream)
                self._handlers.discard(threading.current_thread())

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop_listening()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > 65536:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


def _wait_for_close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


class HttpTarget(_Listener):
    """A minimal HTTP/1.1 server (HTTPS when given a Certificate) for probe tests.

    `behave()` switches what it does; `raw_response`, when set, is sent verbatim instead of
    a response of our making; `redirects` maps a path to a Location it answers 302 with;
    `requests` and `sni_names` record what clients sent.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, certificate: Certificate | None = None) -> None:
        self.behaviour = Behaviour.OK
        self.ok_body = OK_BODY
        self.raw_response: bytes | None = None
        self.raw_then_hang = False  # after raw_response, keep the connection open
        self.extra_headers = ""  # added to every response we make, e.g. "Set-Cookie: a=b\r\n"
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

    def serve(self, conn: socket.socket) -> None:
        behaviour = self.behaviour
        if behaviour is Behaviour.RESET:
            # SO_LINGER with a zero timeout turns close() into a RST.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        head = _read_head(conn)
        if head is None:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        found = {k.strip().lower(): v.strip() for k, v in headers.items()}
        self.requests.append(SeenRequest(method, path, found.get("host"), found.get("cookie")))
        if behaviour is Behaviour.CLOSE:
            return
        if behaviour is Behaviour.HANG:
            _wait_for_close(conn)  # until the client gives up, or stop_listening()
            return
        if self.raw_response is not None:
            conn.sendall(self.raw_response)
            if self.raw_then_hang:
                _wait_for_close(conn)
            return
        status, body, extra = 200, self.ok_body, self.extra_headers
        if path in self.redirects:
            status, extra = 302, f"{extra}Location: {self.redirects[path]}\r\n"
        elif behaviour is Behaviour.STATUS_503:
            status = 503
        elif behaviour is Behaviour.WRONG_BODY:
            body = WRONG_BODY
        reason = {200: "OK", 302: "Found", 503: "Service Unavailable"}[status]
        conn.sendall(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + (b"" if method == "HEAD" else body)
        )


class TcpTarget(_Listener):
    """A TCP listener that accepts connections and closes them; stop_listening() → refused."""

    def serve(self, conn: socket.socket) -> None:
        return


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (connections to it are refused)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_async(func: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run an async test body on a fresh event loop (no pytest-asyncio here)."""
    return asyncio.run(func())
