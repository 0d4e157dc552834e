"""Client location from a GeoIP2/MMDB database, CIDR overrides and a default."""

from __future__ import annotations

import bisect
import csv
import dataclasses
import datetime
import functools
import importlib.resources
import ipaddress
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import maxminddb

log = logging.getLogger("gslb.geo")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, and which network decided it."""

    country: str | None = None  # ISO 3166-1 alpha-2, upper case ("DE")
    continent: str | None = None  # "AF" "AN" "AS" "EU" "NA" "OC" "SA"
    subdivision: str | None = None  # ISO 3166-2 without country ("CA" for US-CA)
    latitude: float | None = None
    longitude: float | None = None
    # The network whose data decided (the MMDB record's prefix, or the override CIDR).
    # None for the default location.  Its prefix length is the ECS scope to return.
    network: IPNetwork | None = None
    source: str = "default"  # "database" | "override" | "default"
    city: str | None = None

    @property
    def known(self) -> bool:
        return self.source != "default"

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None


class GeoError(Exception):
    """A geo database or table that cannot be used; the message names the file."""


# The embedded default database (see geodb/README.md) and the centroid table are package
# data in gslb/data/, found the same way in a checkout, an installed wheel or a pipx venv.
GEODB_DIR: Final = Path(str(importlib.resources.files("gslb").joinpath("data")))
DEFAULT_DATABASE: Final = GEODB_DIR / "geolite2-country-2018.mmdb"
CENTROIDS_FILE: Final = GEODB_DIR / "country_centroids.csv"

# Mean Earth radius (IUGG), the usual choice for a spherical-Earth great-circle distance.
EARTH_RADIUS_KM: Final = 6371.0088

# Both caches are dropped whole when they grow past this: cheap, and bounds memory.
CACHE_LIMIT: Final = 100_000

_NOWHERE: Final = Location()


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points in degrees (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    # min() guards asin against rounding just above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class CountryCentroid:
    continent: str | None
    latitude: float
    longitude: float


@functools.cache
def country_centroids() -> Mapping[str, CountryCentroid]:
    """ISO country code -> continent and centroid, from gslb/data/country_centroids.csv."""
    try:
        with CENTROIDS_FILE.open(encoding="utf-8", newline="") as table:
            rows = list(csv.DictReader(line for line in table if not line.startswith("#")))
        return {
            row["iso_code"]: CountryCentroid(row["continent"] or None, float(row["latitude"]), float(row["longitude"]))
            for row in rows
        }
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise GeoError(f"{CENTROIDS_FILE}: cannot read country centroids: {error}") from error


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """What `gslb explain` and the status page show about the open database."""

    path: Path
    database_type: str
    description: str
    build_epoch: int
    node_count: int
    ip_version: int
    # False for Country databases: their coordinates come from the centroid table.
    has_coordinates: bool
    embedded: bool

    @property
    def build_date(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self.build_epoch, datetime.UTC).date()


# Special-purpose blocks (IANA IPv4/IPv6 Special-Purpose Address Registries, RFC 6890 and
# successors; multicast and the IPv6 blocks RFC 4291 leaves reserved).  A client address in
# one falls to the default location with that block as its network: the smallest such block
# is the honest ECS scope.  The table is explicit because ipaddress's is_private has changed
# between patch releases (CPython gh-113171) and a cached block must mean the same on every
# Python; tests/test_geo.py checks that the table covers every address the ipaddress
# properties (is_private, is_loopback, is_link_local, is_multicast, is_unspecified,
# is_reserved, not is_global) call special, so a Python that widens them fails a test.
# Documentation ranges (192.0.2.0/24, 2001:db8::/32, ...) are special too: no real client
# has them, and ipaddress counts them as private.  Globally reachable anycast blocks
# (AS112, AMT) are left to the database.
_SPECIAL_V4: Final = (
    "0.0.0.0/8",  # "this network" (RFC 791)
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local (RFC 3927)
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "192.0.2.0/24",  # TEST-NET-1 (RFC 5737)
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
_SPECIAL_V6: Final = (
    "::/8",  # reserved by IETF (RFC 4291); the entries below nest inside it
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::ffff:0:0/96",  # IPv4-mapped: located as IPv4; listed to keep other blocks out of it
    "64:ff9b::/96",  # NAT64 well-known prefix (RFC 6052)
    "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
    "100::/8",  # reserved; holds the discard-only block
    "100::/64",  # discard-only (RFC 6666)
    "200::/7",
    "400::/6",
    "800::/5",
    "1000::/4",
    "2001::/23",  # IETF protocol assignments: Teredo, benchmarking, ORCHID (RFC 2928)
    "2001:db8::/32",  # documentation (RFC 3849)
    "2002::/16",  # 6to4 (RFC 3056)
    "3fff::/20",  # documentation (RFC 9637)
    "4000::/3",
    "6000::/3",
    "8000::/3",
    "a000::/3",
    "c000::/3",
    "e000::/4",
    "f000::/5",
    "f800::/6",
    "fc00::/7",  # unique local (RFC 4193)
    "fe00::/9",
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local, deprecated (RFC 3879)
    "ff00::/8",  # multicast
)
SPECIAL_NETWORKS: Final[tuple[IPNetwork, ...]] = tuple(
    ipaddress.ip_network(text) for text in (*_SPECIAL_V4, *_SPECIAL_V6)
)

_SPECIAL_BY_VERSION: Final = {
    version: tuple(network for network in SPECIAL_NETWORKS if network.version == version) for version in (4, 6)
}

_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
MAPPED_BASE: Final = int(_MAPPED.network_address)  # ::ffff:0:0 as an integer
MAPPED_MASK: Final = int(_MAPPED.netmask)


def mapped_network(network: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """An IPv4 block in IPv4-mapped IPv6 form (::ffff:a.b.c.d/96+n), for a client seen over IPv6."""
    return ipaddress.IPv6Network((MAPPED_BASE | int(network.network_address), 96 + network.prefixlen))


_Kind = Literal["override", "special", "database"]


def is_special(address: IPAddress) -> bool:
    """True if `address` is in a special-purpose block: no public client has such an address."""
    return any(address in network for network in _SPECIAL_BY_VERSION[address.version])


_EMPTY: Final[Mapping[str, Any]] = {}

# What a database record says: country, continent, subdivision, latitude, longitude, city.
_Fields = tuple[str | None, str | None, str | None, float | None, float | None, str | None]


def _record_fields(record: Mapping[str, Any]) -> _Fields | None:
    """A GeoIP2/GeoLite2/DB-IP City or Country record's fields; None if it places nothing."""
    location = _mapping(record.get("location"))
    latitude = location.get("latitude")
    longitude = location.get("longitude")
    if not isinstance(latitude, int | float) or not isinstance(longitude, int | float):
        latitude = longitude = None
    subdivisions = record.get("subdivisions")
    first = _mapping(subdivisions[0]) if isinstance(subdivisions, list) and subdivisions else _EMPTY
    return place_fields(
        _text(_mapping(record.get("country")).get("iso_code")),
        _text(_mapping(record.get("continent")).get("code")),
        _text(first.get("iso_code")),
        latitude,
        longitude,
        _english_name(_mapping(record.get("city"))),
    )


