"""The compiled geo tables against the real GeoLite2-City: locations, rankings, the widest correct ECS scope."""

from __future__ import annotations

import ipaddress
import random
import shutil
import statistics
import time
from pathlib import Path

import dns.edns
import dns.message
import maxminddb
import pytest

from gslb.dns.answer import Answerer
from gslb.geo.database import GeoDatabase
from gslb.geo.places import is_special
from gslb.health.view import HealthView, Status
from gslb.ops.explain import explain_query
from gslb.snapshot import Snapshot, Sources, build
from tests.conftest import EXAMPLE_ZONES
from tests.test_services import GEOLITE2


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zones")
    for path in EXAMPLE_ZONES.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def city(zones: Path, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return build(Sources(zones, geodb=GEOLITE2, cache=tmp_path_factory.mktemp("cache")))


def _public_networks(rng: random.Random, count: int, prefix: int = 24) -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    while len(out) < count:
        network = ipaddress.IPv4Network((rng.getrandbits(32) >> (32 - prefix) << (32 - prefix), prefix))
        if not is_special(network.network_address) and not is_special(network.broadcast_address):
            out.append(network)
    return out


def _ask(answerer: Answerer, name: str, address: str, prefix: int) -> tuple[frozenset[str], int]:
    query = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption(address, prefix)])
    wire = answerer.handle(query.to_wire(), "127.0.0.1")
    assert wire is not None
    reply = dns.message.from_wire(wire)
    (ecs,) = reply.options
    return frozenset(rd.address for rrset in reply.answer for rd in rrset), ecs.scopelen


def _down(*names: str) -> HealthView:
    return HealthView(1, {name: Status(False, "timeout", time.time()) for name in names})


def test_the_table_places_addresses_as_the_database_does(city: Snapshot) -> None:
    # Every block's location and network are what a direct lookup finds (overrides,
    # special-purpose blocks and the cut around them included).
    geo = GeoDatabase(GEOLITE2, overrides=city.config.overrides, default=city.config.default_location)
    rng = random.Random(7)
    for k in range(4000):
        if k % 4 == 0:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                (0x2000 + rng.randrange(0x1000)) << 112 | rng.getrandbits(112)
            )
        elif k % 50 == 1:
            address = ipaddress.IPv4Address(int(ipaddress.IPv4Address("192.0.2.0")) + rng.randrange(256))
        else:
            address = ipaddress.IPv4Address(rng.getrandbits(32))
        expected = geo.locate_uncached(address)
        got = city.locate(address)
        assert got.network == expected.network, address
        if expected.known:
            assert (got.country, got.continent, got.subdivision, got.latitude, got.longitude, got.city) == (
                expected.country,
                expected.continent,
                expected.subdivision,
                expected.latitude,
                expected.longitude,
                expected.city,
            ), address
        else:
            assert got.source == "default" and got.country == city.config.default_location.country


@pytest.mark.parametrize("down", [(), ("eu",)])
@pytest.mark.parametrize("name", ["www.example.com.", "app.example.com."])
def test_every_address_inside_the_scope_gets_the_same_answer(city: Snapshot, name: str, down: tuple[str, ...]) -> None:
    answerer = Answerer(city, _down(*down))
    rng = random.Random(20261201 + len(down))
    scopes, prefixes = [], []
    with maxminddb.open_database(str(GEOLITE2)) as reader:
        for network in _public_networks(rng, 1000):
            answer, scope = _ask(answerer, name, str(network.network_address), 24)
            _, db_prefix = reader.get_with_prefix_len(str(network.network_address))
            scopes.append(scope)
            prefixes.append(db_prefix)
            if scope == 0:
                continue
            block = ipaddress.IPv4Network((int(network.network_address) >> (32 - scope) << (32 - scope), scope))
            # Addresses across the whole block, the far ends included, get the same answer.
            probes = {block.network_address, block.broadcast_address}
            probes |= {block.network_address + rng.randrange(block.num_addresses) for _ in range(6)}
            for probe in probes:
                assert _ask(answerer, name, str(probe), 32)[0] == answer, (name, network, scope, probe)
    # Neighbours that rank alike are merged: scopes are wider than the database's networks.
    assert statistics.median(scopes) < statistics.median(prefixes)


