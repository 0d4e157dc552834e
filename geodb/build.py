"""Build gslb's embedded country database and country centroid table from a GeoLite2-City MMDB."""

# Usage (from the repository root):
#   python geodb/build.py                       # source: the maxminddb-geolite2 package's DB
#   python geodb/build.py --source GeoLite2-City.mmdb --output geodb/mine.mmdb
#
# What it does, in one pass over the source database:
#   * every network is reduced to its (country, continent) pair; adjacent networks with the
#     same pair are merged back into the largest CIDR blocks, which is what keeps the output
#     small (the tree only branches where the country changes);
#   * each country's centroid is the mean, on the unit sphere, of the source records'
#     coordinates weighted by the number of addresses each network holds: it is the middle
#     of where a country's addresses are, not of its land, which is what "nearest data
#     center" wants for a client known only by country;
#   * the output is a GeoIP2-Country-like MMDB (continent.code, country.iso_code, English
#     names) plus location.latitude/longitude = that centroid, so distance policies work
#     with the embedded database alone;
#   * the centroid table is also written as CSV for gslb.geo.database, which uses it to give
#     coordinates to Country databases (GeoLite2/GeoIP2/DB-IP Country have none).
from __future__ import annotations

import argparse
import csv
import datetime
import ipaddress
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import maxminddb
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "gslb" / "data" / "geolite2-country-2018.mmdb"
DEFAULT_CENTROIDS = ROOT / "gslb" / "data" / "country_centroids.csv"

# (country iso_code or "", continent code or ""): the whole of what the output keeps.
Key = tuple[str, str]


def default_source() -> Path:
    """The GeoLite2-City database shipped by the PyPI package maxminddb-geolite2."""
    from _maxminddb_geolite2 import geolite2_database  # type: ignore[import-untyped]

    return Path(geolite2_database())


