"""The gslb configuration file (TOML): data centers, health checks, services and geo settings.

Loaded by :func:`load` into frozen dataclasses.  Every problem in the file is gathered and
reported at once as ``file:line: key.path: message`` in one :class:`ConfigError`.

File format
===========

One TOML file (``zones/gslb.toml`` by default) with four tables, all optional::

    [geo]
    no_ecs = "resolver"   # clients whose resolver sends no EDNS Client Subnet are located by
                          # the resolver's address ("resolver", the default), or all placed at
                          # geo.default ("default")
    private = "default"   # private, loopback and documentation addresses go to geo.default;
                          # "database" looks them up in the GeoIP database instead (an
                          # internal MMDB that places your own networks)
    default = { country = "US", continent = "NA", latitude = 39.04, longitude = -77.49 }
                          # where clients go that the database cannot place (private addresses,
                          # unknown networks); without it such clients have no coordinates and
                          # "nearest" answers in member order

    [[geo.override]]      # CIDR overrides win over the GeoIP database; the most specific wins
    network = "192.0.2.0/24"
    country = "JP"
    continent = "AS"
    latitude = 35.68
    longitude = 139.69
    # also: subdivision = "13" (ISO 3166-2 without the country), city = "Tokyo"

    [checks.web]          # a named health check; data centers refer to it by name
    kind = "http"         # "http" | "https" | "tcp"                                   (required)
    port = 8080           # 1-65535; default 80 for http, 443 for https, required for tcp
    path = "/health"      # http(s) only; must start with "/"; default "/"
    method = "GET"        # http(s) only; "GET" or "HEAD"
    expect_status = [200] # http(s) only; statuses that count as up; default [200]
    body_contains = "ok"  # http(s) only; the body must contain this text (not with HEAD)
    host = "www.example.com"   # http(s) only; Host header (and TLS server name for https)
    verify_tls = true     # http(s) only; verify the server certificate (default true)
    ca_file = "ca.pem"    # http(s) only; CA bundle, relative to this file; must exist
    follow_redirects = false   # http(s) only
    interval = 1.0        # seconds between probes (> 0)
    timeout = 0.8         # seconds a probe may take (> 0 and < interval: an error otherwise)
    fall = 2              # consecutive failures that mark an up data center down (>= 1)
    rise = 3              # consecutive successes that mark a down data center up (>= 1)
    jitter = 0.1          # spread probe start times by up to this fraction of interval (0-1)

    [datacenters.us]      # names: letters, digits, "_", "-", "." (starting with a letter/digit)
    vips = ["127.0.1.1", "2001:db8:1::1"]   # the addresses answered (IPv4 and/or IPv6; required)
    latitude = 39.04      # -90..90; latitude and longitude come together; needed by
    longitude = -77.49    # "nearest" (-180..180)
    country = "US"        # ISO 3166-1 alpha-2 (informational)
    continent = "NA"      # AF AN AS EU NA OC SA (informational)
    weight = 1.0          # share for the "weighted" policy (> 0; default 1)
    bias_km = 0.0         # "nearest": added to the distance (negative = prefer; default 0)
    check = "web"         # a name in [checks]; without a check the data center is always up
    probe = "127.0.1.1"   # the address probed, when it differs from the VIP (NAT, internal
                          # address); default the first IPv4 VIP, else the first IPv6 VIP

    [services."www.example.com."]   # the owner name, quoted; stored lower-case and absolute
    datacenters = ["us", "eu", "ap"]   # members (required, no duplicates)
    policy = "nearest"    # "nearest" (default) | "geo" | "failover" | "weighted"
    answers = 1           # how many data centers' VIPs to answer (1..number of members)
    ttl = 30              # answer TTL in seconds (0..2147483647; default 30)
    ttl_degraded = 10     # TTL while any member is down (<= ttl; default min(ttl, 10))
    all_down = "open"     # when every member is down: "open" (answer as if all were up;
                          # the default), "fallback" (answer the fallback addresses),
                          # "nodata" (an empty answer), "servfail"
    fallback = ["127.0.9.1"]   # addresses for all_down = "fallback" (IPv4 and/or IPv6)
    # policy "geo" only:
    map = [
      { match = "continent:EU", order = ["eu", "us"] },
      { match = ["country:JP", "country:KR"], order = ["ap", "us"] },
      { match = "subdivision:US-CA", order = ["us", "ap"] },
      { match = "cidr:203.0.113.0/24", order = ["ap"] },
    ]
    default = ["us", "eu", "ap"]   # order for clients no rule matches (default: datacenters)
    # policy "failover" only:
    order = ["us", "eu"]  # first healthy wins (default: datacenters; members left out follow
                          # in datacenters order)

    [cluster]             # several instances, one verdict (gslb.cluster.votes); without it each decides alone
    name = "example"      # required; keys in etcd live under /gslb/<name>/
    etcd = ["http://127.0.10.1:2379"]   # required; the etcd members' client URLs
    down_quorum = 0.5     # down when more than this share of live instances see it down (0-0.99;
                          # 0: any one instance)
    lease = 5             # seconds an instance's observations outlive it (2-3600, an integer)

    [cookies]             # DNS Cookies (RFC 7873, RFC 9018 server cookies); on without the table
    enabled = true        # false: COOKIE options ignored (no server cookies)
    secret_file = "cookie.key"   # 32 hex digits a line, relative to this file; the first makes
                          # cookies, further lines (a rotation's old or next secret) are accepted
                          # too; without it a random secret per process start
    large_answers_need_cookie = false   # true: UDP replies over large_answer_size to a query
    large_answer_size = 512             # without a valid server cookie get TC (retry over TCP)

    [rrl]                 # response rate limiting, per client network and kind; off without it
    rate = 20             # replies a second per network and kind (answer, NXDOMAIN, error, referral)
    window = 1            # seconds of replies a quiet network may send at once (burst rate * window)
    slip = 2              # every slip-th limited reply goes out truncated (TC); 0: drop all
    exempt = ["192.0.2.0/24"]   # networks never limited
    log_only = false      # true: count and log what would be limited, limit nothing
    ipv4_prefix = 24      # the network a client counts in (1-32; 1-128 for ipv6_prefix = 56)

Policies (see gslb.steering.policy): "nearest" ranks members by great-circle distance from the client
plus bias_km; "geo" takes the order of the most specific matching map rule (precedence: cidr,
longest prefix first, then subdivision, country, continent; file order does not matter);
"failover" walks the order; "weighted" draws members at random in proportion to weight.
Each answers the VIPs of the first ``answers`` healthy data centers.

A ``cidr:`` rule matches a client whose geo network (the GeoIP database record's prefix, or a
[[geo.override]] network) lies inside the rule's CIDR; to steer a network finer than the
database knows it, add a [[geo.override]] for it.

Probe targets are not restricted here (production probes public addresses); ``gslb check``
lists them from :attr:`Config.probe_addresses`.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

from gslb import inputs
from gslb.geo.places import IPAddress, IPNetwork, Location

__all__ = [
    "ALL_DOWN_MODES",
    "CONTINENTS",
    "NO_ECS_MODES",
    "POLICIES",
    "Check",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "CookieSettings",
    "DataCenter",
    "DnssecSettings",
    "GeoRule",
    "LoadSource",
    "Problem",
    "RrlSettings",
    "Service",
    "Target",
    "empty",
    "load",
    "loads",
    "normalize_name",
    "render_key",
]

POLICIES: Final = ("nearest", "geo", "failover", "weighted")
ALL_DOWN_MODES: Final = ("open", "fallback", "nodata", "servfail")
NO_ECS_MODES: Final = ("resolver", "default")
PRIVATE_MODES: Final = ("default", "database")
CONTINENTS: Final = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})
RULE_KINDS: Final = ("cidr", "subdivision", "country", "continent")  # precedence order
CHECK_KINDS: Final = ("http", "https", "tcp")
# What each kind of load source offers; the first is the default metric.
LOAD_METRICS: Final = {
    "nginx": ("requests_per_second", "active_connections"),  # stub_status
    "haproxy": ("rate", "scur"),  # the stats CSV's row of one frontend or backend
    "json": ("current",),  # {"current": N, "target": N, "max": N}
}
HTTP_METHODS: Final = ("GET", "HEAD")
MAX_TTL: Final = 2**31 - 1  # RFC 2181 §8

KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file, located by line and key path."""

    path: Path | None
    line: int  # 1-based; 0 when the file as a whole is at fault (unreadable)
    key: str  # "services.\"www.example.com.\".policy"; "" when no key applies
    message: str

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "<config>"
        if self.line:
            where = f"{where}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists every reason, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__("\n".join(str(p) for p in self.problems))


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Check:
    """How to judge one target (a [checks] table); the prober in gslb.health.monitor runs it."""

    kind: str = "http"  # "http" | "https" | "tcp"
    port: int = 80
    path: str = "/"
    method: str = "GET"
    expect_status: tuple[int, ...] = (200,)
    body_contains: str | None = None  # searched in the first BODY_LIMIT bytes
    host: str | None = None  # Host header and TLS SNI override
    verify_tls: bool = True
    ca_file: str | None = None
    follow_redirects: bool = False
    interval: float = 1.0
    timeout: float = 0.8
    fall: int = 2  # consecutive failures to mark down
    rise: int = 3  # consecutive successes to mark up
    jitter: float = 0.1  # fraction of interval, random per round


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # the data center's name; health is keyed by it
    address: str  # the address probed (IPv4/IPv6 literal)
    check: Check