def place_fields(
    country: str | None,
    continent: str | None,
    subdivision: str | None,
    latitude: float | None,
    longitude: float | None,
    city: str | None,
) -> _Fields | None:
    """What a record's fields place (as found in it), completed from the country centroids.

    None when the record says nothing about where the client is (registered_country only).
    """
    if country is None and continent is None and latitude is None:
        return None
    if country is not None and (latitude is None or continent is None):
        centroid = country_centroids().get(country)
        if centroid is not None:
            continent = continent or centroid.continent
            if latitude is None:
                # A country-level answer: the centroid stands in for the client's position.
                latitude, longitude, city = centroid.latitude, centroid.longitude, None
    return (
        country,
        continent,
        subdivision,
        None if latitude is None else float(latitude),
        None if longitude is None else float(longitude),
        city,
    )


def _mapping(value: object) -> Mapping[str, Any]:
    # maxminddb decodes MMDB maps to plain dicts; `dict` is much cheaper to test than Mapping.
    return value if isinstance(value, dict) else _EMPTY


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _english_name(entry: Mapping[str, Any]) -> str | None:
    names = _mapping(entry.get("names"))
    return _text(names.get("en")) or next((n for n in names.values() if _text(n)), None)


def _complete(location: Location) -> Location:
    """Fill continent and coordinates from the country centroid table where they are missing."""
    if location.country is None or (location.has_coordinates and location.continent):
        return location
    centroid = country_centroids().get(location.country)
    if centroid is None:
        return location
    if location.has_coordinates:
        return dataclasses.replace(location, continent=centroid.continent)
    # A country-level answer: the centroid stands in for the client, and city stays None.
    return dataclasses.replace(
        location,
        continent=location.continent or centroid.continent,
        latitude=centroid.latitude,
        longitude=centroid.longitude,
        city=None,
    )


