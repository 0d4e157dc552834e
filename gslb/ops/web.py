"""The operations endpoint: status page, JSON API, explain, /metrics and admin actions over HTTP.

A small HTTP/1.1 server on asyncio streams (requests read by gslb.ops.http11), one request per
connection (Connection: close), with limits on the request head and body and timeouts on
reading and writing. It runs in the event loop of the process that probes and reloads, never
on the UDP answering path; every handler only reads immutable snapshots and counters, so none
blocks for long.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import html
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.exception

from gslb import __version__
from gslb.dns.server import ListenAddress
from gslb.geo.places import Location, country_centroids
from gslb.health.probe import endpoint
from gslb.health.view import HealthView
from gslb.ops.explain import explain_query
from gslb.ops.http11 import HEAD_LIMIT, HttpError, Request, Response, encode, json_response, read_request
from gslb.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gslb.ops.view import ControlCommands, ControlView
from gslb.steering.policy import choose, rank

if TYPE_CHECKING:
    from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.web")

DEFAULT_HTTP = "127.0.0.1:8053"
READ_TIMEOUT = 10.0  # seconds to receive a whole request
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
SAMPLE_INTERVAL = 1.0  # seconds between counter samples for the rates
RATE_WINDOW = 5.0  # seconds the per-second rates are averaged over

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DISABLED = (
    "admin actions are disabled: no token is configured; start gslb serve with "
    "--token-file FILE (or GSLB_TOKEN set in its environment)"
)


def read_token(path: Path) -> str:
    """The admin token from a file: its first line, stripped; ValueError if empty."""
    text = path.read_text(encoding="utf-8").strip()
    token = text.splitlines()[0].strip() if text else ""
    if not token:
        raise ValueError(f"{path}: empty token file")
    return token


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float  # time.monotonic()
    queries: int
    answers: dict[tuple[str, str], int]


class WebServer:
    """Serves a server's state over HTTP, and its admin actions to the token; start(), then close()."""

    def __init__(
        self, control: ControlView, address: ListenAddress, token: str | None, *, commands: ControlCommands
    ) -> None:
        self.control = control
        self.commands = commands
        self.requested = address
        self.address: ListenAddress | None = None
        self._token = token
        self._server: asyncio.Server | None = None
        self._active = 0
        self._samples: collections.deque[_Sample] = collections.deque(maxlen=int(RATE_WINDOW / SAMPLE_INTERVAL) + 2)
        self._map_key: tuple[int, float, int] | None = None
        self._map: dict[str, Any] = {}
        self._page: bytes | None = None
        self._routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("GET", "/"): self._index,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/api/status"): self._status,
            ("GET", "/api/explain"): self._explain,
            ("POST", "/api/drain"): self._drain,
            ("POST", "/api/undrain"): self._undrain,
            ("POST", "/api/reload"): self._reload,
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> bool:
        """Listen; on failure log why and return False (DNS goes on without the endpoint)."""
        host, port = self.requested.host, self.requested.port
        try:
            self._server = await asyncio.start_server(
                self._connection, host, port, limit=HEAD_LIMIT, reuse_address=True
            )
        except OSError as exc:
            log.error(
                "http: cannot listen on %s: %s; the status page, /metrics and the admin API are off",
                self.requested,
                exc,
            )
            return False
        bound = self._server.sockets[0].getsockname()
        self.address = ListenAddress(host, bound[1])
        self._take_sample()
        log.info(
            "http on %s: status page /, /api/status, /metrics; admin actions %s",
            self.address,
            "need the token" if self._token else "disabled (no token)",
        )
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    async def sample(self) -> None:
        """Sample the counters every second, for queries per second (runs until cancelled)."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self._take_sample()

    def _take_sample(self) -> None:
        counters = self.control.counters()
        # dict() copies in one C call: safe against UDP threads adding keys meanwhile.
        queries = sum(dict(counters.by_key).values())
        self._samples.append(_Sample(time.monotonic(), queries, dict(counters.by_answer)))

    # -- HTTP --------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                response = json_response({"error": "too many connections"}, 503)
            else:
                response = await self._respond(reader)
            writer.write(encode(response))
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> Response:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                request = await read_request(reader)
        except HttpError as exc:
            return json_response({"error": str(exc)}, exc.status, exc.headers)
        except TimeoutError:
            return json_response({"error": "request not received in time"}, 408)
        head = request.method == "HEAD"
        handler = self._routes.get(("GET" if head else request.method, request.path))
        if handler is None:
            allowed = sorted(m for m, p in self._routes if p == request.path)
            if allowed:
                return json_response({"error": f"use {' or '.join(allowed)}"}, 405, {"Allow": ", ".join(allowed)})
            return json_response({"error": f"no such page: {request.path}"}, 404)
        try:
            response = await handler(request)
        except HttpError as exc:
            response = json_response({"error": str(exc)}, exc.status, exc.headers)
        except Exception:
            log.exception("http: %s %s failed", request.method, request.path)
            response = json_response({"error": "internal error (logged)"}, 500)
        if head:
            response.headers["Content-Length"] = str(len(response.body))
            response.body = b""
        return response

    # -- pages -------------------------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        if self._page is None:
            self._page = _status_page()
        return Response(
            200,
            self._page,
            "text/html; charset=utf-8",
            {
                # Everything is inline; nothing may be fetched from elsewhere.
                "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                "script-src 'unsafe-inline'; img-src 'self' data:",
            },
        )

    async def _healthz(self, request: Request) -> Response:
        return Response(200, b"ok\n", "text/plain; charset=utf-8")

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.control.metrics.exposition(), METRICS_CONTENT_TYPE)

    async def _status(self, request: Request) -> Response:
        return json_response(self.status())

    async def _explain(self, request: Request) -> Response:
        query = request.query
        name = query.get("name")
        if not name:
            raise HttpError(400, "name= is required, e.g. /api/explain?name=www.example.com&subnet=192.0.2.0/24")
        client, subnet = query.get("client") or None, query.get("subnet") or None
        if client and subnet:
            raise HttpError(400, "give client= or subnet=, not both")
        try:
            result = explain_query(
                self.control.snapshot,
                name,
                query.get("qtype", "A").upper(),
                client,
                subnet,
                health=self.control.monitor.view,
                spill=self.control.load.view,
            )
        except (ValueError, dns.exception.DNSException) as exc:
            raise HttpError(400, str(exc) or type(exc).__name__) from exc
        cluster = self.control.cluster
        if cluster is not None and result.get("kind") == "service":
            result["cluster"] = {
                "instance": cluster.instance,
                "etcd": cluster.etcd_up,
                "datacenters": {
                    c["name"]: cluster.datacenter(c["name"]) for c in result["candidates"] if c["name"] in cluster.votes
                },
            }
        return json_response(result)

    # -- admin actions -----------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            raise HttpError(403, DISABLED)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), self._token.encode()):
            raise HttpError(
                401,
                "a valid token is required: Authorization: Bearer TOKEN",
                {"WWW-Authenticate": 'Bearer realm="gslb"'},
            )

    def _target(self, request: Request, *, undrain: bool) -> tuple[str, str]:
        """The (kind, name) an admin request names: a data center, or one of their VIPs."""
        try:
            data = json.loads(request.body or b"{}")
            text = str(data["target"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise HttpError(400, 'send JSON {"target": NAME}, NAME a data center or a VIP') from exc
        datacenters = self.control.snapshot.config.datacenters
        if text in datacenters:
            return "datacenter", text
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(text)
            if any(address in dc.vips for dc in datacenters.values()):
                return "vip", str(address)
            text = str(address)
        if undrain and text in self.control.monitor.drained:
            return "other", text  # drained before the config dropped it
        names = ", ".join(datacenters) or "none configured"
        raise HttpError(404, f"{text!r} is neither a data center ({names}) nor one of their VIPs")

    async def _drain(self, request: Request) -> Response:
        self._authorize(request)
        kind, name = self._target(request, undrain=False)
        already = name in self.control.monitor.drained
        shared = await self.commands.drain(name)
        log.info("http: drained %s %s", kind, name)
        return json_response({"drained": name, "kind": kind, "already": already, **_shared(shared)})

    async def _undrain(self, request: Request) -> Response:
        self._authorize(request)
        kind, name = self._target(request, undrain=True)
        was = name in self.control.monitor.drained
        shared = None
        if was or self.control.cluster is not None:  # with a cluster, undrain everywhere anyway
            shared = await self.commands.undrain(name)
            log.info("http: undrained %s %s", kind, name)
        return json_response({"undrained": name, "kind": kind, "was_drained": was, **_shared(shared)})

    async def _reload(self, request: Request) -> Response:
        self._authorize(request)
        ok = await self.commands.reload("HTTP API")
        snapshot = self.control.snapshot
        if not ok:
            return json_response({"ok": False, "errors": self.control.last_reload_error}, 422)
        return json_response(
            {
                "ok": True,
                "loaded_at": snapshot.loaded_at,
                "zones": len(snapshot.zones.zones),
                "services": len(snapshot.services),
            }
        )

    # -- the status data ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything the status page shows, as plain data (also /api/status)."""
        control = self.control
        snapshot = control.snapshot
        view = control.monitor.view
        monitor = control.monitor
        counters = control.counters()
        rates = self._rates()
        answer_rates = rates["answers"]
        targets = {target.name: target for target in monitor.targets}
        cluster = control.cluster
        loads = _loads(control.load.status(), snapshot, view)
        datacenters = []
        for name, dc in snapshot.config.datacenters.items():
            status = view.status(name)
            target = targets.get(name)
            stats = monitor.stats(name) if target is not None else None
            datacenters.append(
                {
                    "name": name,
                    "up": view.is_up(name),
                    "drained": bool(status and status.drained),
                    "reason": status.reason if status else "not probed",
                    "since": status.since if status else None,
                    "probe": f"{endpoint(target)} {target.check.kind}" if target else None,
                    "last_result": stats.last_result if stats and stats.probes else None,
                    "last_latency_ms": (
                        round(stats.last_latency * 1000, 2) if stats and stats.last_latency is not None else None
                    ),
                    "last_probe": stats.last_probe if stats else None,
                    "probes": stats.probes if stats else 0,
                    "probe_failures": stats.failures if stats else 0,
                    "latitude": dc.latitude,
                    "longitude": dc.longitude,
                    "country": dc.country,
                    "continent": dc.continent,
                    "vips": [{"address": str(vip), "drained": not view.is_up(str(vip))} for vip in dc.vips],
                    "answers_per_second": round(sum(rate for (_, d), rate in answer_rates.items() if d == name), 2),
                    "load": loads.get(name),  # the load source's report and the share spilled; None: no source
                    **(cluster.datacenter(name) if cluster is not None and target is not None else {}),
                }
            )
        countries = self._countries(snapshot, view)
        default = snapshot.locate(None)
        services = []
        for service in snapshot.config.services.values():
            decision = choose(service, snapshot.config.datacenters, default, view, 4)
            per_dc = {d: round(rate, 2) for (s, d), rate in answer_rates.items() if s == service.name}
            services.append(
                {
                    "name": service.name,
                    "policy": service.policy,
                    "datacenters": list(service.datacenters),
                    "answers": service.answers,
                    "ttl": service.ttl,
                    "ttl_degraded": service.ttl_degraded,
                    "ttl_now": decision.ttl,
                    "degraded": decision.ttl != service.ttl,
                    "all_down": service.all_down,
                    "answers_per_second": round(sum(per_dc.values()), 2),
                    "answers_per_second_by_datacenter": per_dc,
                    "map": countries.get(service.name),
                }
            )
        total = counters.fast + counters.general
        meta = snapshot.geo.metadata
        return {
            "version": __version__,
            "now": time.time(),
            "started": control.started,
            "listen": [str(a) for a in control.bound],
            "http": str(self.address) if self.address else None,
            "workers": max(control.options.workers, 1),
            "probes": control.options.probes,
            "admin": self._token is not None,
            "snapshot": {
                "loaded_at": snapshot.loaded_at,
                "zones": len(snapshot.zones.zones),
                "records": snapshot.zones.record_count,
                "services": len(snapshot.services),
                "geodb": f"{meta.database_type} ({meta.path.name}, built {meta.build_date})",
            },
            "reloads": {**control.reloads, "last_error": control.last_reload_error},
            "queries": {
                "total": rates["total"],
                "per_second": round(rates["queries"], 2),
                "fast": counters.fast,
                "general": counters.general,
                "cache_hit_ratio": round(counters.fast / total, 4) if total else None,
                "truncated": counters.truncated,
                "dropped": counters.dropped,
            },
            "drained": sorted(monitor.drained),
            "cluster": cluster.status() if cluster is not None else None,
            "datacenters": datacenters,
            "services": services,
        }

    def _rates(self) -> dict[str, Any]:
        """Per-second rates over the last RATE_WINDOW seconds of samples, and the latest total."""
        self._take_sample()
        samples = self._samples
        last = samples[-1]
        first = next((s for s in samples if last.at - s.at <= RATE_WINDOW + 0.5), last)
        span = last.at - first.at
        if span < 0.5:  # just started: no rate yet
            return {"total": last.queries, "queries": 0.0, "answers": {}}
        answers = {key: (count - first.answers.get(key, 0)) / span for key, count in last.answers.items()}
        return {"total": last.queries, "queries": (last.queries - first.queries) / span, "answers": answers}

    def _countries(self, snapshot: Snapshot, view: HealthView) -> dict[str, Any]:
        """Per service, the data center a client in each country is sent to now.

        A client is placed at its country's centroid (the embedded table's), as a country-
        level database would place it. Weighted services are not by location: None.
        Cached until the snapshot or the health verdicts change.
        """
        key = (id(snapshot), snapshot.loaded_at, view.version)
        if key == self._map_key:
            return self._map
        datacenters = snapshot.config.datacenters
        places = [
            (
                code,
                Location(
                    country=code, continent=c.continent, latitude=c.latitude, longitude=c.longitude, source="database"
                ),
            )
            for code, c in country_centroids().items()
        ]
        out: dict[str, Any] = {}
        for service in snapshot.config.services.values():
            if service.policy == "weighted":
                out[service.name] = None
                continue
            sent: dict[str, str | None] = {}
            for code, location in places:
                decision = choose(service, datacenters, location, view, 4)
                sent[code] = decision.datacenters[0] if decision.datacenters else None
            out[service.name] = sent
        self._map_key, self._map = key, out
        return out


