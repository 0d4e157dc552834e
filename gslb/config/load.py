"""Reading the configuration: TOML text -> the model (gslb.config.model), every problem gathered at its line."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar

from gslb import inputs
from gslb.config.locate import Locator, render_key, syntax_error
from gslb.config.model import (
    ALL_DOWN_MODES,
    CHECK_KINDS,
    CONTINENTS,
    HTTP_METHODS,
    LOAD_METRICS,
    MAX_SECRETS,
    MAX_TTL,
    NO_ECS_MODES,
    POLICIES,
    PRIVATE_MODES,
    RULE_KINDS,
    Check,
    ClusterConfig,
    Config,
    ConfigError,
    CookieSettings,
    DataCenter,
    DnssecSettings,
    GeoRule,
    KeyPath,
    LoadSource,
    Problem,
    RrlSettings,
    Service,
    normalize_name,
)
from gslb.geo.places import IPAddress, IPNetwork, Location

__all__ = ["empty", "load", "loads"]

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
_CLUSTER_KEYS: Final = ("name", "etcd", "down_quorum", "lease")
_ETCD_URL: Final = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?")
_EXPECT_STATUS: Final[tuple[int, ...]] = (200,)
_NO_ADDRESSES: Final[tuple[IPAddress, ...]] = ()

T = TypeVar("T")


def empty(path: Path | None = None) -> Config:
    """The configuration used when there is no configuration file: no services at all."""
    return Config(
        path=path,
        datacenters=MappingProxyType({}),
        services=MappingProxyType({}),
        checks=MappingProxyType({}),
    )


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
        line, message = syntax_error(e, text)
        raise ConfigError([Problem(path, line, "", message)]) from None
    loader = _Loader(text, path)
    config = loader.config(document)
    if loader.problems:
        raise ConfigError(loader.problems)
    return config


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
        self.locator = Locator(text)
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