@dataclass(frozen=True, slots=True)
class LoadSource:
    """datacenters.NAME.load: where the second tier reports the data center's load."""

    kind: str  # nginx | haproxy | json (LOAD_METRICS)
    url: str
    metric: str  # one of LOAD_METRICS[kind]
    target: float | None  # spill above this; None only for json, whose document must then say
    max: float | None  # never more than this while another member has room; None: 1.5 x target
    interval: float = 5.0  # seconds between polls, at least the TTL of every service it serves
    timeout: float = 1.0  # seconds a poll may take
    proxy: str | None = None  # haproxy: the frontend's or backend's name (pxname)
    row: str = "BACKEND"  # haproxy: FRONTEND or BACKEND (the svname of the row read)


@dataclass(frozen=True, slots=True)
class DataCenter:
    """A site with its VIPs, where it is, and how its health is judged."""

    name: str
    vips: tuple[IPAddress, ...]
    latitude: float | None = None
    longitude: float | None = None
    country: str | None = None
    continent: str | None = None
    weight: float = 1.0
    bias_km: float = 0.0
    check: Check | None = None
    probe: str | None = None  # the address probed; None without a check
    load: LoadSource | None = None  # the second tier's load; None: steered by geo and health only
    # (latitude, cos latitude, longitude) in radians, for the policy's distance sums.
    radians: tuple[float, float, float] | None = field(init=False, repr=False, compare=False)
    _v4: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _v6: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once here because the policy runs on the DNS hot path.
        radians = None
        if self.latitude is not None and self.longitude is not None:
            phi = math.radians(self.latitude)
            radians = (phi, math.cos(phi), math.radians(self.longitude))
        object.__setattr__(self, "radians", radians)
        object.__setattr__(self, "_v4", tuple(str(a) for a in self.vips if a.version == 4))
        object.__setattr__(self, "_v6", tuple(str(a) for a in self.vips if a.version == 6))

    @property
    def vips_v4(self) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(a for a in self.vips if isinstance(a, ipaddress.IPv4Address))

    @property
    def vips_v6(self) -> tuple[ipaddress.IPv6Address, ...]:
        return tuple(a for a in self.vips if isinstance(a, ipaddress.IPv6Address))

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def addresses(self, family: int) -> tuple[str, ...]:
        """The VIPs of one address family (4 or 6) as text."""
        return self._v4 if family == 4 else self._v6

    def target(self) -> Target | None:
        """What the prober watches for this data center; None when it has no check."""
        if self.check is None or self.probe is None:
            return None
        return Target(self.name, self.probe, self.check)


@dataclass(frozen=True, slots=True)
class GeoRule:
    """One line of a geo map: clients matching ``kind:value`` prefer ``order``."""

    kind: str  # "cidr" | "subdivision" | "country" | "continent"
    value: str  # "203.0.113.0/24" | "US-CA" | "JP" | "EU" (normalised)
    order: tuple[str, ...]
    line: int = 0
    _network: IPNetwork | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        net = ipaddress.ip_network(self.value) if self.kind == "cidr" else None
        object.__setattr__(self, "_network", net)

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.value}"

    def matches(self, location: Location) -> bool:
        kind = self.kind
        if kind == "continent":
            return location.continent == self.value
        if kind == "country":
            return location.country == self.value
        if kind == "subdivision":
            country, _, subdivision = self.value.partition("-")
            return location.country == country and location.subdivision == subdivision
        net, rule = location.network, self._network
        return (
            net is not None
            and rule is not None
            and net.version == rule.version
            and net.prefixlen >= rule.prefixlen
            and int(net.network_address) & int(rule.netmask) == int(rule.network_address)
        )


class _GeoIndex:
    """The rules of one geo map arranged for O(prefixes) lookup."""

    __slots__ = ("cidr", "continent", "country", "subdivision")

    def __init__(self, rules: Iterable[GeoRule]) -> None:
        self.cidr: list[tuple[int, int, int, int, GeoRule]] = []
        self.subdivision: dict[tuple[str, str], GeoRule] = {}
        self.country: dict[str, GeoRule] = {}
        self.continent: dict[str, GeoRule] = {}
        for rule in rules:
            if rule.kind == "cidr":
                net = ipaddress.ip_network(rule.value)
                self.cidr.append((net.version, net.prefixlen, int(net.netmask), int(net.network_address), rule))
            elif rule.kind == "subdivision":
                country, _, subdivision = rule.value.partition("-")
                self.subdivision.setdefault((country, subdivision), rule)
            elif rule.kind == "country":
                self.country.setdefault(rule.value, rule)
            else:
                self.continent.setdefault(rule.value, rule)
        # Longest prefix first, so the first hit is the most specific.
        self.cidr.sort(key=lambda c: -c[1])

    def find(self, location: Location) -> GeoRule | None:
        net = location.network
        if net is not None and self.cidr:
            version, prefixlen, address = net.version, net.prefixlen, int(net.network_address)
            for rv, rlen, mask, raddr, rule in self.cidr:
                if rv == version and prefixlen >= rlen and address & mask == raddr:
                    return rule
        country = location.country
        if country is not None:
            if self.subdivision and location.subdivision is not None:
                found = self.subdivision.get((country, location.subdivision))
                if found is not None:
                    return found
            found = self.country.get(country)
            if found is not None:
                return found
        if location.continent is not None:
            return self.continent.get(location.continent)
        return None


