"""gslb.geo.database: database layouts, overrides, special ranges, cache, errors, the embedded geodb."""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_fixtures import (
    FRANKFURT,
    NETWORKS,
    SMALL_NETWORK,
    TOKYO,
    build_test_mmdb,
    place_of,
)

from gslb.geo import database as geo
from gslb.geo.database import GeoDatabase
from gslb.geo.places import (
    DEFAULT_DATABASE,
    SPECIAL_NETWORKS,
    GeoError,
    IPAddress,
    IPNetwork,
    Location,
    country_centroids,
    distance_km,
    is_special,
)

ROOT = Path(__file__).resolve().parent.parent
ip = ipaddress.ip_address
net = ipaddress.ip_network


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """The tiny test database in each layout and IP version."""
    folder = tmp_path_factory.mktemp("mmdb")
    return {
        (layout, version): build_test_mmdb(folder / f"{layout}{version}.mmdb", ip_version=version, layout=layout)
        for layout in ("city", "country")
        for version in (4, 6)
    }


@pytest.fixture(scope="module")
def city(databases: dict[tuple[str, int], Path]) -> Iterator[GeoDatabase]:
    with GeoDatabase(databases["city", 6]) as database:
        yield database


def _expected_block(address: str) -> IPNetwork:
    """The MMDB leaf holding `address`: its NETWORKS entry, less any smaller entry inside it."""
    found = place_of(address)
    assert found is not None
    block = net(found[0])
    for text in NETWORKS:
        inner = net(text)
        if inner.version == block.version and inner != block and inner.subnet_of(block):  # type: ignore[arg-type]
            pieces = block.address_exclude(inner)  # type: ignore[arg-type]
            block = next(piece for piece in pieces if ip(address) in piece)
    return block


