"""Load feedback: the load sources, the damped spill controller, spilled answers, and the closed loop
through real nginx (stub_status) with a population of client networks."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import http.client
import ipaddress
import itertools
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import dns.edns
import dns.message
import dns.query
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb.dns.answer import Answerer
from gslb.health.load import LoadError, LoadPoller, parse_haproxy_csv, parse_json, parse_stub_status
from gslb.health.view import HealthView, Status
from gslb.snapshot import Snapshot, Sources, build
from gslb.steering.spill import (
    MAX_STEP,
    Controller,
    Limits,
    Sample,
    SpillView,
    client_hash,
    client_network,
    goals,
    held_share,
    poll_interval,
)
from tests.conftest import EXAMPLE_ZONES, Server, need
from tests.secondtier import DATACENTERS, Backend, Balancer, free_addresses, running

TTL = 2  # the service's TTL and the load sources' interval in the closed loop
EUROPE = [f"85.214.{i}.0/24" for i in range(200)] + [f"193.170.{i}.0/24" for i in range(40)]  # DE, AT
AMERICA = [f"12.0.{i}.0/24" for i in range(30)]  # US
ASIA = [f"133.1.{i}.0/24" for i in range(30)]  # JP


def write_zones(
    directory: Path,
    vips: dict[str, str],
    port: int,
    loads: dict[str, str],
    kind: str = "nginx",
    extra: str = "",
    **target: float,
) -> Path:
    """The example zone with a config of www.example.com (nearest, TTL 2) over us, eu and ap,
    probed on `port`, each with a load source of `kind` at loads[name] and target[name]."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_ZONES / "example.com.zone", directory / "example.com.zone")
    places = {"us": (39.04, -77.49, "US", "NA"), "eu": (50.11, 8.68, "DE", "EU"), "ap": (35.68, 139.69, "JP", "AS")}
    text = [
        "[geo]",
        'default = { country = "US", continent = "NA", latitude = 39.04, longitude = -77.49 }',
        "[checks.web]",
        f'kind = "http"\nport = {port}\npath = "/health"\ninterval = 1.0\ntimeout = 0.8\nfall = 2\nrise = 3',
    ]
    for name, (lat, lon, country, continent) in places.items():
        text += [
            f"[datacenters.{name}]",
            f'vips = ["{vips[name]}"]\nlatitude = {lat}\nlongitude = {lon}\ncountry = "{country}"',
            f'continent = "{continent}"\ncheck = "web"',
        ]
        if name in loads:
            text.append(
                f'load = {{ kind = "{kind}", url = "{loads[name]}", interval = {TTL}.0{extra}'
                + (f", target = {target[name]:g} }}" if name in target else " }")
            )
    text += [
        '[services."www.example.com."]',
        f'datacenters = ["us", "eu", "ap"]\npolicy = "nearest"\nttl = {TTL}\nttl_degraded = {TTL}',
    ]
    (directory / "gslb.toml").write_text("\n".join(text) + "\n")
    return directory


# -- the client hash ---------------------------------------------------------------------


def _int(address: str) -> int:
    return int(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("version", "address", "prefix", "bits", "network"),
    [
        (4, "85.214.3.77", None, 24, "85.214.3.0"),  # a resolver's address: its /24
        (4, "85.214.3.0", 24, 24, "85.214.3.0"),
        (4, "85.214.3.77", 32, 24, "85.214.3.0"),  # a longer ECS source: still the /24
        (4, "85.214.0.0", 16, 16, "85.214.0.0"),  # a shorter one: the source network itself
        (4, "0.0.0.0", 0, 0, "0.0.0.0"),
        (6, "2001:db8:1:2ff:3::1", None, 56, "2001:db8:1:200::"),
        (6, "2001:db8:1::", 48, 48, "2001:db8:1::"),
    ],
)
def test_client_network(version: int, address: str, prefix: int | None, bits: int, network: str) -> None:
    assert client_network(version, _int(address), prefix) == (bits, _int(network))


def test_client_hash_is_stable_and_even() -> None:
    hashes = [client_hash(4, _int(f"85.{i // 256}.{i % 256}.0"), 24) for i in range(4000)]
    assert all(0 <= h < 1 for h in hashes)
    assert hashes == [client_hash(4, _int(f"85.{i // 256}.{i % 256}.0"), 24) for i in range(4000)]
    for share in (0.1, 0.3, 0.5, 0.9):
        assert abs(sum(h < share for h in hashes) / len(hashes) - share) < 0.03
    # Another prefix length or family is another network.
    assert client_hash(4, _int("85.214.0.0"), 16) != client_hash(4, _int("85.214.0.0"), 24)
    assert client_hash(6, 0, 0) != client_hash(4, 0, 0)