@dataclass(frozen=True, slots=True)
class Service:
    """A name answered by policy instead of by a zone file."""

    name: str  # lower-case, absolute ("www.example.com.")
    datacenters: tuple[str, ...]
    policy: str = "nearest"
    answers: int = 1
    ttl: int = 30
    ttl_degraded: int = 10
    all_down: str = "open"
    fallback: tuple[IPAddress, ...] = ()
    map: tuple[GeoRule, ...] = ()  # geo: in precedence order (cidr longest first, ...)
    default: tuple[str, ...] = ()  # geo: order when no rule matches (default: datacenters)
    order: tuple[str, ...] = ()  # failover: the full order (default: datacenters)
    line: int = 0  # the line of the service's table header, for file:line messages
    path: Path | None = None  # the configuration file it came from
    _index: _GeoIndex = field(init=False, repr=False, compare=False)
    _fallback_v4: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _fallback_v6: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _GeoIndex(self.map))
        object.__setattr__(self, "_fallback_v4", tuple(str(a) for a in self.fallback if a.version == 4))
        object.__setattr__(self, "_fallback_v6", tuple(str(a) for a in self.fallback if a.version == 6))

    def rule_for(self, location: Location) -> GeoRule | None:
        """The geo map rule that applies to ``location`` (most specific), or None."""
        return self._index.find(location)

    def fallback_addresses(self, family: int) -> tuple[str, ...]:
        return self._fallback_v4 if family == 4 else self._fallback_v6


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """[cluster]: the instances sharing health observations and drains through etcd (gslb.cluster.votes)."""

    name: str  # keys live under /gslb/<name>/
    etcd: tuple[str, ...]  # client URLs of the etcd members, http://host:port
    down_quorum: float = 0.5  # down when more than this share of live instances see it down
    lease: int = 5  # seconds an instance's observations outlive it


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """[cookies]: answer DNS Cookies (RFC 7873) with RFC 9018 server cookies."""

    secrets: tuple[bytes, ...] | None = field(default=None, repr=False)  # None: random per process
    secret_file: str | None = None
    large_answer_size: int = 0  # > 0: larger UDP replies need a valid server cookie, else TC


@dataclass(frozen=True, slots=True)
class RrlSettings:
    """[rrl]: response rate limiting per client network and kind of reply (UDP only)."""

    rate: int = 20  # replies a second per (network, kind)
    window: float = 1.0  # seconds of credit: a bucket holds rate * window replies
    slip: int = 2  # every slip-th limited reply is sent truncated; 0: none
    exempt: tuple[IPNetwork, ...] = ()
    log_only: bool = False
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56