def _samples() -> list[tuple[int, str]]:
    """(database IP version, address): first, last and a middle address of each test network."""
    samples = []
    for text in NETWORKS:
        network = net(text)
        for address in (network[0], network[-1], network[network.num_addresses // 3]):
            for version in (4, 6) if network.version == 4 else (6,):
                samples.append((version, str(address)))
    return samples


# -- the tiny database, both layouts ---------------------------------------------------------


@pytest.mark.parametrize(("version", "address"), _samples())
def test_city_layout(databases: dict[tuple[str, int], Path], version: int, address: str) -> None:
    with GeoDatabase(databases["city", version]) as database:
        found = database.locate(ip(address))
    _, place = place_of(address) or ("", None)
    assert place is not None
    assert found == Location(
        country=place.country,
        continent=place.continent,
        subdivision=place.subdivision,
        latitude=place.latitude,
        longitude=place.longitude,
        network=_expected_block(address),
        source="database",
        city=place.city,
    )


@pytest.mark.parametrize(("version", "address"), _samples())
def test_country_layout_takes_coordinates_from_the_centroid_table(
    databases: dict[tuple[str, int], Path], version: int, address: str
) -> None:
    with GeoDatabase(databases["country", version]) as database:
        found = database.locate(ip(address))
        assert database.metadata.has_coordinates is False
    _, place = place_of(address) or ("", None)
    assert place is not None
    centroid = country_centroids()[place.country]
    assert found == Location(
        country=place.country,
        continent=place.continent,
        latitude=centroid.latitude,
        longitude=centroid.longitude,
        network=_expected_block(address),
        source="database",
    )


def test_ipv4_network_in_an_ipv6_database_has_the_ipv4_prefix_length(city: GeoDatabase) -> None:
    found = city.locate(ip("1.1.2.3"))
    # maxminddb walks the ::/96 subtree; the network must not come back as /112.
    assert found.network == ipaddress.IPv4Network("1.1.0.0/16")
    assert found.network.prefixlen == 16


def test_small_network_inside_a_larger_one(city: GeoDatabase) -> None:
    inside = city.locate(ip("2.2.7.20"))
    assert (inside.country, inside.city, inside.network) == ("FR", "Paris", net(SMALL_NETWORK))
    beside = city.locate(ip("2.2.7.15"))
    assert (beside.country, beside.network) == ("DE", net("2.2.7.0/28"))
    after = city.locate(ip("2.2.7.32"))
    assert (after.country, after.network) == ("DE", net("2.2.7.32/27"))


def test_ipv4_mapped_address_is_located_as_ipv4(city: GeoDatabase) -> None:
    found = city.locate(ip("::ffff:3.3.9.9"))
    assert (found.country, found.city) == ("JP", "Tokyo")
    # The network stays in the address's family, so that it contains the address.
    assert found.network == net("::ffff:3.3.0.0/112")
    assert city.locate(ip("::ffff:10.0.0.1")).network == net("::ffff:10.0.0.0/104")


@pytest.mark.parametrize(
    ("address", "empty_prefix", "network"),
    [
        ("1.2.3.4", 15, "1.2.0.0/15"),
        ("2a00:4::1", 30, "2a00:4::/30"),
        ("128.0.0.1", 1, "128.0.0.0/3"),  # 128/1 holds 169.254/16, 172.16/12 ...
        # Nothing in 8.0.0.0/5 (binary 00001...), but 10.0.0.0/8 in there is special.
        ("9.9.9.9", 5, "8.0.0.0/7"),
        ("12.0.0.1", 5, "12.0.0.0/6"),
    ],
)
def test_unknown_address_gets_the_default_with_the_database_empty_prefix(
    databases: dict[tuple[str, int], Path], address: str, empty_prefix: int, network: str
) -> None:
    default = Location(country="NL")
    with (
        GeoDatabase(databases["city", 6], default=default) as database,
        maxminddb.open_database(databases["city", 6]) as reader,
    ):
        found = database.locate(ip(address))
        record, prefix = reader.get_with_prefix_len(address)
    assert record is None and prefix == empty_prefix
    centroid = country_centroids()["NL"]
    assert found == Location(
        country="NL",
        continent="EU",
        latitude=centroid.latitude,
        longitude=centroid.longitude,
        network=net(network),
    )
    assert not found.known


def test_ipv6_in_an_ipv4_database_is_unknown(databases: dict[tuple[str, int], Path]) -> None:
    with GeoDatabase(databases["city", 4]) as database:
        found = database.locate(ip("2a00:1::1"))
    assert found.source == "default"
    # All of IPv6 is unknown to it, but the scope stops short of the special blocks.
    assert found.network == net("2800::/5")


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("10.1.2.3", "10.0.0.0/8"),
        ("172.16.0.1", "172.16.0.0/12"),
        ("192.168.1.1", "192.168.0.0/16"),
        ("127.0.0.1", "127.0.0.0/8"),
        ("0.0.0.0", "0.0.0.0/8"),
        ("169.254.1.1", "169.254.0.0/16"),
        ("100.64.0.1", "100.64.0.0/10"),
        ("224.0.0.251", "224.0.0.0/4"),
        ("255.255.255.255", "240.0.0.0/4"),
        # Documentation ranges are special too (see gslb/geo/database.py).
        ("192.0.2.1", "192.0.2.0/24"),
        ("198.51.100.7", "198.51.100.0/24"),
        ("203.0.113.9", "203.0.113.0/24"),
        ("::1", "::1/128"),
        ("::", "::/128"),
        # ::/8 holds smaller special blocks (::1, ::ffff:0:0/96 ...): ::2 gets a block between.
        ("::2", "::2/127"),
        ("fe80::1", "fe80::/10"),
        ("fd00::1", "fc00::/7"),
        ("ff02::1", "ff00::/8"),
        ("2001:db8::1", "2001:db8::/32"),
        ("2001::1", "2001::/23"),  # Teredo and other IETF protocol assignments
        ("2002:c000:201::1", "2002::/16"),
        ("64:ff9b::808:808", "64:ff9b::/96"),
        ("4000::1", "4000::/3"),
    ],
)
def test_special_addresses_fall_to_the_default(city: GeoDatabase, address: str, network: str) -> None:
    found = city.locate(ip(address))
    assert found == Location(network=net(network))
    assert is_special(ip(address))