# -- the controller (pure) ---------------------------------------------------------------


def test_held_share_follows_the_ttl() -> None:
    history = [(-float("inf"), 0.0), (10.0, 0.4)]
    assert held_share(history, 10.0, 2) == 0.0
    assert held_share(history, 11.0, 2) == pytest.approx(0.2)
    assert held_share(history, 12.0, 2) == pytest.approx(0.4)
    assert held_share(history, 9.0, 0) == 0.0 and held_share(history, 10.5, 0) == 0.4


def test_goals_are_targets_while_any_has_room_else_headroom() -> None:
    loads = {"eu": (120.0, 80.0, 120.0), "us": (60.0, 100.0, 200.0)}
    assert goals(loads, ["eu", "us"]) == {"eu": 80.0, "us": 100.0}
    # A healthy data center without data counts as room.
    assert goals({"eu": (120.0, 80.0, 120.0)}, ["eu", "ap"]) == {"eu": 80.0}
    # Every one over target: the 50 over the targets spread as the headroom (40 : 100).
    over = goals({"eu": (120.0, 80.0, 120.0), "us": (110.0, 100.0, 200.0)}, ["eu", "us"])
    assert over["eu"] == pytest.approx(80 + 50 * 40 / 140) and over["us"] == pytest.approx(100 + 50 * 100 / 140)
    assert sum(over.values()) == pytest.approx(230)
    # Past every max: in proportion to the maxima.
    past = goals({"eu": (200.0, 80.0, 120.0), "us": (200.0, 100.0, 200.0)}, ["eu", "us"])
    assert past == {"eu": pytest.approx(150.0), "us": pytest.approx(250.0)}
    # A down one is not counted.
    assert goals({"eu": (120.0, 80.0, 120.0), "us": (0.0, 100.0, 200.0)}, ["eu"])["eu"] == pytest.approx(120)


def _simulate(
    demand: Callable[[float], float], intervals: int, share: float = 0.0, ttl: float = 2.0, interval: float = 2.0
) -> list[tuple[float, float, float]]:
    """The loop in miniature: resolvers re-ask evenly over a TTL, the load is the demand of the
    clients holding an answer to it, polled every interval. (end, load, share) per poll."""
    controller = Controller({"eu": Limits(80.0, 120.0, interval, ttl)})
    out = []
    for i in range(1, intervals + 1):
        start, end = (i - 1) * interval, i * interval
        points = [start + (end - start) * (k + 0.5) / 20 for k in range(20)]
        history = controller.history("eu")
        load = statistics.fmean(demand(t) * (1 - held_share(history, t, ttl)) for t in points)
        controller.observe("eu", Sample(load, start, end), end, ["eu", "us"])
        out.append((end, load, controller.view.share("eu")))
    return out


def test_controller_settles_without_swinging_and_comes_back() -> None:
    steps = _simulate(lambda t: 120.0 if t < 40 else 60.0, 40)
    loads = [load for _, load, _ in steps]
    shares = [0.0] + [share for _, _, share in steps]
    assert all(abs(b - a) <= MAX_STEP + 1e-9 for a, b in itertools.pairwise(shares))
    settled = next(i for i in range(20) if all(abs(x - 80) <= 8 for x in loads[i:20]))
    assert settled < 6, loads[:8]
    assert max(loads[settled:20]) - min(loads[settled:20]) <= 0.15 * 80
    assert shares[20] == pytest.approx(1 / 3, abs=0.03)
    # Demand halves at t = 40: back to no spilling within 6 intervals.
    back = next(i for i in range(20, 40) if shares[i + 1] == 0)
    assert back - 20 < 6


