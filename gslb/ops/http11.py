"""HTTP/1.1 for the ops endpoint: one request read with h11 under limits, one response encoded.

One request per connection, answered with Connection: close; what is wrong with a request is
an HttpError carrying the status to answer (400, 411, 413, 431, 505).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import h11

HEAD_LIMIT = 16 * 1024  # bytes of request line and headers
BODY_LIMIT = 64 * 1024  # bytes of a request body (admin requests are a few dozen)
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, indent=1, default=str).encode() + b"\n"
    return Response(status, body, "application/json", headers or {})


READ_SIZE = 65536  # bytes asked of the socket at once
# h11 holds HTTP/1.1 to RFC 9112 §3.2, which wants a Host header; this endpoint is no virtual
# host and has always answered a bare `GET / HTTP/1.1` (probes and scripts send them), so a
# request without one is read as if it had an empty one.
_NO_HOST = "Missing mandatory Host: header"


def _server() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)


def _with_host(head: bytes) -> bytes:
    line_end = head.index(b"\n", len(head) - len(head.lstrip(b"\r\n"))) + 1
    return head[:line_end] + b"Host: \r\n" + head[line_end:]


async def read_request(reader: asyncio.StreamReader) -> Request:
    """One request, parsed by h11; what is wrong with it is an HttpError with the status to answer."""
    connection = _server()
    received: bytearray | None = bytearray()  # the bytes so far, until the head is read
    closed = False
    request: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            if str(exc) == _NO_HOST and received is not None:
                connection = _server()
                connection.receive_data(_with_host(bytes(received)))
                if closed:
                    connection.receive_data(b"")
                received = None
                continue
            if closed:
                raise HttpError(400, "incomplete request" if request is None else "incomplete request body") from exc
            if exc.error_status_hint == 431:
                raise HttpError(431, "request head too large") from exc
            raise HttpError(exc.error_status_hint, f"malformed request: {exc}") from exc
        if event is h11.NEED_DATA:
            if received is None:
                data = await reader.read(READ_SIZE)
            else:  # h11 bounds a head that has not ended; this, one that arrives whole
                if len(received) > HEAD_LIMIT:
                    raise HttpError(431, "request head too large")
                data = await reader.read(HEAD_LIMIT + 1 - len(received))
                received += data
            closed = not data
            connection.receive_data(data)
        elif isinstance(event, h11.Request):
            request, received = event, None
            _check_head(event)
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:  # ConnectionClosed
            raise HttpError(400, "incomplete request" if request is None else "incomplete request body")
    assert request is not None
    url = urllib.parse.urlsplit(request.target.decode("latin-1"))
    query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
    return Request(request.method.decode("ascii"), url.path or "/", query, headers, bytes(body))


def _check_head(request: h11.Request) -> None:
    """What this endpoint accepts beyond what h11 checks: HTTP/1.x, a small body with a length."""
    if request.http_version not in (b"1.0", b"1.1"):
        raise HttpError(505, "HTTP/1.0 or HTTP/1.1 only")
    headers = dict(request.headers)
    if b"transfer-encoding" in headers:
        raise HttpError(411, "send a Content-Length, not a chunked body")
    if int(headers.get(b"content-length", b"0")) > BODY_LIMIT:  # a number: h11 checked it
        raise HttpError(413, f"request body over {BODY_LIMIT} bytes")


def encode(response: Response) -> bytes:
    headers = {
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Connection": "close",
        **response.headers,
    }
    head = f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("latin-1") + b"\r\n" + response.body