def test_special_addresses_can_be_looked_up_in_the_database(tmp_path: Path) -> None:
    # Test databases like shared/peers/mmdb/test-city.mmdb map private client subnets.
    path = build_test_mmdb(tmp_path / "private.mmdb", networks={**NETWORKS, "10.2.0.0/16": TOKYO})
    with GeoDatabase(path) as strict, GeoDatabase(path, special_in_database=True) as lenient:
        assert strict.locate(ip("10.2.3.4")) == Location(network=net("10.0.0.0/8"))
        found = lenient.locate(ip("10.2.3.4"))
        assert (found.country, found.network, found.source) == (
            "JP",
            net("10.2.0.0/16"),
            "database",
        )
        # Not in the database: unknown, with the database's empty prefix.
        assert lenient.locate(ip("10.3.0.1")) == Location(network=net("10.3.0.0/16"))


def test_peer_benchmark_database_layout() -> None:
    path = ROOT.parent / "shared" / "peers" / "mmdb" / "test-city.mmdb"
    if not path.exists():
        pytest.skip(f"{path} is not here (shared/ is beside the repository only on a workstation)")
    with GeoDatabase(path, special_in_database=True) as database:
        found = database.locate(ip("10.2.0.1"))
        assert (found.country, found.continent, found.subdivision, found.city) == (
            "DE",
            "EU",
            "HE",
            "Frankfurt am Main",
        )
        assert found.network == net("10.2.0.0/16")
        assert database.locate(ip("2001:db8:3::1")).country == "JP"
        assert database.metadata.database_type == "GeoIP2-City"


# -- overrides -------------------------------------------------------------------------------

OVERRIDES: list[tuple[IPNetwork, Location]] = [
    (net("1.1.5.0/24"), Location(country="JP")),  # inside a database network
    (net("10.1.0.0/16"), Location(country="DE", latitude=50.0, longitude=8.0)),  # inside 10/8
    (net("2.2.7.0/24"), Location(country="GB", continent="EU")),  # holds the /28
    (net("2.2.7.16/30"), Location(country="US")),  # nested: the most specific wins
    (net("2a00:1:5::/48"), Location(country="BR")),
    (net("::ffff:7.7.7.0/120"), Location(country="AU")),  # written IPv4-mapped
]


@pytest.fixture(scope="module")
def overridden(databases: dict[tuple[str, int], Path]) -> Iterator[GeoDatabase]:
    with GeoDatabase(databases["city", 6], overrides=OVERRIDES) as database:
        yield database


@pytest.mark.parametrize(
    ("address", "country", "source", "network"),
    [
        ("1.1.5.77", "JP", "override", "1.1.5.0/24"),
        # The database's 1.1.0.0/16 answer no longer covers the override: the block shrinks.
        ("1.1.4.1", "US", "database", "1.1.4.0/24"),
        ("1.1.6.1", "US", "database", "1.1.6.0/23"),
        ("1.1.128.1", "US", "database", "1.1.128.0/17"),
        ("10.1.2.3", "DE", "override", "10.1.0.0/16"),
        ("10.2.0.1", None, "default", "10.2.0.0/15"),
        ("2.2.7.20", "GB", "override", "2.2.7.20/30"),
        ("2.2.7.17", "US", "override", "2.2.7.16/30"),
        ("2.2.7.1", "GB", "override", "2.2.7.0/28"),
        ("2.2.6.1", "DE", "database", "2.2.6.0/24"),
        ("2a00:1:5::1", "BR", "override", "2a00:1:5::/48"),
        ("2a00:1:4::1", "US", "database", "2a00:1:4::/48"),
        ("7.7.7.7", "AU", "override", "7.7.7.0/24"),
        ("::ffff:7.7.7.7", "AU", "override", "::ffff:7.7.7.0/120"),
    ],
)
def test_overrides_win_over_the_database_and_special_ranges(
    overridden: GeoDatabase, address: str, country: str | None, source: str, network: str
) -> None:
    found = overridden.locate(ip(address))
    assert (found.country, found.source, found.network) == (country, source, net(network))