def test_controller_one_change_per_interval_and_no_data_at_the_damped_rate() -> None:
    controller = Controller({"eu": Limits(80.0, None, 2.0, 2.0)})
    assert controller.bounds("eu") == (80.0, 120.0)  # max: 1.5 x target
    # 0.5 wanted, a step is at most MAX_STEP, but past its max (120) the share is what brings it under.
    first = controller.observe("eu", Sample(160.0, 0, 2), 2.0, ["eu", "us"])
    assert first is not None and first.after == 0.25 and "past its max 120" in first.why
    controller = Controller({"eu": Limits(80.0, None, 2.0, 2.0)})
    first = controller.observe("eu", Sample(118.0, 0, 2), 2.0, ["eu", "us"])
    assert first is not None and first.after == MAX_STEP  # bounded: GAIN x 0.32 wanted
    assert controller.observe("eu", Sample(160.0, 2, 3), 3.0, ["eu", "us"]) is None  # within the interval
    assert "eu" in controller.view.full  # at or above its max
    controller.observe("eu", Sample(150.0, 2, 4), 4.0, ["eu", "us"])
    share = controller.view.share("eu")
    assert MAX_STEP < share <= 2 * MAX_STEP
    # Down: it gets nothing and keeps its share for when it is back.
    assert controller.observe("eu", Sample(0.0, 4, 6), 6.0, ["us"]) is None
    assert controller.view.share("eu") == share
    # No data: down to 0 one bounded step per interval, never at once.
    seen = []
    for i in range(4):
        controller.observe("eu", Sample(None, 8 + 2 * i, 8 + 2 * i), 8.0 + 2 * i, ["eu", "us"])
        seen.append(controller.view.share("eu"))
    assert seen[0] == pytest.approx(share - MAX_STEP) and seen[-1] == 0.0
    assert all(a - b <= MAX_STEP + 1e-9 for a, b in zip([share, *seen], seen, strict=False))


# -- the parsers -------------------------------------------------------------------------

STUB = "Active connections: 291 \nserver accepts handled requests\n 16630948 16630948 31070465 \nReading: 6 Writing: 179 Waiting: 106 \n"  # noqa: E501
HAPROXY = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
    "weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,"
    "rate_lim,rate_max,\n"
    "web,FRONTEND,,,12,40,2000,900,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,35,0,61,\n"
    "app,BACKEND,0,0,7,9,200,500,0,0,0,0,,0,0,0,0,UP,2,2,0,,0,100,0,,1,3,0,,500,,1,18,,30,\n"
)


