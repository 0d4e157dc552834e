"""A tiny GeoIP2-style MMDB with known networks, for tests (pytest-free: call build_test_mmdb)."""

# The networks are public address ranges used only as data: tests look them up in the
# database, nothing ever sends a packet to them.
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]


@dataclass(frozen=True, slots=True)
class Place:
    country: str
    country_name: str
    continent: str
    continent_name: str
    subdivision: str | None
    city: str
    latitude: float
    longitude: float


ASHBURN = Place("US", "United States", "NA", "North America", "VA", "Ashburn", 39.04, -77.49)
FRANKFURT = Place("DE", "Germany", "EU", "Europe", "HE", "Frankfurt am Main", 50.11, 8.68)
TOKYO = Place("JP", "Japan", "AS", "Asia", "13", "Tokyo", 35.68, 139.69)
SAO_PAULO = Place("BR", "Brazil", "SA", "South America", "SP", "São Paulo", -23.55, -46.63)
SYDNEY = Place("AU", "Australia", "OC", "Oceania", "NSW", "Sydney", -33.87, 151.21)
LONDON = Place("GB", "United Kingdom", "EU", "Europe", "ENG", "London", 51.51, -0.13)
SINGAPORE = Place("SG", "Singapore", "AS", "Asia", None, "Singapore", 1.29, 103.85)
PARIS = Place("FR", "France", "EU", "Europe", "IDF", "Paris", 48.86, 2.35)

# A network smaller than /24 inside 2.2.0.0/16, to exercise small networks and the cache.
SMALL_NETWORK = "2.2.7.16/28"

NETWORKS: dict[str, Place] = {
    "1.1.0.0/16": ASHBURN,
    "2.2.0.0/16": FRANKFURT,
    SMALL_NETWORK: PARIS,
    "3.3.0.0/16": TOKYO,
    "4.4.0.0/16": SAO_PAULO,
    "5.5.0.0/16": SYDNEY,
    "6.6.0.0/16": LONDON,
    "7.7.0.0/16": SINGAPORE,
    "2a00:1::/32": ASHBURN,
    "2a00:2::/32": FRANKFURT,
    "2a00:3::/32": TOKYO,
}

Layout = Literal["city", "country"]


def record(place: Place, layout: Layout = "city") -> dict[str, Any]:
    """The MMDB record for a place: GeoIP2-City or GeoIP2-Country layout."""
    country = {"iso_code": place.country, "names": {"en": place.country_name}}
    data: dict[str, Any] = {
        "continent": {"code": place.continent, "names": {"en": place.continent_name}},
        "country": country,
        "registered_country": country,
    }
    if layout == "city":
        data["city"] = {"names": {"en": place.city}}
        data["location"] = {
            "latitude": place.latitude,
            "longitude": place.longitude,
            "accuracy_radius": 50,
        }
        if place.subdivision is not None:
            data["subdivisions"] = [{"iso_code": place.subdivision, "names": {"en": "x"}}]
    return data


def build_test_mmdb(
    path: str | Path,
    *,
    ip_version: int = 6,
    layout: Layout = "city",
    networks: Mapping[str, Place] = NETWORKS,
) -> Path:
    """Write the networks to an MMDB at `path` and return the path.

    ip_version=4 leaves the IPv6 networks out; ip_version=6 keeps IPv4 in ::/96 as MaxMind does.
    """
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=f"GeoIP2-{layout.capitalize()}",
        languages=["en"],
        description=f"gslb test {layout} database",
    )
    parsed = [(ipaddress.ip_network(text), place) for text, place in networks.items()]
    # Larger networks first: mmdb-writer splits an existing leaf around a later subnet,
    # while a later supernet would overwrite what was inserted before.
    for network, place in sorted(parsed, key=lambda item: item[0].prefixlen):
        if network.version == 6 and ip_version == 4:
            continue
        writer.insert_network(IPSet([str(network)]), record(place, layout))
    path = Path(path)
    writer.to_db_file(str(path))
    return path


def place_of(address: str) -> tuple[str, Place] | None:
    """The most specific network in NETWORKS holding `address`, and its place."""
    ip = ipaddress.ip_address(address)
    holding = [
        (ipaddress.ip_network(text), place)
        for text, place in NETWORKS.items()
        if ip.version == ipaddress.ip_network(text).version and ip in ipaddress.ip_network(text)
    ]
    if not holding:
        return None
    network, place = max(holding, key=lambda item: item[0].prefixlen)
    return str(network), place
