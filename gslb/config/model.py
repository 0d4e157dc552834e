"""The configuration as plain data: frozen dataclasses of data centers, checks and services; Problem, ConfigError."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gslb.geo.places import IPAddress, IPNetwork, Location

__all__ = [
    "ALL_DOWN_MODES",
    "CHECK_KINDS",
    "CONTINENTS",
    "HTTP_METHODS",
    "LOAD_METRICS",
    "MAX_SECRETS",
    "MAX_TTL",
    "NO_ECS_MODES",
    "POLICIES",
    "PRIVATE_MODES",
    "RULE_KINDS",
    "Check",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "CookieSettings",
    "DataCenter",
    "DnssecSettings",
    "GeoRule",
    "KeyPath",
    "LoadSource",
    "Problem",
    "RrlSettings",
    "Service",
    "Target",
    "normalize_name",
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
MAX_SECRETS: Final = 3  # cookie secrets in a secret file: the current one, then those still accepted

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
    """How to judge one target (a [checks] table); the prober in gslb.health.probe runs it."""

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
    _v4: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _v6: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once here because the answer path asks for them on every pick.
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

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.value}"


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
    _fallback_v4: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _fallback_v6: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fallback_v4", tuple(str(a) for a in self.fallback if a.version == 4))
        object.__setattr__(self, "_fallback_v6", tuple(str(a) for a in self.fallback if a.version == 6))

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


def normalize_name(name: str) -> str:
    """A DNS name as services are keyed: lower-case (ASCII only, RFC 4343) and absolute."""
    name = name.translate(_LOWER)
    return name if name.endswith(".") else name + "."


_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