def test_parsers() -> None:
    assert parse_stub_status(STUB, "requests_per_second").counter == 31070465
    assert parse_stub_status(STUB, "active_connections").gauge == 291
    frontend = parse_haproxy_csv(HAPROXY, "rate", "web", "FRONTEND")
    assert frontend.gauge == 35 and frontend.max is None
    backend = parse_haproxy_csv(HAPROXY, "scur", "app", "BACKEND")
    assert backend.gauge == 7 and backend.max == 200  # slim
    assert parse_json('{"current": 50, "target": 80, "max": 100}') == parse_json('{"max":100,"target":80,"current":50}')
    assert parse_json('{"current": 5}').target is None
    for bad, message in [
        (lambda: parse_stub_status("<html>", "active_connections"), "not an nginx stub_status"),
        (lambda: parse_haproxy_csv(STUB, "rate", "web", "FRONTEND"), "not an HAProxy stats CSV"),
        (lambda: parse_haproxy_csv(HAPROXY, "rate", "web", "BACKEND"), "no BACKEND row for 'web'"),
        (lambda: parse_json("[1]"), "expected a JSON object"),
        (lambda: parse_json('{"target": 3}'), 'no "current"'),
        (lambda: parse_json('{"current": "lots"}'), "current: expected a number"),
        (lambda: parse_json('{"current": true}'), "current: expected a number"),
        (lambda: parse_json('{"current": 1, "max": 0}'), "above 0"),
        (lambda: parse_json("{"), "not JSON"),
    ]:
        with pytest.raises(LoadError, match=re.escape(message)):
            bad()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.sampled_from([STUB, HAPROXY, '{"current": 1}']).map(lambda t: t[: len(t) // 2])))
def test_parsers_never_raise_anything_but_load_error(text: str) -> None:
    for parse in (
        lambda: parse_stub_status(text, "requests_per_second"),
        lambda: parse_haproxy_csv(text, "rate", "web", "FRONTEND"),
        lambda: parse_haproxy_csv("# pxname,svname,rate\n" + text, "rate", "web", "FRONTEND"),
        lambda: parse_json(text),
    ):
        with contextlib.suppress(LoadError):
            parse()


def test_poller_json_source_and_no_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A json load object over real HTTP; its own target and max win; two failures are no data."""
    backend = Backend('{"current": 150, "target": 100, "max": 130}')
    url = f"http://127.0.0.1:{backend.port}/load"
    zones = write_zones(tmp_path, dict(DATACENTERS), 8080, {"eu": url}, "json", eu=50)
    config = build(Sources(zones)).config
    views: list[SpillView] = []
    poller = LoadPoller(config, is_up=lambda name: True, on_change=views.append)
    state = poller.sources["eu"]

    async def polls(n: int) -> None:
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            for _ in range(n):
                await poller.poll_once("eu", state, client)
                clock[0] += TTL

    clock = [100.0]
    poller.clock = lambda: clock[0]
    asyncio.run(polls(1))
    assert poller.controller.bounds("eu") == (100.0, 130.0)  # the document's, not the config's 50
    assert views[-1].share("eu") == MAX_STEP and "eu" in views[-1].full
    status = poller.status()["eu"]
    assert status["load"] == 150 and status["target"] == 100 and status["state"] == "ok"
    backend.close()
    with caplog.at_level("INFO", logger="gslb.load"):
        asyncio.run(polls(4))
    lines = [r.getMessage() for r in caplog.records if "gives no data" in r.getMessage()]
    assert len(lines) == 1 and f"eu (json {url})" in lines[0]
    assert views[-1].share("eu") == 0.0 and poller.status()["eu"]["state"] == "no data"


# -- spilled answers (the answer path, both of its paths) --------------------------------


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    zones = write_zones(
        tmp_path_factory.mktemp("zones"), dict(DATACENTERS), 8080, {"eu": "http://127.0.2.1:8081/stub_status"}, eu=80
    )
    return build(Sources(zones))


def _query(subnet: str | None) -> bytes:
    options = [] if subnet is None else [dns.edns.ECSOption.from_text(subnet)]
    return dns.message.make_query("www.example.com.", "A", use_edns=0, options=options).to_wire()


def _answered(reply: bytes) -> tuple[str, int]:
    message = dns.message.from_wire(reply)
    scope = next(o.scopelen for o in message.options if isinstance(o, dns.edns.ECSOption))
    return message.answer[0][0].address, scope


def test_spilled_answers_by_client_network(snapshot: Snapshot) -> None:
    answerer = Answerer(snapshot, HealthView())
    eu, us, ap = (DATACENTERS[n] for n in ("eu", "us", "ap"))
    assert {_answered(answerer.handle(_query(s), "127.0.0.1") or b"")[0] for s in EUROPE} == {eu}
    answerer.set_spill(SpillView(1, MappingProxyType({"eu": 0.4}), frozenset()))
    got = {}
    for subnet in EUROPE:
        wire = _query(subnet)
        fast = answerer.handle(wire, "127.0.0.1")
        general = answerer._general(wire, "127.0.0.1", False)[0]
        assert fast is not None and general is not None
        assert fast == general  # the fast path and the general path agree byte for byte
        got[subnet] = address, scope = _answered(fast)
        assert scope == 24  # narrowed to the hashed network
    spilled = [s for s, (a, _) in got.items() if a != eu]
    assert {got[s][0] for s in spilled} == {us}  # the next in distance, never ap
    assert 0.3 < len(spilled) / len(EUROPE) < 0.5
    # Stable: a larger share keeps every network already spilled where it is.
    answerer.set_spill(SpillView(2, MappingProxyType({"eu": 0.5}), frozenset()))
    assert all(_answered(answerer.handle(_query(s), "127.0.0.1") or b"")[0] == us for s in spilled)
    # us at its max: spilled clients pass it over.
    answerer.set_spill(SpillView(3, MappingProxyType({"eu": 0.5}), frozenset({"us"})))
    assert _answered(answerer.handle(_query(spilled[0]), "127.0.0.1") or b"")[0] == ap
    # Clients ECS does not say much about: a /16 is hashed whole; no ECS: the resolver's /24.
    answerer.set_spill(SpillView(4, MappingProxyType({"eu": 0.4}), frozenset()))
    assert _answered(answerer.handle(_query("85.214.0.0/16"), "127.0.0.1") or b"")[1] >= 16
    resolver = spilled[0].replace(".0/24", ".53")
    plain = dns.message.make_query("www.example.com.", "A").to_wire()
    reply = dns.message.from_wire(answerer.handle(plain, resolver) or b"")
    assert reply.answer[0][0].address == us
    # Other data centers' clients are untouched, and their answers stay wide.
    address, scope = _answered(answerer.handle(_query(AMERICA[0]), "127.0.0.1") or b"")
    assert address == us and scope < 24
    # Health first: eu down, everyone of Europe at us whatever the share.
    answerer.set_health(HealthView(5, MappingProxyType({"eu": _down()})))
    assert {_answered(answerer.handle(_query(s), "127.0.0.1") or b"")[0] for s in EUROPE} == {us}


def _down() -> Status:
    return Status(False, "test", 0.0)


# -- the closed loop: real nginx, real DNS, a population of client networks -------------


@dataclass
class Network:
    subnet: str
    region: str  # where it is: eu, us or ap
    address: str | None = None  # the VIP it was answered


class Population:
    """Client networks that each resolve www.example.com through gslb (real UDP, an ECS subnet of
    its own) whenever their TTL runs out, and send a fixed request rate to the VIP they got.

    Cheap on purpose (a heap of expiries, requests paced per VIP), so that on two busy cores the
    load it offers stays even and what nginx counts is the steering, not the generator's stalls.
    """

    def __init__(self, dns_port: int, http_port: int, rates: dict[str, float]):
        rng = random.Random(15)
        now = time.monotonic()
        self.networks = [
            Network(subnet, region)
            for region, subnets in (("eu", EUROPE), ("us", AMERICA), ("ap", ASIA))
            for subnet in subnets
        ]
        # Each network's first question spread over a TTL, as if it had been asking all along.
        self._due = [(now + rng.uniform(0, TTL), i) for i in range(len(self.networks))]
        heapq.heapify(self._due)
        self.dns_port, self.http_port = dns_port, http_port
        self.rates = dict(rates)  # requests a second per network, by region
        self.errors = 0  # requests that failed (a balancer stopped)
        self.queries = 0
        self._credit: dict[str, float] = {}  # requests due, by VIP
        self._connections: dict[str, http.client.HTTPConnection] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="population", daemon=True)

    def __enter__(self) -> Population:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for connection in self._connections.values():
            connection.close()

    def at(self, region: str) -> dict[str, int]:
        """How many of a region's networks hold each VIP now."""
        out: dict[str, int] = {}
        for network in self.networks:
            if network.region == region and network.address is not None:
                out[network.address] = out.get(network.address, 0) + 1
        return out

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.02):
            now = time.monotonic()
            elapsed, last = now - last, now
            while self._due[0][0] <= now:
                _, index = heapq.heappop(self._due)
                heapq.heappush(self._due, (now + self._resolve(self.networks[index]), index))
            demand: dict[str, float] = {}
            for network in self.networks:
                if network.address is not None:
                    demand[network.address] = demand.get(network.address, 0.0) + self.rates[network.region]
            for vip, rate in demand.items():
                credit = self._credit.get(vip, 0.0) + rate * elapsed
                while credit >= 1:
                    credit -= 1
                    self._request(vip)
                self._credit[vip] = credit

    def _resolve(self, network: Network) -> float:
        """Ask for the network's answer; seconds until it asks again (its TTL)."""
        query = dns.message.make_query(
            "www.example.com.", "A", use_edns=0, options=[dns.edns.ECSOption.from_text(network.subnet)]
        )
        self.queries += 1
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=1)
        except (OSError, dns.exception.Timeout):
            return 0.1
        rrset = reply.answer[0]
        network.address = rrset[0].address
        return float(rrset.ttl)

    def _request(self, vip: str) -> None:
        connection = self._connections.get(vip)
        if connection is None:
            connection = self._connections[vip] = http.client.HTTPConnection(vip, self.http_port, timeout=1)
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            self.errors += 1
            connection.close()
            del self._connections[vip]