def test_scope_is_never_narrower_than_the_database_network(city: Snapshot) -> None:
    geo = GeoDatabase(GEOLITE2, overrides=city.config.overrides, default=city.config.default_location)
    answerer = Answerer(city, HealthView())
    rng = random.Random(11)
    for network in _public_networks(rng, 1000):
        _, scope = _ask(answerer, "www.example.com.", str(network.network_address), 24)
        # The database network, cut where a more specific override or special block lies inside.
        decided = geo.locate_uncached(network.network_address).network
        assert decided is not None
        assert scope <= decided.prefixlen, (network, scope, decided)


def test_a_health_change_keeps_static_and_negative_answers(city: Snapshot) -> None:
    answerer = Answerer(city, HealthView())
    static = dns.message.make_query("static.example.com.", "A").to_wire()
    missing = dns.message.make_query("nothing-here.example.com.", "A").to_wire()
    answerer.handle(static, "127.0.0.1")
    answerer.handle(missing, "127.0.0.1")
    general = answerer.counters.general
    answerer.set_health(_down("eu"))
    answerer.set_health(HealthView())
    assert answerer.handle(static, "127.0.0.1") is not None
    fresh_missing = dns.message.make_query("nothing-else.example.com.", "A").to_wire()  # same length
    assert answerer.handle(fresh_missing, "127.0.0.1") is not None
    assert answerer.counters.general == general  # both from the fast path


def test_a_health_change_re_picks_without_locating_again(city: Snapshot) -> None:
    answerer = Answerer(city, HealthView())
    answer, _ = _ask(answerer, "www.example.com.", "85.214.0.0", 24)
    assert answer == {"127.0.2.1"}  # Frankfurt
    answerer.set_health(_down("eu"))
    answer, scope = _ask(answerer, "www.example.com.", "85.214.0.0", 24)
    assert answer == {"127.0.1.1"}  # Ashburn is next nearest
    assert scope > 0
    answerer.set_health(_down("eu", "ap"))
    answer, scope = _ask(answerer, "www.example.com.", "85.214.0.0", 24)
    assert (answer, scope) == ({"127.0.1.1"}, 0)  # one data center left: the same for everyone


@pytest.mark.parametrize(
    "subnet", ["0.0.0.0/0", "85.214.0.0/24", "8.8.8.0/24", "2003::/32", "192.0.2.0/24", "203.0.113.0/24", "::/0"]
)
@pytest.mark.parametrize("name", ["www.example.com.", "app.example.com.", "api.example.com."])
def test_explain_and_the_server_agree(city: Snapshot, name: str, subnet: str) -> None:
    network = ipaddress.ip_network(subnet)
    answerer = Answerer(city, HealthView())
    answer, scope = _ask(answerer, name, str(network.network_address), network.prefixlen)
    explained = explain_query(city, name, "A", None, subnet, HealthView())
    assert (set(explained["answer"]), explained["ecs_scope"]) == (answer, scope)


def test_the_compiled_database_is_kept_and_reused(city: Snapshot) -> None:
    first = city
    assert not first.table.cached  # the module's cache directory started empty
    assert first.sources.cache is not None and list(first.sources.cache.glob(".gslb-geo-*.npz"))
    second = build(first.sources)
    assert second.table.cached
    assert len(second.table.v4) == len(first.table.v4) and len(second.table.v6) == len(first.table.v6)
    for address in ("85.214.0.1", "8.8.8.8", "2003::1", "192.0.2.7"):
        ip = ipaddress.ip_address(address)
        assert second.locate(ip) == first.locate(ip)


