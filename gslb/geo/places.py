"""Places and addresses: the location type, distances, country centroids, special-purpose blocks."""

from __future__ import annotations

import csv
import functools
import importlib.resources
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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


def is_special(address: IPAddress) -> bool:
    """True if `address` is in a special-purpose block: no public client has such an address."""
    return any(address in network for network in _SPECIAL_BY_VERSION[address.version])


def unmapped_network(network: IPNetwork) -> IPNetwork:
    """::ffff:a.b.c.d/96+n as a.b.c.d/n: such addresses are located as IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        start = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return network