def test_override_location_is_completed_from_the_centroid_table(overridden: GeoDatabase) -> None:
    japan = country_centroids()["JP"]
    found = overridden.locate(ip("1.1.5.1"))
    assert (found.continent, found.latitude, found.longitude) == (
        "AS",
        japan.latitude,
        japan.longitude,
    )
    # Coordinates given in the override are kept.
    kept = overridden.locate(ip("10.1.0.1"))
    assert (kept.continent, kept.latitude, kept.longitude) == ("EU", 50.0, 8.0)


def test_catch_all_override_beats_special_ranges(databases: dict[tuple[str, int], Path]) -> None:
    everywhere = Location(country="SE")
    with GeoDatabase(databases["city", 6], overrides=[(net("0.0.0.0/0"), everywhere)]) as database:
        assert database.locate(ip("10.0.0.1")).network == net("0.0.0.0/0")
        assert database.locate(ip("1.1.1.1")).country == "SE"
        assert database.locate(ip("2a00:1::1")).country == "US"


# -- the cache ---------------------------------------------------------------------------------


def test_cached_answer_is_the_uncached_one_and_shared_per_block(city: GeoDatabase) -> None:
    first = city.locate(ip("5.5.1.1"))
    again = city.locate(ip("5.5.1.1"))
    neighbour = city.locate(ip("5.5.200.9"))  # never seen: found through the block cache
    assert first is again is neighbour
    assert neighbour == city.locate_uncached(ip("5.5.200.9"))