def _record_positions(path: Path) -> tuple[bytes, int, list[int]]:
    """The database's bytes, where its data section starts, and the position of every record."""
    import numpy as np

    from gslb.geo import table as geotable

    buf = path.read_bytes()
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
    left, right = geotable._nodes(buf, meta.node_count, meta.record_size)
    records = np.unique(np.concatenate((left, right)))
    tree = meta.node_count * meta.record_size // 4
    positions = records[records > meta.node_count] - meta.node_count + tree
    return buf, tree + 16, positions.tolist()


@pytest.mark.parametrize("which", ["city", "test"])
def test_the_c_decoder_reads_records_as_the_python_one(which: str, tmp_path: Path) -> None:
    from gslb.geo import table as geotable

    if geotable._mmdbfields is None:
        pytest.skip("gslb.geo._mmdbfields is not built (no C compiler): the Python decoder is used")
    import numpy as np

    from tests.mmdb_fixtures import build_test_mmdb

    path = GEOLITE2 if which == "city" else build_test_mmdb(tmp_path / "test.mmdb")
    buf, start, positions = _record_positions(path)
    sample = random.Random(5).sample(positions, min(len(positions), 20000))
    from_c = list(geotable._decode(path, buf, start, np.array(sample, np.int64)))
    saved, geotable._mmdbfields = geotable._mmdbfields, None
    try:
        from_python = list(geotable._decode(path, buf, start, np.array(sample, np.int64)))
    finally:
        geotable._mmdbfields = saved
    assert from_c == from_python
    assert sum(f is not None for f in from_c) > len(sample) * 0.9


def test_the_c_decoder_survives_corrupt_records(tmp_path: Path) -> None:
    from gslb.geo import table as geotable

    if geotable._mmdbfields is None:
        pytest.skip("gslb.geo._mmdbfields is not built (no C compiler)")
    from tests.mmdb_fixtures import build_test_mmdb

    buf, start, positions = _record_positions(build_test_mmdb(tmp_path / "test.mmdb"))
    rng = random.Random(9)
    import numpy as np

    for _ in range(300):
        data = bytearray(buf)
        for _ in range(rng.randrange(1, 40)):
            data[rng.randrange(start, len(data))] = rng.randrange(256)
        cut = rng.choice([len(data), rng.randrange(start, len(data))])
        # Positions anywhere, past the end included: every read is bounds-checked.
        at = np.array([*positions, *(rng.randrange(-5, len(data) + 50) for _ in range(20))], np.int64)
        out = geotable._mmdbfields.fields(bytes(data[:cut]), start, at)
        assert len(out) == len(at)
        assert all(item is None or len(item) == 6 for item in out)


def test_answers_are_counted_by_the_service_name_as_configured(city: Snapshot) -> None:
    answerer = Answerer(city, HealthView())
    for name in ("wWw.ExAmple.com.", "WWW.EXAMPLE.COM.", "www.example.com."):
        _ask(answerer, name, "85.214.0.0", 24)
    assert answerer.counters.by_answer == {("www.example.com.", "eu"): 3}


def test_a_first_compile_leaves_the_server_process_lean(zones: Path, tmp_path: Path) -> None:
    # The walk runs in a child process that writes the cache; the building process reads it
    # back, so its peak is that of the arrays, not of the walk (550-650 MB in process here).
    import subprocess
    import sys

    script = (
        "import sys; from pathlib import Path; from gslb.snapshot import Sources, build\n"
        f"s = build(Sources(Path({str(zones)!r}), geodb=Path({str(GEOLITE2)!r}), cache=Path({str(tmp_path)!r})))\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "print(s.table.cached, peak)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent
    )
    assert result.returncode == 0, result.stderr
    cached, peak = result.stdout.split()
    assert cached == "False" and list(tmp_path.glob(".gslb-geo-*.npz"))
    assert int(peak) < 400_000, peak