@dataclass(frozen=True, slots=True)
class DnssecSettings:
    """[dnssec]: how signatures are made; a zone is signed exactly when it has keys (<zones>/keys/)."""

    validity: int = 14 * 86400  # seconds a signature is valid from its inception
    inception_offset: int = 3600  # seconds an inception is back-dated, for clients' clock skew
    refresh: int = 7 * 86400  # re-sign in the background when less than this is left
    max_presigned: int = 4096  # address sets per service signed at build; beyond: on first use


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the configuration file says, validated."""

    path: Path | None
    datacenters: Mapping[str, DataCenter]
    services: Mapping[str, Service]  # keyed by the lower-case absolute name
    checks: Mapping[str, Check]
    # Most specific first (IPv4 before IPv6), so a linear scan finds the longest prefix.
    overrides: tuple[tuple[IPNetwork, Location], ...] = ()
    no_ecs: str = "resolver"
    # Look private, loopback and documentation addresses up in the database (an internal
    # MMDB that maps your own networks) instead of sending them to the default.
    private_in_database: bool = False
    default_location: Location = field(default_factory=Location)
    cookies: CookieSettings | None = field(default_factory=CookieSettings)  # None: COOKIE options ignored
    rrl: RrlSettings | None = None  # [rrl]; None: no rate limiting
    cluster: ClusterConfig | None = None  # [cluster]; None: this instance decides alone
    dnssec: DnssecSettings = field(default_factory=DnssecSettings)  # [dnssec]

    def targets(self) -> tuple[Target, ...]:
        """What the prober must watch: one target per data center with a check."""
        return tuple(t for dc in self.datacenters.values() if (t := dc.target()) is not None)

    @property
    def probe_addresses(self) -> tuple[str, ...]:
        """Every address the prober will contact, once each, in data center order."""
        return tuple(dict.fromkeys(t.address for t in self.targets()))


def empty(path: Path | None = None) -> Config:
    """The configuration used when there is no configuration file: no services at all."""
    return Config(
        path=path,
        datacenters=MappingProxyType({}),
        services=MappingProxyType({}),
        checks=MappingProxyType({}),
    )


# --------------------------------------------------------------------------- key locator


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def render_key(path: KeyPath) -> str:
    """``("services", "www.example.com.", "map", 0)`` → ``services."www.example.com.".map[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out = f"{out}.{text}" if out else text
    return out


class _Locator:
    """Maps key paths to the line that defines them, by scanning (already valid) TOML text.

    tomllib reports no positions, so this reads the text once more, tracking table headers,
    dotted keys, arrays (also across lines) and inline tables.  It records the line of every
    key, array element and table header; a missing key falls back to its table's header.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.aot: dict[KeyPath, int] = {}  # array-of-tables path → index of its last element
        # Best effort only: the text parsed, so a failure here is a locator bug; lines fall back.
        with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
            self._document()

    def find(self, path: KeyPath) -> int:
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return 1

    # -- scanning helpers

    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _advance(self, n: int) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def _skip(self, newlines: bool) -> None:
        """Skip blanks, and with ``newlines`` also line ends and comments."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t":
                self.pos += 1
            elif newlines and c in "\r\n":
                self._advance(1)
            elif newlines and c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self._peek(2) == "[[":
                self._advance(2)
                key = self._key()
                self._skip(newlines=False)
                self._advance(2)  # "]]"
                parent = self._resolve(key[:-1])
                array = (*parent, key[-1])
                for n in range(1, len(array)):
                    self._record(array[:n], self.line)
                self._record(array, self.line)
                index = self.aot.get(array, -1) + 1
                self.aot[array] = index
                table = (*array, index)
                self._record(table, self.line)
            elif self._peek() == "[":
                self._advance(1)
                key = self._key()
                self._skip(newlines=False)
                self._advance(1)  # "]"
                table = self._resolve(key)
                for n in range(1, len(table)):  # implicit parent tables start here too
                    self._record(table[:n], self.line)
                # A header defines the table here even if a dotted key mentioned it first.
                self.lines[table] = self.line
            else:
                self._pair(table)

    def _resolve(self, key: tuple[str, ...]) -> KeyPath:
        """A header's key with the current element index after each array of tables."""
        out: KeyPath = ()
        for part in key:
            out = (*out, part)
            if out in self.aot:
                out = (*out, self.aot[out])
        return out

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c in "\"'":
                start = self.pos
                self._string()
                parts.append(tomllib.loads("k = " + self.text[start : self.pos])["k"])
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                if m is None:
                    raise ValueError("no key")
                parts.append(m.group())
                self.pos = m.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance(1)

    def _pair(self, table: KeyPath) -> None:
        line = self.line
        key = self._key()
        for n in range(1, len(key) + 1):
            self._record((*table, *key[:n]), line)
        self._skip(newlines=False)
        self._advance(1)  # "="
        self._skip(newlines=False)
        self._value((*table, *key))

    def _value(self, path: KeyPath) -> None:
        c = self._peek()
        if c in "\"'":
            self._string()
        elif c == "[":
            self._advance(1)
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._advance(1)
                    return
                self._record((*path, index), self.line)
                self._value((*path, index))
                index += 1
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance(1)
        elif c == "{":
            self._advance(1)
            while True:
                self._skip(newlines=False)
                if self._peek() == "}":
                    self._advance(1)
                    return
                self._pair(path)
                self._skip(newlines=False)
                if self._peek() == ",":
                    self._advance(1)
        else:
            # Numbers, booleans, dates (which may hold a space): up to the next delimiter.
            m = re.compile(r"[^,\]}#\r\n]*").match(self.text, self.pos)
            if m is None or m.end() == self.pos:
                raise ValueError("no value")
            self.pos = m.end()

    def _string(self) -> None:
        text = self.text
        for quote in ('"""', "'''"):
            if text.startswith(quote, self.pos):
                i = self.pos + 3
                while True:
                    if quote == '"""' and text[i] == "\\":
                        i += 2
                        continue
                    if text.startswith(quote, i):
                        # Up to two quotes may end the content right before the delimiter.
                        while text.startswith(quote[0], i + 3):
                            i += 1
                        self._advance(i + 3 - self.pos)
                        return
                    i += 1
        quote = text[self.pos]
        i = self.pos + 1
        while text[i] != quote:
            i += 2 if quote == '"' and text[i] == "\\" else 1
        self.pos = i + 1


# --------------------------------------------------------------------------- loading


_MISSING: Final = object()
_DC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
_SUBDIVISION = re.compile(r"[A-Z0-9]{1,3}")

_GEO_KEYS: Final = ("no_ecs", "private", "default", "override")
_LOCATION_KEYS: Final = ("country", "continent", "subdivision", "latitude", "longitude", "city")
_CHECK_KEYS: Final = (
    "kind", "port", "path", "method", "expect_status", "body_contains", "host", "verify_tls",
    "ca_file", "follow_redirects", "interval", "timeout", "fall", "rise", "jitter",
)  # fmt: skip
_HTTP_ONLY: Final = (
    "path", "method", "expect_status", "body_contains", "host", "verify_tls", "ca_file",
    "follow_redirects",
)  # fmt: skip
_DC_KEYS: Final = (
    "vips", "latitude", "longitude", "country", "continent", "weight", "bias_km", "check", "probe", "load",
)  # fmt: skip
_LOAD_KEYS: Final = ("kind", "url", "metric", "target", "max", "interval", "timeout", "frontend", "backend")
_DNSSEC_KEYS: Final = ("validity", "inception_offset", "refresh", "max_presigned")
_HTTP_URL: Final = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?(/[^\s]*)?")
_SERVICE_KEYS: Final = (
    "datacenters", "policy", "answers", "ttl", "ttl_degraded", "all_down", "fallback", "map",
    "default", "order",
)  # fmt: skip
_RULE_KEYS: Final = ("match", "order")
_COOKIE_KEYS: Final = ("enabled", "secret_file", "large_answers_need_cookie", "large_answer_size")
_RRL_KEYS: Final = ("enabled", "rate", "window", "slip", "exempt", "log_only", "ipv4_prefix", "ipv6_prefix")
_SECRET: Final = re.compile(r"[0-9A-Fa-f]{32}")
MAX_SECRETS: Final = 3
_CLUSTER_KEYS: Final = ("name", "etcd", "down_quorum", "lease")
_ETCD_URL: Final = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?")
_EXPECT_STATUS: Final[tuple[int, ...]] = (200,)
_NO_ADDRESSES: Final[tuple[IPAddress, ...]] = ()

T = TypeVar("T")


def load(path: Path) -> Config:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([Problem(path, 0, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError([Problem(path, line, "", "not valid UTF-8")]) from None
    return loads(text, path)


def loads(text: str, path: Path | None = None) -> Config:
    """Validate configuration text; ``path`` names it in problems and anchors ``ca_file``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message, line = str(e), 1
        m = _TOML_POSITION.search(message)
        if m is not None:
            line = int(m.group(1))
            message = f"{message[: m.start()]} (column {m.group(2)})"
        elif message.endswith("(at end of document)"):
            line = text.count("\n") + 1
            message = message.removesuffix(" (at end of document)") + " (at end of file)"
        raise ConfigError([Problem(path, line, "", f"invalid TOML: {message}")]) from None
    loader = _Loader(text, path)
    config = loader.config(document)
    if loader.problems:
        raise ConfigError(loader.problems)
    return config


def normalize_name(name: str) -> str:
    """A DNS name as services are keyed: lower-case (ASCII only, RFC 4343) and absolute."""
    name = name.translate(_LOWER)
    return name if name.endswith(".") else name + "."


_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


class _Loader:
    """One validation run: gathers problems instead of stopping at the first."""

    def __init__(self, text: str, path: Path | None) -> None:
        self.path = path
        self.locator = _Locator(text)
        self.problems: list[Problem] = []

    # -- reporting

    def error(self, key: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.path, self.locator.find(key), render_key(key), message))

    def table(self, value: object, key: KeyPath, allowed: Iterable[str]) -> dict[str, Any] | None:
        """``value`` as a table, reporting unknown keys (with a suggestion for typos)."""
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_kind(value)}")
            return None
        allowed = tuple(allowed)
        for name in value:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                if not close and len(name) >= 3:  # "lat" for "latitude"
                    close = [a for a in allowed if a.startswith(name)][:1]
                hint = f"did you mean {close[0]!r}?" if close else "expected " + ", ".join(allowed)
                self.error((*key, name), f"unknown key; {hint}")
        return value

    # -- typed getters: report and return None on a wrong value

    def get(
        self,
        table: Mapping[str, Any],
        key: KeyPath,
        convert: Callable[[Any, KeyPath], T | None],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        name = key[-1]
        assert isinstance(name, str)
        if name not in table:
            if required:
                self.error(key, "required key is missing")
            return default
        return convert(table[name], key)

    def string(self, choices: Iterable[str] = ()) -> Callable[[Any, KeyPath], str | None]:
        options = tuple(choices)

        def convert(value: Any, key: KeyPath) -> str | None:
            if not isinstance(value, str):
                self.error(key, f"expected a string, got {_kind(value)}")
                return None
            if options and value not in options:
                self.error(key, f"{value!r} is not one of " + ", ".join(map(repr, options)))
                return None
            return value

        return convert

    def number(
        self, low: float | None = None, high: float | None = None, above: float | None = None
    ) -> Callable[[Any, KeyPath], float | None]:
        def convert(value: Any, key: KeyPath) -> float | None:
            if not _is_number(value) or not math.isfinite(value):
                self.error(
                    key,
                    f"expected a number, got {_kind(value) if not _is_number(value) else value}",
                )
                return None
            if above is not None and not value > above:
                self.error(key, f"must be greater than {above:g}, got {value}")
                return None
            if (low is not None and value < low) or (high is not None and value > high):
                self.error(key, f"must be between {low:g} and {high:g}, got {value}")
                return None
            return float(value)

        return convert

    def integer(self, low: int, high: int) -> Callable[[Any, KeyPath], int | None]:
        def convert(value: Any, key: KeyPath) -> int | None:
            if not isinstance(value, int) or isinstance(value, bool):
                self.error(key, f"expected an integer, got {_kind(value)}")
                return None
            if not low <= value <= high:
                self.error(key, f"must be between {low} and {high}, got {value}")
                return None
            return value

        return convert

    def boolean(self, value: Any, key: KeyPath) -> bool | None:
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {_kind(value)}")
            return None
        return value

    def array(self, value: Any, key: KeyPath, nonempty: bool = True) -> list[Any] | None:
        if not isinstance(value, list):
            self.error(key, f"expected an array, got {_kind(value)}")
            return None
        if nonempty and not value:
            self.error(key, "must not be empty")
            return None
        return value

    def address(self, value: Any, key: KeyPath) -> IPAddress | None:
        if not isinstance(value, str):
            self.error(key, f"expected an IP address string, got {_kind(value)}")
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            self.error(key, f"{value!r} is not an IPv4 or IPv6 address")
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            self.error(key, f"{value!r}: a scoped address (%zone) cannot be answered")
            return None
        if address.is_unspecified or address.is_multicast:
            self.error(key, f"{value!r} is not a unicast address")
            return None
        return address

    def addresses(self, value: Any, key: KeyPath) -> tuple[IPAddress, ...] | None:
        items = self.array(value, key)
        if items is None:
            return None
        out: list[IPAddress] = []
        ok = True
        for i, item in enumerate(items):
            address = self.address(item, (*key, i))
            if address is None:
                ok = False
            elif address in out:
                self.error((*key, i), f"duplicate address {item!r}")
                ok = False
            else:
                out.append(address)
        return tuple(out) if ok else None

    def network(self, value: Any, key: KeyPath) -> IPNetwork | None:
        if not isinstance(value, str):
            self.error(key, f"expected a CIDR string, got {_kind(value)}")
            return None
        return self._cidr(value, key)

    def _cidr(self, value: str, key: KeyPath) -> IPNetwork | None:
        try:
            return ipaddress.ip_network(value)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            self.error(key, f"{value!r} is not a CIDR network (like 192.0.2.0/24)")
            return None
        self.error(key, f"{value!r} has host bits set; did you mean {str(loose)!r}?")
        return None

    def names(self, value: Any, key: KeyPath, known: Iterable[str], what: str) -> tuple[str, ...] | None:
        """A non-empty list of distinct names, each one of ``known``."""
        items = self.array(value, key)
        if items is None:
            return None
        valid = tuple(known)
        out: list[str] = []
        ok = True
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.error((*key, i), f"expected a {what} name, got {_kind(item)}")
                ok = False
            elif item not in valid:
                if what == "member":
                    self.error((*key, i), f"{item!r} is not one of the service's datacenters")
                else:
                    close = difflib.get_close_matches(item, valid, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    self.error((*key, i), f"unknown {what} {item!r}{hint}")
                ok = False
            elif item in out:
                self.error((*key, i), f"{what} {item!r} is listed twice")
                ok = False
            else:
                out.append(item)
        return tuple(out) if ok else None

    # -- sections

    def config(self, document: dict[str, Any]) -> Config:
        root = self.table(
            document, (), ("geo", "checks", "datacenters", "services", "cookies", "rrl", "cluster", "dnssec")
        )
        assert root is not None
        no_ecs, private_in_database, default_location, overrides = self.geo(root.get("geo", {}))
        checks = self.checks(root.get("checks", {}))
        datacenters, declared = self.datacenters(root.get("datacenters", {}), checks)
        services = self.services(root.get("services", {}), datacenters, declared)
        return Config(
            path=self.path,
            datacenters=MappingProxyType(datacenters),
            services=MappingProxyType(services),
            checks=MappingProxyType(checks[0]),
            overrides=overrides,
            no_ecs=no_ecs,
            private_in_database=private_in_database,
            default_location=default_location,
            cookies=self.cookies(root.get("cookies", {})),  # on by default, a random secret
            rrl=self.rrl(root["rrl"]) if "rrl" in root else None,
            cluster=self.cluster(root["cluster"]) if "cluster" in root else None,
            dnssec=self.dnssec(root.get("dnssec", {})) or DnssecSettings(),
        )

    def dnssec(self, value: Any) -> DnssecSettings | None:
        key: KeyPath = ("dnssec",)
        table = self.table(value, key, _DNSSEC_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        validity = self.get(table, (*key, "validity"), self.integer(3 * 3600, 366 * 86400), 14 * 86400)
        offset = self.get(table, (*key, "inception_offset"), self.integer(0, 86400), 3600)
        refresh = self.get(table, (*key, "refresh"), self.integer(600, 366 * 86400), None)
        most = self.get(table, (*key, "max_presigned"), self.integer(0, 1_000_000), 4096)
        if len(self.problems) > before:
            return None
        assert validity is not None and offset is not None and most is not None
        if refresh is None:
            refresh = validity // 2
        elif refresh >= validity:
            self.error((*key, "refresh"), f"must be less than validity ({validity} s), got {refresh}")
            return None
        return DnssecSettings(validity, offset, refresh, most)

    def load_source(self, value: Any, key: KeyPath) -> LoadSource | None:
        table = self.table(value, key, _LOAD_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        kind = self.get(table, (*key, "kind"), self.string(LOAD_METRICS), required=True)
        url = self.get(table, (*key, "url"), self.http_url, required=True)
        metrics = LOAD_METRICS.get(kind or "", ("",))
        metric = self.get(table, (*key, "metric"), self.string(metrics) if kind else self.string(), metrics[0])
        target = self.get(table, (*key, "target"), self.number(above=0), None, required=kind != "json")
        most = self.get(table, (*key, "max"), self.number(above=0), None)
        interval = self.get(table, (*key, "interval"), self.number(0.5, 3600), 5.0)
        timeout = self.get(table, (*key, "timeout"), self.number(0.05, 60), None)
        proxy, row = None, "BACKEND"
        for side in ("frontend", "backend"):
            if side in table:
                if kind != "haproxy":
                    self.error((*key, side), 'only for kind = "haproxy"')
                elif proxy is not None:
                    self.error((*key, side), "give a frontend or a backend, not both")
                else:
                    proxy, row = self.get(table, (*key, side), self.string()), side.upper()
        if kind == "haproxy" and "frontend" not in table and "backend" not in table:
            self.error(key, 'an haproxy load source names its row: frontend = "NAME" or backend = "NAME"')
        if target is not None and most is not None and most < target:
            self.error((*key, "max"), f"must be at least the target ({target:g}), got {most:g}")
        if len(self.problems) > before:
            return None
        assert kind is not None and url is not None and metric is not None and interval is not None
        if timeout is None:
            timeout = min(1.0, interval / 2)
        elif timeout >= interval:
            self.error((*key, "timeout"), f"must be less than the interval ({interval:g} s), got {timeout:g}")
            return None
        return LoadSource(kind, url, metric, target, most, interval, timeout, proxy, row)

    def http_url(self, value: Any, key: KeyPath) -> str | None:
        if not isinstance(value, str):
            self.error(key, f"expected a URL string, got {_kind(value)}")
            return None
        m = _HTTP_URL.fullmatch(value.strip())
        if m is None:
            self.error(key, f'{value!r} is not an http(s) URL (like "http://127.0.2.1:8081/stub_status")')
            return None
        if m.group(2) is not None and not 1 <= int(m.group(2)) <= 65535:
            self.error(key, f"{value!r}: the port must be between 1 and 65535")
            return None
        return value.strip()

    def cluster(self, value: Any) -> ClusterConfig | None:
        key: KeyPath = ("cluster",)
        table = self.table(value, key, _CLUSTER_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        name = self.get(table, (*key, "name"), self.string(), required=True)
        if name is not None and not _DC_NAME.fullmatch(name):
            self.error(
                (*key, "name"), f"{name!r}: letters, digits, '_', '-', '.' only (starting with a letter or digit)"
            )
        endpoints: list[str] = []
        items = self.get(table, (*key, "etcd"), self.array, required=True) or []
        for i, item in enumerate(items):
            url = self.etcd_url(item, (*key, "etcd", i))
            if url in endpoints:
                self.error((*key, "etcd", i), f"{url!r} is listed twice")
            elif url is not None:
                endpoints.append(url)
        quorum = self.get(table, (*key, "down_quorum"), self.number(0, 0.99), 0.5)
        lease = self.get(table, (*key, "lease"), self.integer(2, 3600), 5)
        if len(self.problems) > before or name is None or quorum is None or lease is None:
            return None
        return ClusterConfig(name, tuple(endpoints), quorum, lease)

    def etcd_url(self, value: Any, key: KeyPath) -> str | None:
        """An etcd member's client URL: http(s)://host:port, nothing after it."""
        if not isinstance(value, str):
            self.error(key, f"expected a URL string, got {_kind(value)}")
            return None
        m = _ETCD_URL.fullmatch(value.strip())
        if m is None:
            self.error(key, f'{value!r} is not an etcd client URL (like "http://127.0.0.1:2379")')
            return None
        if not 1 <= int(m.group(2)) <= 65535:
            self.error(key, f"{value!r}: the port must be between 1 and 65535")
            return None
        return value.strip().rstrip("/")

    def cookies(self, value: Any) -> CookieSettings | None:
        key: KeyPath = ("cookies",)
        table = self.table(value, key, _COOKIE_KEYS)
        if table is None or not self.get(table, (*key, "enabled"), self.boolean, True):
            return None
        secret_file = self.get(table, (*key, "secret_file"), self.file)
        secrets = None if secret_file is None else self.secrets(Path(secret_file), (*key, "secret_file"))
        need = self.get(table, (*key, "large_answers_need_cookie"), self.boolean, False)
        size = self.get(table, (*key, "large_answer_size"), self.integer(64, 65535), 512)
        if "large_answer_size" in table and need is False:
            self.error((*key, "large_answer_size"), "only used with large_answers_need_cookie = true")
        if (secret_file is not None and secrets is None) or size is None:
            return None
        return CookieSettings(secrets, secret_file, size if need else 0)

    def secrets(self, path: Path, key: KeyPath) -> tuple[bytes, ...] | None:
        """The secrets in a cookie secret file: 32 hex digits a line; blank lines and # comments skipped."""
        inputs.read(path)  # a rotation is a reload
        try:
            text = path.read_text("ascii")
        except (OSError, UnicodeDecodeError) as e:
            self.error(key, f"{str(path)!r}: cannot read: {getattr(e, 'strerror', None) or e}")
            return None
        secrets: list[bytes] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if not _SECRET.fullmatch(line):
                self.error(
                    key,
                    f"{str(path)!r} line {number}: expected 32 hex digits (16 bytes, e.g. from "
                    f"'openssl rand -hex 16'), got {len(line)} characters",
                )
                return None
            secrets.append(bytes.fromhex(line))
        if not secrets:
            self.error(key, f"{str(path)!r}: no secret in the file")
            return None
        if len(secrets) > MAX_SECRETS:
            self.error(
                key,
                f"{str(path)!r}: {len(secrets)} secrets; at most {MAX_SECRETS} "
                "(the current one first, then those still accepted)",
            )
            return None
        return tuple(secrets)

    def rrl(self, value: Any) -> RrlSettings | None:
        key: KeyPath = ("rrl",)
        table = self.table(value, key, _RRL_KEYS)
        if table is None or not self.get(table, (*key, "enabled"), self.boolean, True):
            return None
        before = len(self.problems)
        rate = self.get(table, (*key, "rate"), self.integer(1, 1_000_000), 20)
        window = self.get(table, (*key, "window"), self.number(1, 3600), 1.0)
        slip = self.get(table, (*key, "slip"), self.integer(0, 10), 2)
        log_only = self.get(table, (*key, "log_only"), self.boolean, False)
        ipv4_prefix = self.get(table, (*key, "ipv4_prefix"), self.integer(1, 32), 24)
        ipv6_prefix = self.get(table, (*key, "ipv6_prefix"), self.integer(1, 128), 56)
        exempt: list[IPNetwork] = []
        items: list[Any] = self.get(table, (*key, "exempt"), self.array_or_empty, []) or []
        for i, item in enumerate(items):
            network = self.network(item, (*key, "exempt", i))
            if network is not None:
                exempt.append(network)
        if len(self.problems) > before:
            return None
        assert rate is not None and window is not None and slip is not None and log_only is not None
        assert ipv4_prefix is not None and ipv6_prefix is not None
        return RrlSettings(rate, float(window), slip, tuple(exempt), log_only, ipv4_prefix, ipv6_prefix)

    def array_or_empty(self, value: Any, key: KeyPath) -> list[Any] | None:
        return self.array(value, key, nonempty=False)

    def geo(self, value: Any) -> tuple[str, bool, Location, tuple[tuple[IPNetwork, Location], ...]]:
        key: KeyPath = ("geo",)
        geo = self.table(value, key, _GEO_KEYS)
        if geo is None:
            return "resolver", False, Location(), ()
        no_ecs = self.get(geo, (*key, "no_ecs"), self.string(NO_ECS_MODES), "resolver")
        private = self.get(geo, (*key, "private"), self.string(PRIVATE_MODES), "default")
        default = Location()
        if "default" in geo:
            default = self.location(geo["default"], (*key, "default"), None) or default
        overrides: dict[IPNetwork, Location] = {}
        if "override" in geo:
            items = self.array(geo["override"], (*key, "override"), nonempty=False) or []
            for i, item in enumerate(items):
                okey: KeyPath = (*key, "override", i)
                table = self.table(item, okey, ("network", *_LOCATION_KEYS))
                if table is None:
                    continue
                network = None
                if "network" in table:
                    network = self.network(table["network"], (*okey, "network"))
                else:
                    self.error((*okey, "network"), "required key is missing")
                location = self.location(table, okey, network, checked=True)
                if network is None or location is None:
                    continue
                if network in overrides:
                    self.error((*okey, "network"), f"{network} is overridden twice")
                    continue
                overrides[network] = location
        ordered = sorted(overrides.items(), key=lambda item: (item[0].version, -item[0].prefixlen))
        return no_ecs or "resolver", private == "database", default, tuple(ordered)

    def location(self, value: Any, key: KeyPath, network: IPNetwork | None, checked: bool = False) -> Location | None:
        """A Location from a table of _LOCATION_KEYS (an override when ``network`` is given)."""
        table = value if checked else self.table(value, key, _LOCATION_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        country, continent = self.place(table, key)
        subdivision = self.get(table, (*key, "subdivision"), self.string())
        if subdivision is not None:
            subdivision = subdivision.upper()
            if country is not None and subdivision.startswith(country + "-"):
                subdivision = subdivision[len(country) + 1 :]
            if not _SUBDIVISION.fullmatch(subdivision):
                self.error(
                    (*key, "subdivision"),
                    f'{subdivision!r} is not an ISO 3166-2 subdivision code (like "CA")',
                )
        city = self.get(table, (*key, "city"), self.string())
        latitude, longitude = self.coordinates(table, key)
        if len(self.problems) > before:
            return None
        return Location(
            country=country,
            continent=continent,
            subdivision=subdivision,
            latitude=latitude,
            longitude=longitude,
            network=network,
            source="default" if network is None else "override",
            city=city,
        )

    def place(self, table: Mapping[str, Any], key: KeyPath) -> tuple[str | None, str | None]:
        country = self.get(table, (*key, "country"), self.string())
        if country is not None:
            country = country.upper()
            if not _COUNTRY.fullmatch(country):
                self.error((*key, "country"), f"{country!r} is not an ISO 3166-1 alpha-2 code")
                country = None
        continent = self.get(table, (*key, "continent"), self.string())
        if continent is not None:
            continent = continent.upper()
            if continent not in CONTINENTS:
                self.error(
                    (*key, "continent"),
                    f"unknown continent {continent!r}; expected one of " + " ".join(sorted(CONTINENTS)),
                )
                continent = None
        return country, continent

    def coordinates(self, table: Mapping[str, Any], key: KeyPath) -> tuple[float | None, float | None]:
        latitude = self.get(table, (*key, "latitude"), self.number(-90, 90))
        longitude = self.get(table, (*key, "longitude"), self.number(-180, 180))
        for name, other in (("latitude", "longitude"), ("longitude", "latitude")):
            if name in table and other not in table:
                self.error((*key, name), f"{name} without {other}")
                return None, None
        return latitude, longitude

    def checks(self, value: Any) -> tuple[dict[str, Check], set[str]]:
        """The valid checks, and the names of all declared ones (valid or not)."""
        key: KeyPath = ("checks",)
        checks: dict[str, Check] = {}
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_kind(value)}")
            return checks, set()
        for name, item in value.items():
            check = self.check(item, (*key, name))
            if check is not None:
                checks[name] = check
        return checks, set(value)

    def check(self, value: Any, key: KeyPath) -> Check | None:
        table = self.table(value, key, _CHECK_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        kind = self.get(table, (*key, "kind"), self.string(CHECK_KINDS), required=True)
        default_port = {"http": 80, "https": 443}.get(kind or "")
        port = self.get(
            table, (*key, "port"), self.integer(1, 65535), default_port,
            required=kind == "tcp",
        )  # fmt: skip
        if kind == "tcp":
            for name in _HTTP_ONLY:
                if name in table:
                    self.error((*key, name), "only used by http and https checks")
        path = self.get(table, (*key, "path"), self.string(), "/")
        if path is not None and not path.startswith("/"):
            self.error((*key, "path"), f"must start with '/', got {path!r}")
        method = self.get(table, (*key, "method"), self.string(HTTP_METHODS), "GET")
        expect = self.get(table, (*key, "expect_status"), self.statuses, _EXPECT_STATUS)
        body = self.get(table, (*key, "body_contains"), self.string())
        if body is not None and method == "HEAD":
            self.error((*key, "body_contains"), "a HEAD response has no body; use method GET")
        host = self.get(table, (*key, "host"), self.string())
        verify = self.get(table, (*key, "verify_tls"), self.boolean, True)
        ca_file = self.get(table, (*key, "ca_file"), self.file)
        follow = self.get(table, (*key, "follow_redirects"), self.boolean, False)
        interval = self.get(table, (*key, "interval"), self.number(above=0), 1.0)
        timeout = self.get(table, (*key, "timeout"), self.number(above=0), 0.8)
        if interval is not None and timeout is not None and timeout >= interval:
            # An error, not a warning: probes would overlap or the interval would silently
            # stretch, and fall/rise would no longer mean "seconds until detected".
            where = "timeout" if "timeout" in table else "interval"
            self.error(
                (*key, where),
                f"timeout ({timeout:g}s) must be shorter than interval ({interval:g}s)",
            )
        fall = self.get(table, (*key, "fall"), self.integer(1, 1000), 2)
        rise = self.get(table, (*key, "rise"), self.integer(1, 1000), 3)
        jitter = self.get(table, (*key, "jitter"), self.number(0, 1), 0.1)
        if len(self.problems) > before:
            return None
        assert kind is not None and port is not None and path is not None and method is not None
        assert expect is not None and verify is not None and follow is not None
        assert interval is not None and timeout is not None and fall is not None
        assert rise is not None and jitter is not None
        return Check(
            kind=kind,
            port=port,
            path=path,
            method=method,
            expect_status=expect,
            body_contains=body,
            host=host,
            verify_tls=verify,
            ca_file=ca_file,
            follow_redirects=follow,
            interval=interval,
            timeout=timeout,
            fall=fall,
            rise=rise,
            jitter=jitter,
        )

    def statuses(self, value: Any, key: KeyPath) -> tuple[int, ...] | None:
        items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        items = self.array(items, key)
        if items is None:
            return None
        out: list[int] = []
        for i, item in enumerate(items):
            status = self.integer(100, 599)(item, (*key, i) if isinstance(value, list) else key)
            if status is None:
                return None
            out.append(status)
        return tuple(dict.fromkeys(out))

    def file(self, value: Any, key: KeyPath) -> str | None:
        name = self.string()(value, key)
        if name is None:
            return None
        base = self.path.parent if self.path is not None else Path.cwd()
        resolved = base / Path(name).expanduser()
        if not resolved.is_file():
            self.error(key, f"no such file: {str(resolved)!r}")
            return None
        return str(resolved)

    def datacenters(
        self, value: Any, checks: tuple[dict[str, Check], set[str]]
    ) -> tuple[dict[str, DataCenter], set[str]]:
        """The valid data centers, and the names of all declared ones."""
        key: KeyPath = ("datacenters",)
        out: dict[str, DataCenter] = {}
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_kind(value)}")
            return out, set()
        for name, item in value.items():
            if not _DC_NAME.fullmatch(name):
                self.error(
                    (*key, name),
                    "a data center name is letters, digits, '_', '-' and '.', starting with a letter or digit",
                )
                continue
            dc = self.datacenter(name, item, (*key, name), checks)
            if dc is not None:
                out[name] = dc
        return out, set(value)

    def datacenter(
        self, name: str, value: Any, key: KeyPath, checks: tuple[dict[str, Check], set[str]]
    ) -> DataCenter | None:
        table = self.table(value, key, _DC_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        vips = self.get(table, (*key, "vips"), self.addresses, required=True)
        latitude, longitude = self.coordinates(table, key)
        country, continent = self.place(table, key)
        weight = self.get(table, (*key, "weight"), self.number(above=0), 1.0)
        bias = self.get(table, (*key, "bias_km"), self.number(-40_000, 40_000), 0.0)
        check_name = self.get(table, (*key, "check"), self.names_one(checks[1], "check"))
        check = checks[0].get(check_name) if check_name is not None else None
        probe_address = self.get(table, (*key, "probe"), self.address)
        load = self.load_source(table["load"], (*key, "load")) if "load" in table else None
        if probe_address is not None and "check" not in table:
            self.error((*key, "probe"), "a probe address needs a check")
        if len(self.problems) > before or (check_name is not None and check is None):
            return None  # (a broken check was reported where it is defined)
        assert vips is not None and weight is not None and bias is not None
        probe = None
        if check is not None:
            first_v4 = next((a for a in vips if a.version == 4), None)
            probe = str(probe_address or first_v4 or vips[0])
        return DataCenter(
            name=name,
            vips=vips,
            latitude=latitude,
            longitude=longitude,
            country=country,
            continent=continent,
            weight=weight,
            bias_km=bias,
            check=check,
            probe=probe,
            load=load,
        )

    def names_one(self, known: Iterable[str], what: str) -> Callable[[Any, KeyPath], str | None]:
        valid = tuple(known)

        def convert(value: Any, key: KeyPath) -> str | None:
            if not isinstance(value, str):
                self.error(key, f"expected a {what} name, got {_kind(value)}")
                return None
            if value not in valid:
                close = difflib.get_close_matches(value, valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.error(key, f"unknown {what} {value!r}{hint}")
                return None
            return value

        return convert

    def services(self, value: Any, datacenters: dict[str, DataCenter], declared: set[str]) -> dict[str, Service]:
        key: KeyPath = ("services",)
        out: dict[str, Service] = {}
        first: dict[str, str] = {}
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {_kind(value)}")
            return out
        for raw, item in value.items():
            skey: KeyPath = (*key, raw)
            name = self.service_name(raw, skey)
            if name is None:
                continue
            if name in first:
                self.error(skey, f"the same name as service {first[name]!r}")
                continue
            first[name] = raw
            if (
                isinstance(item, dict)
                and item
                and not set(item) & set(_SERVICE_KEYS)
                and all(isinstance(v, dict) for v in item.values())
            ):
                # [services.www.example.com] makes nested tables: the dots need quoting.
                self.error(
                    skey,
                    f'no service keys here; quote a name with dots: [services."{raw}.…"]',
                )
                continue
            service = self.service(name, item, skey, datacenters, declared)
            if service is not None:
                out[name] = service
        return out

    def service_name(self, raw: str, key: KeyPath) -> str | None:
        name = normalize_name(raw)
        if name == ".":
            self.error(key, "the root cannot be a service")
            return None
        if not name.isascii():
            self.error(key, "use the ASCII (punycode, xn--) form of the name")
            return None
        labels = name[:-1].split(".")
        if any(not label for label in labels):
            self.error(key, f"{raw!r} has an empty label")
            return None
        if any(len(label) > 63 for label in labels) or len(name) > 254:
            self.error(key, f"{raw!r} is too long (labels up to 63, names up to 253 characters)")
            return None
        if any(c.isspace() or c == "\\" for c in name):
            self.error(key, f"{raw!r}: a service name cannot hold blanks or backslashes")
            return None
        if "*" in labels:
            self.error(key, "wildcard services are not supported")
            return None
        return name

    def service(
        self,
        name: str,
        value: Any,
        key: KeyPath,
        datacenters: dict[str, DataCenter],
        declared: set[str],
    ) -> Service | None:
        table = self.table(value, key, _SERVICE_KEYS)
        if table is None:
            return None
        before = len(self.problems)
        members = self.get(
            table, (*key, "datacenters"),
            lambda v, k: self.names(v, k, sorted(declared), "data center"), required=True,
        )  # fmt: skip
        policy = self.get(table, (*key, "policy"), self.string(POLICIES), "nearest")
        answers = self.get(table, (*key, "answers"), self.integer(1, 1000), 1)
        if members is not None and answers is not None and answers > len(members):
            self.error(
                (*key, "answers"),
                f"answers = {answers} but the service has {len(members)} data center(s)",
            )
        ttl = self.get(table, (*key, "ttl"), self.integer(0, MAX_TTL), 30)
        ttl_degraded = self.get(table, (*key, "ttl_degraded"), self.integer(0, MAX_TTL), min(ttl or 0, 10))
        if ttl is not None and ttl_degraded is not None and ttl_degraded > ttl:
            self.error((*key, "ttl_degraded"), f"ttl_degraded ({ttl_degraded}) is longer than ttl ({ttl})")
        all_down = self.get(table, (*key, "all_down"), self.string(ALL_DOWN_MODES), "open")
        fallback = self.get(table, (*key, "fallback"), self.addresses, _NO_ADDRESSES)
        if all_down == "fallback" and "fallback" not in table:
            self.error((*key, "all_down"), 'all_down = "fallback" needs fallback addresses')
        elif all_down not in (None, "fallback") and "fallback" in table:
            self.error((*key, "fallback"), 'only used with all_down = "fallback"')
        for option, user in (("map", "geo"), ("default", "geo"), ("order", "failover")):
            if option in table and policy is not None and policy != user:
                self.error((*key, option), f'only used by policy "{user}"')
        pool = members or ()
        rules: tuple[GeoRule, ...] = ()
        default: tuple[str, ...] | None = pool
        order: tuple[str, ...] | None = pool
        if policy == "geo":
            rules = self.geo_map(table, key, pool)
            default = self.get(table, (*key, "default"), lambda v, k: self.names(v, k, pool, "member"), pool)
        elif policy == "failover":
            given = self.get(table, (*key, "order"), lambda v, k: self.names(v, k, pool, "member"), pool)
            # Members left out of the order follow it, in datacenters order.
            order = None if given is None else (*given, *(m for m in pool if m not in given))
        if len(self.problems) > before or members is None:
            return None
        if any(m not in datacenters for m in members):
            return None  # a broken data center, reported where it is defined
        if policy == "nearest" and len(members) > 1:
            for i, member in enumerate(members):
                if not datacenters[member].has_coordinates:
                    self.error(
                        (*key, "datacenters", i),
                        f'policy "nearest" needs latitude and longitude on data center {member!r}',
                    )
            if len(self.problems) > before:
                return None
        assert policy is not None and answers is not None and ttl is not None
        assert ttl_degraded is not None and all_down is not None and fallback is not None
        assert default is not None and order is not None
        return Service(
            name=name,
            datacenters=members,
            policy=policy,
            answers=answers,
            ttl=ttl,
            ttl_degraded=ttl_degraded,
            all_down=all_down,
            fallback=fallback,
            map=rules,
            default=default,
            order=order if policy == "failover" else (),
            line=self.locator.find(key),
            path=self.path,
        )

    def geo_map(self, table: Mapping[str, Any], key: KeyPath, members: tuple[str, ...]) -> tuple[GeoRule, ...]:
        if "map" not in table:
            return ()
        mkey: KeyPath = (*key, "map")
        items = self.array(table["map"], mkey, nonempty=False) or []
        rules: list[GeoRule] = []
        seen: dict[str, KeyPath] = {}
        for i, item in enumerate(items):
            rkey: KeyPath = (*mkey, i)
            rule = self.table(item, rkey, _RULE_KEYS)
            if rule is None:
                continue
            order = self.get(
                rule, (*rkey, "order"), lambda v, k: self.names(v, k, members, "member"),
                required=True,
            )  # fmt: skip
            if "match" not in rule:
                self.error((*rkey, "match"), "required key is missing")
                continue
            raw = rule["match"]
            matches = raw if isinstance(raw, list) else [raw]
            if isinstance(raw, list) and not raw:
                self.error((*rkey, "match"), "must not be empty")
            for j, match in enumerate(matches):
                where: KeyPath = (*rkey, "match", j) if isinstance(raw, list) else (*rkey, "match")
                parsed = self.matcher(match, where)
                if parsed is None:
                    continue
                text = f"{parsed[0]}:{parsed[1]}"
                if text in seen:
                    self.error(where, f"{text!r} is already matched by {render_key(seen[text])}")
                    continue
                seen[text] = where
                if order is not None:
                    rules.append(GeoRule(parsed[0], parsed[1], order, self.locator.find(where)))
        # Precedence, whatever the file order: the most specific CIDR, then subdivision,
        # country, continent (there is no overlap within the other kinds).
        rules.sort(
            key=lambda r: (
                RULE_KINDS.index(r.kind),
                -ipaddress.ip_network(r.value).prefixlen if r.kind == "cidr" else 0,
            )
        )
        return tuple(rules)

    def matcher(self, value: Any, key: KeyPath) -> tuple[str, str] | None:
        if not isinstance(value, str):
            self.error(key, f'expected a string like "country:JP", got {_kind(value)}')
            return None
        kind, sep, rest = value.partition(":")
        kind, rest = kind.strip().lower(), rest.strip()
        if not sep or kind not in RULE_KINDS:
            self.error(
                key,
                f"{value!r} is not KIND:VALUE with KIND one of " + ", ".join(RULE_KINDS),
            )
            return None
        if kind == "cidr":
            network = self._cidr(rest, key)
            return None if network is None else (kind, str(network))
        rest = rest.upper()
        if kind == "continent" and rest not in CONTINENTS:
            self.error(key, f"unknown continent {rest!r}; expected one of " + " ".join(sorted(CONTINENTS)))
            return None
        if kind == "country" and not _COUNTRY.fullmatch(rest):
            self.error(key, f"{rest!r} is not an ISO 3166-1 alpha-2 country code")
            return None
        if kind == "subdivision":
            country, dash, code = rest.partition("-")
            if not dash or not _COUNTRY.fullmatch(country) or not _SUBDIVISION.fullmatch(code):
                self.error(key, f'{rest!r} is not an ISO 3166-2 code like "US-CA"')
                return None
        return kind, rest