def test_cache_stays_bounded(databases: dict[tuple[str, int], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geo, "CACHE_LIMIT", 10)
    with GeoDatabase(databases["city", 6]) as database:
        for index in range(100):
            address = ipaddress.IPv4Address(int(ip("6.6.0.0")) + index * 256)
            assert database.locate(address).country == "GB"
        assert len(database._hits4) <= 10
        for index in range(100):
            database.locate(ipaddress.IPv4Address(index << 24 | 0x010101))
        assert len(database._blocks) <= 10


def test_locate_subnet_uses_the_first_address(city: GeoDatabase) -> None:
    found = city.locate_subnet(net("2a00:3:77::/48"))
    assert (found.country, found.network) == ("JP", net("2a00:3::/32"))
    small = city.locate_subnet(net("2.2.7.16/28"))
    assert (small.country, small.network) == ("FR", net("2.2.7.16/28"))


def _addresses() -> st.SearchStrategy[IPAddress]:
    interesting = (
        [net(text) for text in NETWORKS]
        + [network for network, _ in OVERRIDES]
        + [net("0.0.0.0/5"), net("2.2.7.0/24"), net("10.0.0.0/8"), net("::/8"), net("2a00::/16")]
    )
    within = st.sampled_from(interesting).flatmap(
        lambda network: st.integers(0, network.num_addresses - 1).map(lambda offset: network[offset])
    )
    anywhere4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
    anywhere6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
    mapped = within.filter(lambda a: a.version == 4).map(lambda a: ipaddress.IPv6Address(0xFFFF00000000 | int(a)))
    edges = st.sampled_from(SPECIAL_NETWORKS).flatmap(lambda network: st.sampled_from([network[0], network[-1]]))
    return st.one_of(within, anywhere4, anywhere6, mapped, edges)


@settings(max_examples=400, deadline=None)
@given(address=_addresses(), salt=st.integers(0, 2**128 - 1))
def test_cached_locate_matches_an_uncached_reference(overridden: GeoDatabase, address: IPAddress, salt: int) -> None:
    cached = overridden.locate(address)
    assert cached == overridden.locate_uncached(address)
    assert cached.network is not None and address in cached.network
    # The block is uniform: any other address in it gets the very same answer cold...
    block = cached.network
    other = block[salt % block.num_addresses]
    assert overridden.locate_uncached(other) == cached
    # ... and through the cache.
    assert overridden.locate(other) == cached


# -- special ranges against the ipaddress properties -----------------------------------------


def _special_by_properties(address: IPAddress) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


@settings(max_examples=2000, deadline=None)
@given(address=_addresses())
def test_special_table_covers_every_address_ipaddress_calls_special(address: IPAddress) -> None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # located as IPv4
    if _special_by_properties(address):
        assert is_special(address), f"{address} is special to ipaddress but not in SPECIAL_NETWORKS"


@pytest.mark.parametrize("network", SPECIAL_NETWORKS, ids=str)
def test_special_table_entries_are_special_to_ipaddress(network: IPNetwork) -> None:
    # Beyond what ipaddress knows in every version: all of 192.0.0.0/24 (Python 3.11 knows
    # only /29 and /31 of it), 6to4 and the 2024 documentation block.
    beyond = {net("192.0.0.0/24"), net("2002::/16"), net("3fff::/20")}
    if network in beyond:
        return
    assert _special_by_properties(network[0]) and _special_by_properties(network[-1])


# -- centroids, distance -----------------------------------------------------------------------


def test_centroid_table_covers_the_world() -> None:
    table = country_centroids()
    assert len(table) >= 249  # ISO 3166-1 has 249 codes; MaxMind adds XK (Kosovo)
    assert {centroid.continent for centroid in table.values()} == {
        "AF", "AN", "AS", "EU", "NA", "OC", "SA"
    }  # fmt: skip
    for iso, centroid in table.items():
        assert len(iso) == 2 and iso.isupper()
        assert -90 <= centroid.latitude <= 90 and -180 <= centroid.longitude <= 180


@pytest.mark.parametrize(
    ("iso", "south", "north", "west", "east"),
    [
        ("US", 24, 50, -125, -66),
        ("DE", 47, 55, 5, 16),
        ("JP", 30, 46, 129, 146),
        ("BR", -34, 6, -74, -34),
        ("AU", -44, -10, 112, 154),
        ("FJ", -21, -12, 176, 180),  # straddles the antimeridian: a naive mean lands mid-Pacific
    ],
)
def test_centroids_fall_inside_their_country(iso: str, south: float, north: float, west: float, east: float) -> None:
    centroid = country_centroids()[iso]
    assert south <= centroid.latitude <= north and west <= centroid.longitude <= east


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        ((50.11, 8.68), (50.11, 8.68), 0.0),
        ((0.0, 0.0), (0.0, 180.0), math.pi * 6371.0088),
        ((90.0, 0.0), (-90.0, 0.0), math.pi * 6371.0088),
        ((0.0, 179.0), (0.0, -179.0), 2 * math.pi * 6371.0088 / 180),
        ((51.5074, -0.1278), (48.8566, 2.3522), 343.56),  # London - Paris
        ((40.6413, -73.7781), (51.4700, -0.4543), 5540.0),  # JFK - LHR
    ],
)
def test_distance_km(a: tuple[float, float], b: tuple[float, float], km: float) -> None:
    assert distance_km(*a, *b) == pytest.approx(km, abs=0.5)
    assert distance_km(*b, *a) == pytest.approx(km, abs=0.5)


# -- errors and metadata -----------------------------------------------------------------------


def test_missing_file_is_a_geo_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(GeoError, match=r"nope\.mmdb.*not found"):
        GeoDatabase(missing)


@pytest.mark.parametrize(
    "damage",
    ["empty", "text", "truncated", "directory"],
)
def test_corrupt_file_is_a_geo_error_naming_it(
    tmp_path: Path, databases: dict[tuple[str, int], Path], damage: str
) -> None:
    path = tmp_path / "bad.mmdb"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not a database\n" * 100)
    elif damage == "truncated":
        data = databases["city", 6].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.mkdir()
    with pytest.raises(GeoError, match=r"bad\.mmdb"):
        GeoDatabase(path)