class Meter:
    """The request rate at one nginx, from its own stub_status counter, over windows of one interval."""

    def __init__(self, balancer: Balancer):
        self.balancer = balancer
        self.readings: list[tuple[float, int]] = []

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = time.monotonic()
            count = self.balancer.requests()
            self.readings.append(((before + time.monotonic()) / 2, count))  # when nginx read it, near enough
            time.sleep(0.5)

    def rates(self, since: float) -> list[tuple[float, float]]:
        """(window end, requests a second over the TTL before it), windows sliding by half a second."""
        out = []
        for i, (t, count) in enumerate(self.readings):
            if t < since + TTL:
                continue
            j = next(k for k in range(i, -1, -1) if t - self.readings[k][0] >= TTL)
            t0, c0 = self.readings[j]
            out.append((t, (count - c0) / (t - t0)))
        return out


def _wait(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def second_tier(tmp_path: Path) -> Iterator[dict[str, Balancer]]:
    """nginx for us, eu and ap on loopback addresses of this run, each with stub_status on a port of its own."""
    need("nginx")
    with running(tmp_path / "nginx", status=True) as balancers:
        yield balancers


EU_TARGET = 80.0  # requests a second at eu's nginx; European demand is 240 networks x 0.5 = 120


@pytest.mark.nginx
@pytest.mark.timeout(150)
def test_closed_loop_through_nginx(
    start_server: type[Server], second_tier: dict[str, Balancer], tmp_path: Path
) -> None:
    eu, us, ap = (second_tier[n] for n in ("eu", "us", "ap"))
    zones = write_zones(
        tmp_path / "zones",
        {name: b.vip for name, b in second_tier.items()},
        eu.port,
        {name: b.status_url for name, b in second_tier.items()},
        eu=EU_TARGET,
        us=100,
        ap=100,
    )
    server = start_server("--zones", str(zones), "--state-file", str(tmp_path / "state.json"), "--http", "127.0.0.1:0")
    found = re.search(r"http on (127\.0\.0\.1:\d+)", server.wait_log(r"http on 127\.0\.0\.1:\d+"))
    assert found
    web = f"http://{found.group(1)}"
    meter = Meter(eu)
    with Population(server.port, eu.port, {"eu": 0.5, "us": 0.5, "ap": 0.5}) as population:
        started = time.monotonic()
        # 1. eu's measured rate settles within 10 % of its target within 6 intervals, and stays.
        meter.run(9 * TTL)
        rates = meter.rates(started)
        near = [abs(rate - EU_TARGET) <= 0.1 * EU_TARGET for _, rate in rates]
        settled_at = next(i for i in range(len(near)) if all(near[i:]))
        settle = rates[settled_at][0] - started
        after = [rate for _, rate in rates[settled_at:]]
        swing = (max(after) - min(after)) / EU_TARGET
        print(f"\nsettled within 10 % of {EU_TARGET:g}/s after {settle:.1f} s ({settle / TTL:.1f} intervals); ")
        print(f"residual swing {swing:.1%} of target; rates {[round(r) for _, r in rates]}")
        assert settle <= 6 * TTL, rates
        assert swing <= 0.15, rates
        assert server.wait_log(r"spill eu: share 0% -> \d+% of its clients to their next choice \(load [\d.]+ ")

        # 2. The spilled networks go to us, the next in distance, not to ap.
        europe = population.at("eu")
        assert set(europe) == {eu.vip, us.vip}, europe
        assert 0.2 < europe[us.vip] / len(EUROPE) < 0.5, europe
        assert set(population.at("us")) == {us.vip} and set(population.at("ap")) == {ap.vip}
        # Visible: the status page and /metrics show eu's load against its target, the share and where.
        status = {d["name"]: d for d in httpx.get(f"{web}/api/status", timeout=5).json()["datacenters"]}
        load = status["eu"]["load"]
        assert load["target"] == EU_TARGET and load["state"] == "ok" and 0.2 < load["share"] < 0.5, load
        assert load["to"] == ["us"] and status["us"]["load"]["share"] == 0
        metrics = httpx.get(f"{web}/metrics", timeout=5).text
        ratio = re.search(r'^gslb_datacenter_spill_ratio\{datacenter="eu"\} (\S+)$', metrics, re.M)
        assert ratio and float(ratio.group(1)) == load["share"]
        assert re.search(r'^gslb_datacenter_load_target\{datacenter="eu"\} 80\.0$', metrics, re.M)
        assert re.search(r'^gslb_datacenter_load\{datacenter="eu",metric="requests_per_second"\} \d', metrics, re.M)
        # gslb explain says which networks were spilled and why.
        spilled = next(n.subnet for n in population.networks if n.region == "eu" and n.address == us.vip)
        explained = httpx.get(f"{web}/api/explain", params={"name": "www.example.com", "subnet": spilled}).json()
        assert explained["spill"]["spilled"] and explained["answer"] == [us.vip], explained
        assert explained["ecs_scope"] == 24 and "hashes to" in explained["spill"]["why"]

        # 3. Demand drops below target: the spilled networks come back within 6 intervals.
        population.rates["eu"] = 0.25
        back = _wait(lambda: population.at("eu") == {eu.vip: len(EUROPE)}, 6 * TTL)
        print(f"demand below target: every European network back at eu after {back:.1f} s")

        # 4. Demand up again, then eu's load source dies (not its balancer): geo and health alone
        # steer, one log line says so, and eu is never taken for down.
        population.rates["eu"] = 0.5
        _wait(lambda: population.at("eu").get(us.vip, 0) >= 0.25 * len(EUROPE), 8 * TTL)
        mark = server.mark()
        eu.stop_status()
        server.wait_log(rf"load source eu \(nginx {re.escape(eu.status_url)}\) gives no data", start=mark)
        back = _wait(lambda: population.at("eu") == {eu.vip: len(EUROPE)}, 6 * TTL)
        print(f"load source gone: every European network back at eu after {back:.1f} s")
        time.sleep(2 * TTL)  # more failed polls: still the one line
        lines = server.lines[mark:]
        assert len([line for line in lines if "gives no data" in line]) == 1, lines
        assert not [line for line in lines if re.search(r"\beu\b.* DOWN", line)], lines

        # 5. eu fails its health probe: everyone moves, as before.
        errors = population.errors
        eu.stop()
        server.wait_log(r"eu \(.*\) DOWN")
        moved = _wait(lambda: population.at("eu") == {us.vip: len(EUROPE)}, 3 * TTL)
        print(f"eu down: every European network at us {moved:.1f} s after the verdict")
        assert population.errors > errors  # the cached answers met a dead balancer until they expired
    print(f"{population.queries} DNS queries")


def test_explain_says_when_spilled(snapshot: Snapshot) -> None:
    from gslb.ops.explain import explain_query

    spill = SpillView(1, MappingProxyType({"eu": 0.4}), frozenset(), MappingProxyType({"eu": "load 120.0 above"}))
    results = [explain_query(snapshot, "www.example.com", "A", None, s, spill=spill) for s in EUROPE[:40]]
    moved = [r for r in results if r["spill"]["spilled"]]
    stayed = [r for r in results if not r["spill"]["spilled"]]
    assert moved and stayed
    assert all(r["answer"] == [DATACENTERS["us"]] and r["ecs_scope"] == 24 for r in moved)
    assert all(r["answer"] == [DATACENTERS["eu"]] and r["ecs_scope"] == 24 for r in stayed)
    assert "spilled past eu (load above target)" in moved[0]["why"]
    assert "eu spills 40% of its clients (load 120.0 above)" in moved[0]["spill"]["why"]
    # The server agrees with each one.
    answerer = Answerer(snapshot, HealthView())
    answerer.set_spill(spill)
    for subnet, result in zip(EUROPE[:40], results, strict=True):
        assert [_answered(answerer.handle(_query(subnet), "127.0.0.1") or b"")[0]] == result["answer"]
    # Not loaded: no spill said.
    assert "spill" not in explain_query(snapshot, "www.example.com", "A", None, AMERICA[0], spill=spill)


def test_check_says_an_interval_was_raised(tmp_path: Path) -> None:
    zones = write_zones(tmp_path, dict(DATACENTERS), 8080, {"eu": "http://127.0.2.1:8081/stub_status"}, eu=80)
    text = (zones / "gslb.toml").read_text().replace(f"ttl = {TTL}\n", "ttl = 30\n")
    (zones / "gslb.toml").write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "gslb", "check", "--zones", str(zones)], capture_output=True, text=True, timeout=60
    )
    assert poll_interval(build(Sources(zones)).config, "eu") == (30.0, 30)
    assert out.returncode == 0, out.stderr
    assert (
        "load: eu polls nginx http://127.0.2.1:8081/stub_status (requests_per_second) every 30 s "
        "(raised from 2 s to the TTL 30 of its services)" in out.stdout
    )