def _loads(loads: dict[str, dict[str, Any]], snapshot: Snapshot, view: HealthView) -> dict[str, dict[str, Any]]:
    """The load sources' status, each with where its spilled clients go: for the clients near it,
    the next healthy choice of each of its services (at its max passed over, as answers do)."""
    config = snapshot.config
    for name, status in loads.items():
        dc = config.datacenters.get(name)
        to: set[str] = set()
        if status["share"] > 0 and dc is not None:
            near = Location(latitude=dc.latitude, longitude=dc.longitude, country=dc.country, continent=dc.continent)
            for service in config.services.values():
                if name in service.datacenters and service.policy != "weighted":
                    order = rank(service, config.datacenters, near)
                    rest = [m for m in (*order.primary, *order.rest) if m != name and view.is_up(m)]
                    free = [m for m in rest if not loads.get(m, {}).get("full")]
                    to.update((free or rest)[:1])
        status["to"] = sorted(to)
    return loads


def _shared(shared: bool | None) -> dict[str, bool]:
    """With [cluster], whether a drain or undrain reached etcd (see ControlCommands)."""
    return {} if shared is None else {"shared": shared}


def _status_page() -> bytes:
    """The status page: the template with the world's countries drawn in, built once."""
    world = json.loads((DATA_DIR / "world-110m.json").read_text(encoding="utf-8"))
    width, height = world["width"], world["height"]
    scale, top = world["scale"], world["top"]
    grid = []
    for lon in range(-150, 180, 30):
        x = (lon + 180) * scale
        grid.append(f"M{x},0V{height}")
    for lat in range(-30, int(top), 30):
        y = (top - lat) * scale
        grid.append(f"M0,{y:g}H{width}")
    paths = "\n".join(
        f'<path data-cc="{c["cc"]}" d="{c["d"]}"><title>{html.escape(c["name"])}</title></path>'
        for c in world["countries"]
    )
    svg = (
        f'<svg id="map" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="World map: where each region is sent" '
        f'data-scale="{scale}" data-top="{top}">'
        f'<rect class="sea" width="{width}" height="{height}"/>'
        f'<path class="grid" d="{"".join(grid)}"/>'
        f'<g id="countries">{paths}</g><g id="markers"></g></svg>'
    )
    template = (STATIC_DIR / "status.html").read_text(encoding="utf-8")
    page = template.replace("<!--MAP-->", svg).replace("{{VERSION}}", html.escape(__version__))
    page = page.replace("{{SOURCE}}", html.escape(world["source"]))
    return page.encode("utf-8")