def test_lookup_after_close_is_a_geo_error(databases: dict[tuple[str, int], Path]) -> None:
    database = GeoDatabase(databases["city", 6])
    database.close()
    with pytest.raises(GeoError, match=r"city6\.mmdb"):
        database.locate(ip("1.1.1.1"))


def test_metadata(databases: dict[tuple[str, int], Path]) -> None:
    with GeoDatabase(databases["city", 6]) as database:
        info = database.metadata
    assert info.path == databases["city", 6]
    assert info.database_type == "GeoIP2-City"
    assert info.ip_version == 6 and info.node_count > 0
    assert info.has_coordinates and not info.embedded
    assert 2020 < info.build_date.year < 2200


# -- the real GeoLite2-City (PyPI maxminddb-geolite2, 2018) -----------------------------------


@pytest.fixture(scope="module")
def geolite2_path() -> Path:
    module = pytest.importorskip("geolite2", reason="maxminddb-geolite2 (the test extra) is not installed")
    return Path(module.geolite2.filename)


@pytest.fixture(scope="module")
def geolite2(geolite2_path: Path) -> Iterator[GeoDatabase]:
    with GeoDatabase(geolite2_path) as database:
        yield database


@pytest.mark.parametrize(
    ("address", "country", "continent", "subdivision", "city", "network"),
    [
        ("8.8.8.8", "US", "NA", None, None, "8.8.0.0/19"),
        ("88.198.1.1", "DE", "EU", "BY", "Nuremberg", "88.198.0.0/21"),
        ("210.130.0.1", "JP", "AS", None, None, "210.130.0.0/17"),
        ("2001:4860:4860::8888", "US", "NA", "CA", "Mountain View", "2001:4860:4800::/41"),
        ("2a01:4f8::1", "DE", "EU", None, None, "2a01:4f8::/63"),
        ("::ffff:8.8.8.8", "US", "NA", None, None, "::ffff:8.8.0.0/115"),
    ],
)
def test_real_geolite2_city(
    geolite2: GeoDatabase,
    address: str,
    country: str,
    continent: str,
    subdivision: str | None,
    city: str | None,
    network: str,
) -> None:
    found = geolite2.locate(ip(address))
    assert (found.country, found.continent, found.subdivision, found.city, found.network) == (
        country,
        continent,
        subdivision,
        city,
        net(network),
    )
    assert found.has_coordinates and found.source == "database"


def test_real_geolite2_prefixes_match_the_reader(geolite2: GeoDatabase, geolite2_path: Path) -> None:
    rng = random.Random(7)
    with maxminddb.open_database(geolite2_path) as reader:
        for _ in range(3000):
            address = ipaddress.IPv4Address(rng.getrandbits(32))
            if is_special(address):
                continue
            record, prefix = reader.get_with_prefix_len(address)
            found = geolite2.locate(address)
            leaf = net(f"{address}/{prefix}", strict=False)
            if any(leaf.overlaps(special) for special in SPECIAL_NETWORKS):
                # A leaf holding a special block is cut down around it.
                assert found.network is not None and found.network.subnet_of(leaf)  # type: ignore[arg-type]
            else:
                assert found.network == leaf
            country = (record or {}).get("country", {}).get("iso_code")  # type: ignore[union-attr]
            assert found.country == country


# -- the embedded geodb/ ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Iterator[GeoDatabase]:
    with GeoDatabase() as database:
        yield database


@pytest.mark.parametrize(
    ("address", "country", "continent"),
    [
        ("8.8.8.8", "US", "NA"),
        ("2001:4860:4860::8888", "US", "NA"),
        ("88.198.1.1", "DE", "EU"),
        ("2a01:4f8::1", "DE", "EU"),
        ("210.130.0.1", "JP", "AS"),
        ("2001:240::1", "JP", "AS"),
    ],
)
def test_embedded_database_out_of_the_box(embedded: GeoDatabase, address: str, country: str, continent: str) -> None:
    found = embedded.locate(ip(address))
    centroid = country_centroids()[country]
    assert (found.country, found.continent, found.source) == (country, continent, "database")
    assert (found.latitude, found.longitude) == (centroid.latitude, centroid.longitude)


