"""A small asyncio client for etcd v3 through its JSON gateway (/v3/...), on httpx.

Only what gslb.cluster.votes needs: leases (grant, keep alive, revoke), put, delete, a prefix
range, and a prefix watch. Keys and values travel base64-encoded, numbers (revisions, lease
IDs) as decimal strings, as the gateway's JSON mapping of the protobuf messages has them.
Every failure (refused, timed out, an error reply, a reply we cannot read) is an EtcdError.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

REQUEST_TIMEOUT = 2.0  # seconds for one unary request
CONNECT_TIMEOUT = 1.0


class EtcdError(Exception):
    """etcd cannot be reached, or refused or failed a request."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    lease: int = 0
    mod_revision: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    deleted: bool  # a DELETE (lease expired or revoked, or deleted); else a PUT
    kv: KeyValue


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode("ascii")


def prefix_end(prefix: str) -> str:
    """The range_end that makes a range or watch cover every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")  # every key
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(item.get("key", "")).decode(errors="replace"),
        value=base64.b64decode(item.get("value", "")),
        lease=int(item.get("lease", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
    )


class Etcd:
    """One etcd member's JSON gateway; aclose() when done."""

    def __init__(self, endpoint: str, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.endpoint = endpoint
        self._client = httpx.AsyncClient(
            base_url=endpoint,
            trust_env=False,  # never through an HTTP proxy
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=body)
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise EtcdError(f"{self.endpoint}: {_describe(exc)}") from exc
        if not isinstance(data, dict):
            raise EtcdError(f"{self.endpoint}{path}: unexpected reply")
        if response.status_code != 200 or "error" in data:
            reason = data.get("message") or data.get("error") or response.status_code
            raise EtcdError(f"{self.endpoint}{path}: {reason}")
        return data

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its ID, the TTL etcd granted, which may exceed `ttl`)."""
        data = await self._call("/v3/lease/grant", {"TTL": ttl})
        return int(data["ID"]), int(data.get("TTL", ttl))

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; the TTL it now has, 0 when it has expired (its keys are gone)."""
        data = await self._call("/v3/lease/keepalive", {"ID": lease})
        return int(data.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End `lease` now, deleting its keys; one already gone is no error."""
        try:
            await self._call("/v3/lease/revoke", {"ID": lease})
        except EtcdError as exc:
            if "lease not found" not in str(exc):
                raise

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write `key`; the revision it was written at."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        data = await self._call("/v3/kv/put", body)
        return int(data.get("header", {}).get("revision", 0))

    async def delete(self, key: str) -> None:
        await self._call("/v3/kv/deleterange", {"key": _b64(key)})

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix`, and the revision they were read at."""
        data = await self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": prefix_end(prefix)})
        revision = int(data.get("header", {}).get("revision", 0))
        return revision, [_kv(item) for item in data.get("kvs", [])]

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Changes under `prefix` from `start_revision` on, a batch at a time, until the stream
        breaks (EtcdError) or the caller stops iterating."""
        body = {
            "create_request": {"key": _b64(prefix), "range_end": prefix_end(prefix), "start_revision": start_revision}
        }
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT)  # a watch is quiet while nothing changes
        try:
            async with self._client.stream("POST", "/v3/watch", json=body, timeout=timeout) as response:
                if response.status_code != 200:
                    raise EtcdError(f"{self.endpoint}/v3/watch: status {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdError(f"{self.endpoint}/v3/watch: {message.get('message') or message['error']}")
                    result = message.get("result", {})
                    if result.get("canceled") or result.get("compact_revision"):
                        reason = result.get("cancel_reason", "compacted")
                        raise EtcdError(f"{self.endpoint}/v3/watch: canceled ({reason})")
                    events = result.get("events")
                    if events:
                        yield [Event(item.get("type") == "DELETE", _kv(item.get("kv", {}))) for item in events]
        except (httpx.HTTPError, ValueError) as exc:
            raise EtcdError(f"{self.endpoint}/v3/watch: {_describe(exc)}") from exc
        raise EtcdError(f"{self.endpoint}/v3/watch: the stream ended")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    seen: BaseException | None = exc
    for _ in range(10):  # httpx says "All connection attempts failed"; what failed is below
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return text or type(exc).__name__