HAPROXY_CONF = """\
global
    maxconn 50
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend web
    bind 127.0.0.1:{front}
    maxconn 40
    default_backend app
backend app
    server one 127.0.0.1:{backend}
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"""


def test_haproxy_stats_csv_from_real_haproxy(tmp_path: Path) -> None:
    """The rows of a real HAProxy's `;csv` page, read through the poller as configured."""
    need("haproxy")
    backend = Backend("app\n")
    front, stats = _free_port(), _free_port()
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(HAPROXY_CONF.format(front=front, backend=backend.port, stats=stats))
    with (tmp_path / "haproxy.log").open("wb") as log:
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        _wait(lambda: _answers(stats), 10)
        for _ in range(5):
            assert httpx.get(f"http://127.0.0.1:{front}/", timeout=2).text == "app\n"
        url = f"http://127.0.0.1:{stats}/stats;csv"
        text = httpx.get(url, timeout=2).text
        frontend = parse_haproxy_csv(text, "scur", "web", "FRONTEND")
        assert frontend.gauge == 0 and frontend.max == 40  # slim: the frontend's maxconn
        assert (parse_haproxy_csv(text, "rate", "app", "BACKEND").gauge or 0) >= 1
        zones = write_zones(
            tmp_path / "zones", dict(DATACENTERS), 8080, {"eu": url}, "haproxy", ', frontend = "web"', eu=10
        )
        poller = LoadPoller(build(Sources(zones)).config, is_up=lambda name: True, on_change=lambda view: None)

        async def poll() -> None:
            async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
                await poller.poll_once("eu", poller.sources["eu"], client)

        asyncio.run(poll())
        status = poller.status()["eu"]
        assert status["state"] == "ok" and status["metric"] == "rate" and status["load"] is not None, status
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/stats;csv", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.chromium
@pytest.mark.timeout(90)
def test_one_process_spills_too(start_server: type[Server], tmp_path: Path) -> None:
    """--workers 0: the answerer in the supervisor's own process takes the shares; the status
    page, in a real browser, shows the load against its target and where the share goes."""
    from tests.test_ops import chromium

    addresses, port = free_addresses(3)
    vips = dict(zip(DATACENTERS, addresses, strict=True))
    sites = {name: Backend('{"current": 200, "target": 100}', vip, port) for name, vip in vips.items()}
    try:
        url = f"http://{vips['eu']}:{port}/load"
        zones = write_zones(tmp_path / "zones", vips, port, {"eu": url}, "json")
        server = start_server(
            "--zones", str(zones), "--state-file", str(tmp_path / "state.json"), "--workers", "0",
            "--http", "127.0.0.1:0",
        )  # fmt: skip
        web = re.search(r"http on (127\.0\.0\.1:\d+)", server.wait_log(r"http on 127\.0\.0\.1:\d+"))
        assert web
        server.wait_log(r"spill eu: share 0% -> 25% of its clients .*\(load 200\.0 current.*past its max 150\)")
        dom = chromium(f"http://{web.group(1)}/", tmp_path / "profile")
        # (The document says 200 whatever is spilled, so the share keeps rising, an interval at a time.)
        assert re.search(r'data-dc="eu".*?load: <b>200 / 100</b> current · spilling \d+ % to us', dom, re.S), dom

        def answers() -> set[str]:
            return {
                server.query("www.example.com.", use_edns=0, options=[dns.edns.ECSOption.from_text(s)])
                .answer[0][0]
                .address
                for s in EUROPE[:60]
            }

        _wait(lambda: answers() == {vips["eu"], vips["us"]}, 5)
    finally:
        for site in sites.values():
            site.close()


def test_reload_keeps_shares_of_sources_that_stay(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reload: the sources still named keep their state and share; one taken away spills nothing."""
    url = "http://127.0.2.1:8081/stub_status"
    config = build(
        Sources(write_zones(tmp_path / "a", dict(DATACENTERS), 8080, {"eu": url, "us": url}, eu=80, us=80))
    ).config
    views: list[SpillView] = []
    poller = LoadPoller(config, is_up=lambda name: True, on_change=views.append)
    for name in ("eu", "us"):
        poller._observe(name, Sample(118.0, 0, 2), 2.0)
    assert poller.view.share("eu") == poller.view.share("us") == MAX_STEP
    eu = poller.sources["eu"]
    again = build(Sources(write_zones(tmp_path / "b", dict(DATACENTERS), 8080, {"eu": url}, eu=80))).config
    with caplog.at_level("INFO", logger="gslb.load"):
        poller.update(again)
    assert poller.sources == {"eu": eu} and views[-1] is poller.view
    assert poller.view.share("eu") == MAX_STEP and poller.view.share("us") == 0
    assert any(
        "spill us: share 20% -> 0%" in r.getMessage() and "no load source" in r.getMessage() for r in caplog.records
    )
