"""Services end to end: dig and dnspython with ECS against `gslb serve` on a real GeoLite2-City."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import maxminddb
import pytest

from tests.conftest import EXAMPLE_ZONES, ROOT, Server, need, same_rrsets


def _geolite2_city() -> Path:
    spec = importlib.util.find_spec("_maxminddb_geolite2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("maxminddb-geolite2 is not installed: run the README's test command")
    return Path(next(iter(spec.submodule_search_locations))) / "GeoLite2-City.mmdb"


GEOLITE2 = _geolite2_city()


@pytest.fixture(scope="module")
def geo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    state = tmp_path_factory.mktemp("state") / "state.json"
    server = Server(
        [
            "--zones",
            str(EXAMPLE_ZONES),
            "--geodb",
            str(GEOLITE2),
            "--no-probes",
            "--state-file",
            str(state),
            "--workers",
            "2",
        ]
    )
    yield server
    assert server.stop() == 0


def _prefix(address: str) -> int:
    with maxminddb.open_database(str(GEOLITE2)) as reader:
        _, prefix = reader.get_with_prefix_len(address)
    return int(prefix) if ":" in address or prefix <= 32 else int(prefix) - 96


# Resolver networks the 2018 GeoLite2-City places in these countries (only looked up).
@pytest.mark.parametrize(
    ("subnet", "rdtype", "expected"),
    [
        ("8.8.8.0/24", "A", "127.0.1.1"),  # US
        ("4.2.2.0/24", "A", "127.0.1.1"),  # US
        ("85.214.0.0/24", "A", "127.0.2.1"),  # DE, Berlin
        ("80.156.0.0/24", "A", "127.0.2.1"),  # DE
        ("133.242.0.0/24", "A", "127.0.3.1"),  # JP
        ("210.130.0.0/24", "A", "127.0.3.1"),  # JP
        # Elsewhere: the nearest data center by great-circle distance.
        ("200.160.0.0/24", "A", "127.0.1.1"),  # BR, Rio: Ashburn 7,700 km, Frankfurt 9,600 km
        ("41.0.0.0/24", "A", "127.0.2.1"),  # ZA, Pretoria: Frankfurt 8,700 km, Ashburn 13,000 km
        ("1.1.1.0/24", "A", "127.0.3.1"),  # AU, Melbourne: Tokyo 8,100 km
        ("81.2.69.0/24", "A", "127.0.2.1"),  # GB
        ("101.0.0.0/24", "A", "127.0.3.1"),  # CN, Fuzhou
        ("2003::/32", "AAAA", "2001:db8:2::1"),  # DE over IPv6 ECS
        ("2400:8500::/48", "AAAA", "2001:db8:3::1"),  # JP
        ("2600:1700::/40", "AAAA", "2001:db8:1::1"),  # US
        ("2003::/32", "A", "127.0.2.1"),  # an IPv6 client asking for A
    ],
)
def test_nearest_data_center_by_ecs(geo_server: Server, subnet: str, rdtype: str, expected: str) -> None:
    address, source = subnet.split("/")
    query = dns.message.make_query(
        "www.example.com.", rdtype, use_edns=0, options=[dns.edns.ECSOption(address, int(source))]
    )
    for tcp in (False, True):
        reply = geo_server.send(query, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert same_rrsets(reply.answer, f"www.example.com. 30 IN {rdtype} {expected}"), reply.to_text()
        (ecs,) = reply.options
        assert (ecs.address, ecs.srclen) == (address, int(source))
        # The scope is never narrower than the database network that decided (RFC 7871
        # §7.2.1), and wider where the neighbours rank the data centers alike.
        assert 0 < ecs.scopelen <= _prefix(address)


def test_dig_subnet_shows_answer_and_scope(geo_server: Server) -> None:
    need("dig")
    out = geo_server.dig("www.example.com", "+subnet=85.214.0.0/24")
    assert "www.example.com.\t30\tIN\tA\t127.0.2.1" in out
    scope = re.search(r"CLIENT-SUBNET: 85\.214\.0\.0/24/(\d+)", out)
    assert scope is not None, out
    assert 0 < int(scope.group(1)) <= _prefix("85.214.0.0")  # merged with like neighbours
    out = geo_server.dig("static.example.com", "+subnet=85.214.0.0/24")
    assert "127.0.0.10" in out
    assert "CLIENT-SUBNET: 85.214.0.0/24/0" in out  # static data: the same for every client


def test_static_answers_and_single_decision_services_have_scope_zero(geo_server: Server) -> None:
    for name in ("static.example.com.", "api.example.com.", "nope.example.com."):
        query = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption("85.214.0.0", 24)])
        reply = geo_server.send(query)
        assert reply.options[0].scopelen == 0, name


def test_cname_to_a_service_is_followed(geo_server: Server) -> None:
    query = dns.message.make_query("web.example.com.", "A", use_edns=0, options=[dns.edns.ECSOption("133.242.0.0", 24)])
    reply = geo_server.send(query)
    assert same_rrsets(
        reply.answer, "web.example.com. 3600 IN CNAME www.example.com.\nwww.example.com. 30 IN A 127.0.3.1"
    )


def test_geo_map_failover_and_weighted_services(geo_server: Server) -> None:
    def ask(name: str, subnet: str | None = None) -> list[str]:
        options = [dns.edns.ECSOption(subnet.split("/")[0], int(subnet.split("/")[1]))] if subnet else []
        reply = geo_server.send(dns.message.make_query(name, "A", use_edns=0, options=options))
        return sorted(rr.address for rrset in reply.answer for rr in rrset)

    assert ask("app.example.com.", "85.214.0.0/24") == ["127.0.2.1"]  # continent:EU
    assert ask("app.example.com.", "1.1.1.0/24") == ["127.0.3.1"]  # continent:OC -> ap
    assert ask("app.example.com.", "8.8.8.0/24") == ["127.0.1.1"]  # continent:NA
    assert ask("api.example.com.", "8.8.8.0/24") == ["127.0.2.1"]  # failover: eu first, for everyone
    seen = set()
    for _ in range(60):
        answer = ask("img.example.com.")
        assert len(answer) == 2  # two data centers per answer
        seen.add(tuple(answer))
    assert len(seen) > 1  # drawn per query


def test_client_without_ecs_is_located_by_its_resolver_address(geo_server: Server) -> None:
    # 127.0.0.1 is loopback: the configured default location (Ashburn) decides.
    reply = geo_server.query("www.example.com.", "A")
    assert same_rrsets(reply.answer, "www.example.com. 30 IN A 127.0.1.1")


def _explain(*args: str) -> dict[str, object]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gslb",
            "explain",
            "--zones",
            str(EXAMPLE_ZONES),
            "--geodb",
            str(GEOLITE2),
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_explain_says_why() -> None:
    out = _explain("www.example.com", "--subnet", "85.214.0.0/24")
    assert out["answer"] == ["127.0.2.1"]
    assert out["location"]["country"] == "DE"  # type: ignore[index]
    assert 0 < out["ecs_scope"] <= _prefix("85.214.0.0")  # type: ignore[operator]
    # What the database itself says, through geoip2: its own network and accuracy radius.
    record = out["database_record"]
    assert record["network"] == f"85.214.0.0/{_prefix('85.214.0.0')}"  # type: ignore[index]
    assert record["country"] == "DE" and record["accuracy_radius_km"] > 0  # type: ignore[index]
    names = [c["name"] for c in out["candidates"]]  # type: ignore[attr-defined]
    assert names == ["eu", "us", "ap"]  # nearest first
    assert "eu" in str(out["why"])
    out = _explain("www.example.com", "--client", "133.242.0.1", "--qtype", "AAAA")
    assert out["answer"] == ["2001:db8:3::1"]
    out = _explain("static.example.com")
    assert out["kind"] == "static" and out["ecs_scope"] == 0
    text = subprocess.run(
        [
            sys.executable,
            "-m",
            "gslb",
            "explain",
            "--zones",
            str(EXAMPLE_ZONES),
            "--geodb",
            str(GEOLITE2),
            "www.example.com",
            "--subnet",
            "8.8.8.0/24",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    ).stdout
    assert "location     US/NA" in text and "answer       127.0.1.1" in text and "why" in text


def test_embedded_geodb_sends_us_and_german_resolvers_home(example_server: Server) -> None:
    for subnet, expected in (("8.8.8.0", "127.0.1.1"), ("85.214.0.0", "127.0.2.1"), ("133.242.0.0", "127.0.3.1")):
        query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[dns.edns.ECSOption(subnet, 24)])
        reply = example_server.send(query)
        assert same_rrsets(reply.answer, f"www.example.com. 30 IN A {expected}"), subnet


def test_private_networks_can_be_placed_by_an_internal_database(start_server: type[Server], tmp_path: Path) -> None:
    from tests.mmdb_fixtures import FRANKFURT, TOKYO, build_test_mmdb

    mmdb = build_test_mmdb(tmp_path / "internal.mmdb", networks={"10.2.0.0/16": FRANKFURT, "10.3.0.0/16": TOKYO})
    config = (EXAMPLE_ZONES / "gslb.toml").read_text().replace("[geo]\n", '[geo]\nprivate = "database"\n', 1)
    (tmp_path / "gslb.toml").write_text(config)
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--config",
        str(tmp_path / "gslb.toml"),
        "--geodb",
        str(mmdb),
        "--no-probes",
        "--state-file",
        str(tmp_path / "s.json"),
        "--workers",
        "0",
    )
    for subnet, expected in (("10.2.0.0", "127.0.2.1"), ("10.3.0.0", "127.0.3.1"), ("10.9.0.0", "127.0.1.1")):
        query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[dns.edns.ECSOption(subnet, 24)])
        assert same_rrsets(server.send(query).answer, f"www.example.com. 30 IN A {expected}"), subnet