def test_embedded_database_file(embedded: GeoDatabase) -> None:
    info = embedded.metadata
    assert info.embedded and info.path == DEFAULT_DATABASE
    assert info.has_coordinates and info.ip_version == 6
    assert info.build_date.isoformat() == "2018-07-03"
    assert DEFAULT_DATABASE.stat().st_size <= 5 * 1024 * 1024


def test_embedded_database_agrees_with_its_source(geolite2_path: Path) -> None:
    rng = random.Random(11)
    # IPv4 anywhere, IPv6 in the regional registries' /12s where most allocations are.
    addresses: list[IPAddress] = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(3000)]
    for base in ("2001::", "2400::", "2600::", "2800::", "2a00::", "2c00::"):
        start = int(ipaddress.IPv6Address(base))
        addresses += [ipaddress.IPv6Address(start + rng.getrandbits(108)) for _ in range(300)]
    with (
        maxminddb.open_database(DEFAULT_DATABASE) as built,
        maxminddb.open_database(geolite2_path) as source,
    ):
        for address in addresses:
            source_record, source_prefix = source.get_with_prefix_len(address)
            built_record, built_prefix = built.get_with_prefix_len(address)
            want = (source_record or {}).get("country", {}).get("iso_code")  # type: ignore[union-attr]
            got = (built_record or {}).get("country", {}).get("iso_code")  # type: ignore[union-attr]
            assert got == want, address
            if want is not None:
                # Merging only ever widens a network.
                assert built_prefix <= source_prefix, address


# -- geodb/build.py ----------------------------------------------------------------------------


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("geodb_build", ROOT / "geodb" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("pushes", "expected"),
    [
        # Two halves of a /23 with equal data merge; then the /23 merges with its sibling.
        ([(0, 24, "A"), (256, 24, "A")], [(0, 23, "A")]),
        ([(0, 24, "A"), (256, 24, "A"), (512, 23, "A")], [(0, 22, "A")]),
        # Different data, or not siblings (256/24 and 512/24 straddle a /23 boundary): kept.
        ([(0, 24, "A"), (256, 24, "B")], [(0, 24, "A"), (256, 24, "B")]),
        ([(256, 24, "A"), (512, 24, "A")], [(256, 24, "A"), (512, 24, "A")]),
        # A hole between two equal networks is never filled.
        ([(0, 24, "A"), (512, 24, "A")], [(0, 24, "A"), (512, 24, "A")]),
    ],
)
def test_build_merges_adjacent_equal_networks(
    pushes: list[tuple[int, int, str]], expected: list[tuple[int, int, str]]
) -> None:
    build = _build_module()
    run: list[tuple[int, int, tuple[str, str]]] = []
    for start, prefix, data in pushes:
        build.merge_push(run, start, prefix, (data, ""), 32)
    assert run == [(start, prefix, (data, "")) for start, prefix, data in expected]


def test_build_writes_a_database_gslb_reads(tmp_path: Path, databases: dict[tuple[str, int], Path]) -> None:
    build = _build_module()
    source = databases["city", 6]
    output, centroids = tmp_path / "out.mmdb", tmp_path / "centroids.csv"
    arguments = ["--source", str(source), "--output", str(output), "--centroids", str(centroids)]
    assert build.main(arguments) == 0
    assert "iso_code,continent,latitude,longitude" in centroids.read_text()
    with GeoDatabase(output) as database:
        found = database.locate(ip("2.2.7.17"))
        assert (found.country, found.network) == ("FR", net(SMALL_NETWORK))
        found = database.locate(ip("2a00:2::1"))
        assert (found.country, found.continent, found.city) == ("DE", "EU", None)
        # One network per country: its centroid is the city's point.
        assert (found.latitude, found.longitude) == (FRANKFURT.latitude, FRANKFURT.longitude)
        assert database.metadata.database_type == "gslb-GeoLite2-Country"
