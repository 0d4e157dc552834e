"""Client location from a GeoIP2/MMDB database, CIDR overrides and a default."""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import maxminddb

from gslb.geo.places import (
    DEFAULT_DATABASE,
    SPECIAL_NETWORKS,
    GeoError,
    IPAddress,
    IPNetwork,
    Location,
    country_centroids,
    mapped_network,
    unmapped_network,
)

log = logging.getLogger("gslb.geo")

# Both caches are dropped whole when they grow past this: cheap, and bounds memory.
CACHE_LIMIT: Final = 100_000

_NOWHERE: Final = Location()


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


_Kind = Literal["override", "special", "database"]


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
            network = unmapped_network(network)
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