def _open(path: Path) -> maxminddb.Reader:
    try:
        try:
            return maxminddb.open_database(path, maxminddb.MODE_MMAP_EXT)
        except ValueError:  # the C extension is not built here
            return maxminddb.open_database(path, maxminddb.MODE_AUTO)
    except FileNotFoundError as error:
        raise GeoError(f"{path}: geo database not found") from error
    except (OSError, RuntimeError, ValueError) as error:
        # maxminddb.InvalidDatabaseError is a RuntimeError.
        raise GeoError(f"{path}: not a usable MaxMind DB file: {error}") from error


def _sample_has_coordinates(reader: maxminddb.Reader, limit: int = 64) -> bool:
    for count, (_, record) in enumerate(reader):
        if isinstance(record, Mapping) and "latitude" in _mapping(record.get("location")):
            return True
        if count >= limit:
            break
    return False


class GeoDatabase:
    """Locate clients: CIDR overrides, then special-purpose ranges, then the MMDB.

    Results are cached per decided network, so a repeated lookup costs a dict hit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        overrides: Sequence[tuple[IPNetwork, Location]] = (),
        default: Location = _NOWHERE,
        special_in_database: bool = False,
    ) -> None:
        """Open `path` (None: the embedded database in gslb/data/, built by geodb/).

        `special_in_database`: look private and other special-purpose addresses up in the
        database instead of sending them to the default (for test databases such as
        shared/peers/mmdb/test-city.mmdb that map 10.0.0.0/8 client subnets).
        """
        self.path = Path(path) if path is not None else DEFAULT_DATABASE
        self._reader = _open(self.path)
        try:
            meta = self._reader.metadata()
            self.metadata = DatabaseInfo(
                path=self.path,
                database_type=str(meta.database_type),
                description=str(_mapping(meta.description).get("en", "")),
                build_epoch=int(meta.build_epoch),
                node_count=int(meta.node_count),
                ip_version=int(meta.ip_version),
                has_coordinates=_sample_has_coordinates(self._reader),
                embedded=path is None,
            )
        except Exception as error:
            self._reader.close()
            raise GeoError(f"{self.path}: not a usable MaxMind DB file: {error}") from error
        if self.metadata.ip_version not in (4, 6):
            self._reader.close()
            raise GeoError(f"{self.path}: unsupported ip_version {self.metadata.ip_version}")

        self.default = _complete(default)
        self.special_in_database = special_in_database
        self._overrides: dict[IPNetwork, Location] = {}
        for network, location in overrides:
            network = _unmap_network(network)
            self._overrides[network] = _complete(dataclasses.replace(location, source="override"))
        specials = () if special_in_database else SPECIAL_NETWORKS
        self._rules = {version: _RuleSet(version, self._overrides, specials, self.default) for version in (4, 6)}

        # Cache level 1: exact address (int) -> Location, one dict per version.
        self._hits4: dict[int, Location] = {}
        self._hits6: dict[int, Location] = {}
        # Cache level 2: uniform block -> Location, keyed by
        # (address >> shift) << 9 | tag, with tag = shift (IPv4) or 256 + shift (IPv6),
        # and the shifts seen so far per version.
        self._blocks: dict[int, Location] = {}
        self._shifts4: list[int] = []
        self._shifts6: list[int] = []

    @property
    def overrides(self) -> Mapping[IPNetwork, Location]:
        """The CIDR overrides (IPv4-mapped networks as IPv4), with source "override"."""
        return self._overrides

    # -- the hot path ---------------------------------------------------------------------

    def locate(self, address: IPAddress) -> Location:
        """The client's location; `network` is the block that decided (the ECS scope)."""
        if address.version == 4:
            found = self._hits4.get(int(address))
        else:
            found = self._hits6.get(int(address))
        if found is not None:
            return found
        return self._locate_miss(address)

    def locate_subnet(self, network: IPNetwork) -> Location:
        """Location for an EDNS Client Subnet (RFC 7871): its address is already truncated."""
        return self.locate(network.network_address)

    # -- misses -----------------------------------------------------------------------------

    def _locate_miss(self, address: IPAddress) -> Location:
        value = int(address)
        v6 = address.version == 6
        hits = self._hits6 if v6 else self._hits4
        found = self._cached_block(value, v6)
        if found is None:
            found = self.locate_uncached(address)
            self._remember_block(found, v6)
        if len(hits) >= CACHE_LIMIT:
            hits.clear()
        hits[value] = found
        return found

    def _cached_block(self, value: int, v6: bool) -> Location | None:
        blocks = self._blocks
        if v6:
            for shift in self._shifts6:
                found = blocks.get(((value >> shift) << 9) | (256 + shift))
                if found is not None:
                    return found
        else:
            for shift in self._shifts4:
                found = blocks.get(((value >> shift) << 9) | shift)
                if found is not None:
                    return found
        return None

    def _remember_block(self, location: Location, v6: bool) -> None:
        network = location.network
        if network is None:
            return
        shift = network.max_prefixlen - network.prefixlen
        shifts = self._shifts6 if v6 else self._shifts4
        if shift not in shifts:
            shifts.append(shift)
        if len(self._blocks) >= CACHE_LIMIT:
            self._blocks.clear()
        value = int(network.network_address)
        self._blocks[((value >> shift) << 9) | ((256 if v6 else 0) + shift)] = location

    def locate_uncached(self, address: IPAddress) -> Location:
        """The same answer as `locate`, worked out from scratch (for tests and explain)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is an IPv4 client behind a dual-stack socket: locate it as IPv4
            # and report the block in IPv6 form, so that the network contains the address.
            found = self.locate_uncached(address.ipv4_mapped)
            if found.network is None:
                return found
            assert isinstance(found.network, ipaddress.IPv4Network)
            return _with_network(found, mapped_network(found.network))

        bits = address.max_prefixlen
        value = int(address)
        rules = self._rules[address.version]
        location: Location | None
        fields: _Fields | None = None
        kind: _Kind
        # 1. CIDR overrides, most specific first; 2. special-purpose blocks; 3. the database.
        for prefix, level_kind, table in rules.levels:
            location = table.get(value >> (bits - prefix))
            if location is not None:
                kind, base_prefix = level_kind, prefix
                break
        else:
            kind, location = "database", self.default
            fields, base_prefix = self._database(address)
        prefix = rules.uniform_prefix(value, base_prefix, kind)
        network = _network(address.version, value >> (bits - prefix) << (bits - prefix), prefix)
        if fields is not None:
            country, continent, subdivision, latitude, longitude, city = fields
            return Location(country, continent, subdivision, latitude, longitude, network, "database", city)
        return _with_network(location, network)

    def _database(self, address: IPAddress) -> tuple[_Fields | None, int]:
        """The record's fields (None if the DB has none) and the DB's prefix length."""
        if address.version == 6 and self.metadata.ip_version == 4:
            return None, 0  # an IPv4-only database knows nothing of IPv6: all of it is unknown
        try:
            record, prefix = self._reader.get_with_prefix_len(address)
        except ValueError as error:  # closed database
            raise GeoError(f"{self.path}: {error}") from error
        except RuntimeError as error:  # InvalidDatabaseError: a corrupt tree or record
            log.warning("%s: lookup of %s failed: %s", self.path, address, error)
            return None, address.max_prefixlen
        if address.version == 4 and prefix > 32:
            # Some maxminddb versions count the 96 bits of the ::/96 subtree that an IPv6
            # database keeps IPv4 in; maxminddb 3.2 already returns the IPv4 length.
            prefix -= 96
        prefix = max(0, min(prefix, address.max_prefixlen))
        if not isinstance(record, dict):
            return None, prefix
        return _record_fields(record), prefix

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._reader.close()
        self._hits4.clear()
        self._hits6.clear()
        self._blocks.clear()

    def __enter__(self) -> GeoDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GeoDatabase({str(self.path)!r}, {self.metadata.database_type!r})"


class _RuleSet:
    """The override and special-purpose networks of one IP version, indexed for lookups."""

    def __init__(
        self,
        version: int,
        overrides: Mapping[IPNetwork, Location],
        specials: Iterable[IPNetwork],
        default: Location,
    ) -> None:
        self.bits = 32 if version == 4 else 128
        found: dict[tuple[_Kind, int], dict[int, Location]] = {}
        rules: list[tuple[int, int, _Kind]] = []
        entries: list[tuple[_Kind, IPNetwork, Location]] = [
            *(("override", network, location) for network, location in overrides.items()),
            *(("special", network, default) for network in specials),
        ]
        for kind, network, location in entries:
            if network.version != version:
                continue
            start, prefix = int(network.network_address), network.prefixlen
            found.setdefault((kind, prefix), {})[start >> (self.bits - prefix)] = location
            rules.append((start, prefix, kind))
        # Overrides before special blocks, each most specific first: the first level that
        # holds an address decides it.  One dict per prefix length keeps that to a few
        # dict lookups however many overrides there are.
        order = sorted(found, key=lambda level: (level[0] != "override", -level[1]))
        self.levels: list[tuple[int, _Kind, dict[int, Location]]] = [
            (prefix, kind, found[kind, prefix]) for kind, prefix in order
        ]
        rules.sort()
        self.rules = rules
        self.starts = [start for start, _, _ in rules]

    def uniform_prefix(self, value: int, base_prefix: int, kind: _Kind) -> int:
        """Shortest prefix of `value`, within the deciding block, that no other rule cuts into.

        A database record or an override may hold a more specific override or special block:
        the cached block (and the ECS scope) must stop short of it, or addresses in there
        would get this answer.
        """
        bits = self.bits
        base_start = value >> (bits - base_prefix) << (bits - base_prefix)
        base_end = base_start + (1 << (bits - base_prefix))
        prefix = base_prefix
        index = bisect.bisect_left(self.starts, base_start)
        rules = self.rules
        while index < len(rules) and rules[index][0] < base_end:
            start, rule_prefix, rule_kind = rules[index]
            index += 1
            if rule_prefix < base_prefix or (kind == "override" and rule_kind != "override"):
                continue  # holds the block itself, or loses to the deciding override anyway
            if (start ^ value) >> (bits - rule_prefix) == 0:
                continue  # holds the address: it is the deciding rule or a larger one
            prefix = max(prefix, bits - (start ^ value).bit_length() + 1)
        return prefix


def _with_network(location: Location, network: IPNetwork) -> Location:
    # Positional: several times cheaper than dataclasses.replace, and misses call it.
    return Location(
        location.country,
        location.continent,
        location.subdivision,
        location.latitude,
        location.longitude,
        network,
        location.source,
        location.city,
    )


def _network(version: int, start: int, prefix: int) -> IPNetwork:
    if version == 4:
        return ipaddress.IPv4Network((start, prefix))
    return ipaddress.IPv6Network((start, prefix))


def _unmap_network(network: IPNetwork) -> IPNetwork:
    """::ffff:a.b.c.d/96+n as a.b.c.d/n: such addresses are located as IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        start = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return network