@dataclass
class Centroid:
    """A weighted sum of unit vectors; the mean direction is the centroid."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    weight: float = 0.0
    names: dict[str, int] = field(default_factory=dict)  # continent code -> votes

    def add(self, latitude: float, longitude: float, weight: float) -> None:
        # Summing vectors rather than degrees keeps countries that straddle the
        # antimeridian (Fiji, Kiribati, Russia) from averaging to the wrong side of Earth.
        lat, lon = math.radians(latitude), math.radians(longitude)
        self.x += weight * math.cos(lat) * math.cos(lon)
        self.y += weight * math.cos(lat) * math.sin(lon)
        self.z += weight * math.sin(lat)
        self.weight += weight

    def point(self) -> tuple[float, float]:
        latitude = math.degrees(math.atan2(self.z, math.hypot(self.x, self.y)))
        longitude = math.degrees(math.atan2(self.y, self.x))
        return round(latitude, 4), round(longitude, 4)


@dataclass
class Walk:
    """Everything one pass over the source database collects."""

    runs: dict[int, list[tuple[int, int, Key]]] = field(default_factory=lambda: {4: [], 6: []})
    # IPv4 and IPv6 weights are kept apart: address counts of the two are not comparable.
    countries4: dict[str, Centroid] = field(default_factory=dict)
    countries6: dict[str, Centroid] = field(default_factory=dict)
    continents: dict[str, Centroid] = field(default_factory=dict)
    country_names: dict[str, str] = field(default_factory=dict)
    continent_names: dict[str, str] = field(default_factory=dict)
    source_networks: int = 0
    # (address, its country in the source): a sample checked against the output.
    samples: list[tuple[str, str]] = field(default_factory=list)


def _english(entry: dict[str, Any]) -> str | None:
    names = entry.get("names")
    if isinstance(names, dict):
        name = names.get("en")
        return name if isinstance(name, str) else None
    return None


def merge_push(
    run: list[tuple[int, int, Key]], start: int, prefix: int, key: Key, bits: int
) -> None:
    """Append a network to a sorted run, merging it with its sibling while data is equal."""
    while run:
        top_start, top_prefix, top_key = run[-1]
        size = 1 << (bits - prefix)
        # Two equal-data halves of one parent block collapse into the parent.
        if (
            top_key == key
            and top_prefix == prefix
            and top_start + size == start
            and top_start & ((size << 1) - 1) == 0
        ):
            run.pop()
            start, prefix = top_start, prefix - 1
            continue
        break
    run.append((start, prefix, key))


def walk(source: Path) -> Walk:
    result = Walk()
    with maxminddb.open_database(source, maxminddb.MODE_AUTO) as reader:
        # The reader yields networks in address order (IPv4 first, from the ::/96 subtree)
        # and skips the IPv4 aliases (::ffff:0:0/96, 2002::/16), so each address once.
        network: ipaddress.IPv4Network | ipaddress.IPv6Network
        for network, record in reader:
            result.source_networks += 1
            if not isinstance(record, dict):
                continue
            country = record.get("country") or {}
            continent = record.get("continent") or {}
            iso = country.get("iso_code") or ""
            code = continent.get("code") or ""
            if result.source_networks % SAMPLE_EVERY == 0:
                result.samples.append((str(network[-1]), iso))
            if iso and iso not in result.country_names:
                result.country_names[iso] = _english(country) or iso
            if code and code not in result.continent_names:
                result.continent_names[code] = _english(continent) or code
            location = record.get("location") or {}
            latitude, longitude = location.get("latitude"), location.get("longitude")
            if isinstance(latitude, float) and isinstance(longitude, float):
                if network.version == 4:
                    weight = float(network.num_addresses)
                    table = result.countries4
                else:
                    # Count /64s (the smallest block normally given to one site).
                    weight = float(2 ** max(0, 64 - network.prefixlen))
                    table = result.countries6
                if iso:
                    centroid = table.setdefault(iso, Centroid())
                    centroid.add(latitude, longitude, weight)
                    if code:
                        centroid.names[code] = centroid.names.get(code, 0) + 1
                if code and network.version == 4:
                    result.continents.setdefault(code, Centroid()).add(latitude, longitude, weight)
            if not iso and not code:
                continue  # nothing a country database could say: leave the hole empty
            merge_push(
                result.runs[network.version],
                int(network.network_address),
                network.prefixlen,
                (iso, code),
                network.max_prefixlen,
            )
    return result


def country_table(result: Walk) -> dict[str, tuple[str, float, float]]:
    """ISO code -> (continent, latitude, longitude), for every country the source names."""
    table: dict[str, tuple[str, float, float]] = {}
    for iso in sorted(result.country_names):
        centroid = result.countries4.get(iso) or result.countries6.get(iso)
        if centroid is None or centroid.weight == 0:
            continue
        votes = dict(centroid.names)
        other = result.countries6.get(iso)
        if other is not None and other is not centroid:
            for code, count in other.names.items():
                votes[code] = votes.get(code, 0) + count
        continent = max(sorted(votes), key=lambda code: votes[code]) if votes else ""
        table[iso] = (continent, *centroid.point())
    return table


def _describe(database_type: str, build_epoch: int) -> str:
    built = datetime.datetime.fromtimestamp(build_epoch, datetime.UTC).date()
    return f"{database_type} built {built.isoformat()}"


def write_centroids(path: Path, table: dict[str, tuple[str, float, float]], source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        out.write(
            "# Country centroids for gslb.geo.database, written by geodb/build.py; do not edit by hand.\n"
            f"# Derived from {source} (GeoLite2 data created by MaxMind, CC BY-SA 4.0,\n"
            "# https://www.maxmind.com): for each country, the mean on the unit sphere of the\n"
            "# coordinates of every network the database places in it, weighted by the number\n"
            "# of addresses in the network (IPv4; IPv6 /64 counts for a country without IPv4).\n"
            "# continent = the continent code most of the country's networks carry.\n"
        )
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["iso_code", "continent", "latitude", "longitude"])
        for iso, (continent, latitude, longitude) in sorted(table.items()):
            writer.writerow([iso, continent, f"{latitude:.4f}", f"{longitude:.4f}"])


class _Writer(MMDBWriter):
    """MMDBWriter with a fixed build epoch, so that rebuilding the same source is reproducible."""

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = self._build_epoch
        return meta


def _records(result: Walk, table: dict[str, tuple[str, float, float]]) -> dict[Key, dict[str, Any]]:
    records: dict[Key, dict[str, Any]] = {}
    keys = {key for run in result.runs.values() for _, _, key in run}
    for iso, code in sorted(keys):
        record: dict[str, Any] = {}
        if code:
            record["continent"] = {"code": code, "names": {"en": result.continent_names[code]}}
        point: tuple[float, float] | None = None
        if iso:
            record["country"] = {"iso_code": iso, "names": {"en": result.country_names[iso]}}
            if iso in table:
                point = table[iso][1:]
        elif code in result.continents:
            # Networks known only by continent (MaxMind's "EU" blocks) get its centroid.
            point = result.continents[code].point()
        if point is not None:
            record["location"] = {"latitude": point[0], "longitude": point[1]}
        records[(iso, code)] = record
    return records


def _cidrs(result: Walk) -> Iterator[tuple[str, Key]]:
    for version, run in result.runs.items():
        for start, prefix, key in run:
            address = ipaddress.ip_address(start) if version == 4 else ipaddress.IPv6Address(start)
            yield f"{address}/{prefix}", key


def write_database(
    path: Path, result: Walk, table: dict[str, tuple[str, float, float]], build_epoch: int
) -> int:
    records = _records(result, table)
    writer = _Writer(
        build_epoch,
        ip_version=6,
        ipv4_compatible=True,  # IPv4 lives in ::/96, where MaxMind readers look for it
        database_type="gslb-GeoLite2-Country",
        languages=["en"],
        description=(
            "Country-level IPv4/IPv6 map with country centroids, derived from "
            "GeoLite2-City (GeoLite2 data created by MaxMind, CC BY-SA 4.0)"
        ),
    )
    count = 0
    for cidr, key in _cidrs(result):
        writer.insert_network(IPSet([cidr]), records[key])
        count += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return count


SAMPLE_EVERY = 101
# Addresses whose country in the 2018-07 GeoLite2-City data is known; checked after a build.
SPOT_CHECKS: tuple[tuple[str, str], ...] = (
    ("8.8.8.8", "US"),
    ("2001:4860:4860::8888", "US"),
    ("88.198.1.1", "DE"),
    ("2a01:4f8::1", "DE"),
    ("210.130.0.1", "JP"),
    ("2001:240::1", "JP"),
)


def _country(reader: maxminddb.Reader, address: str) -> str:
    record = reader.get(address)
    country = record.get("country") if isinstance(record, dict) else None
    iso = country.get("iso_code") if isinstance(country, dict) else None
    return iso if isinstance(iso, str) else ""


def verify(output: Path, samples: Iterable[tuple[str, str]]) -> list[str]:
    """Look the sample addresses up in the built database; return the mismatches."""
    with maxminddb.open_database(output) as built:
        return [
            f"{address}: built {got or None}, expected {expected or None}"
            for address, expected in samples
            if (got := _country(built, address)) != expected
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", type=Path, help="GeoLite2/GeoIP2-City MMDB (default: PyPI maxminddb-geolite2)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--centroids", type=Path, default=DEFAULT_CENTROIDS)
    args = parser.parse_args(argv)
    source: Path = args.source or default_source()

    with maxminddb.open_database(source) as reader:
        metadata = reader.metadata()
    result = walk(source)
    table = country_table(result)
    write_centroids(args.centroids, table, _describe(metadata.database_type, metadata.build_epoch))
    count = write_database(args.output, result, table, metadata.build_epoch)
    checks = [*result.samples, *(SPOT_CHECKS if args.source is None else ())]
    problems = verify(args.output, checks)
    size = args.output.stat().st_size
    sys.stderr.write(
        f"{source}: {result.source_networks} networks -> {count} merged networks, "
        f"{len(table)} country centroids, {len(checks)} addresses checked\n"
        f"wrote {args.output} ({size} bytes) and {args.centroids}\n"
    )
    for problem in problems:
        sys.stderr.write(f"MISMATCH {problem}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
