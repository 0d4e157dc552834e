"""The fast path and the general path give byte-identical replies over a large generated corpus."""

from __future__ import annotations

import ipaddress
import random
import struct
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import maxminddb
import pytest

from gslb.dns import cookies as cookie_module
from gslb.dns.answer import Answerer
from gslb.health.view import HealthView, Status
from gslb.snapshot import Snapshot, Sources, build
from tests.conftest import EXAMPLE_ZONES
from tests.mmdb_fixtures import build_test_mmdb

NAMES = [
    "www.example.com.",
    "app.example.com.",
    "api.example.com.",
    "web.example.com.",  # services, CNAME to one
    "static.example.com.",
    "alias.example.com.",
    "example.com.",
    "txt.example.com.",
    "mail.example.com.",
    "x.wild.example.com.",
    "deep.example.com.",
    "b.deep.example.com.",
    "sub.example.com.",
    "a.sub.example.com.",
    "nope.example.com.",
    "example.org.",
    "ns1.example.com.",
    "unknown.example.com.",
]
TYPES = ["A", "AAAA", "MX", "TXT", "ANY", "NS", "SOA", "CAA", "DS", "SRV", "CNAME", "TYPE65534"]
ECS = [
    ("1.1.{}.0", 24),
    ("2.2.{}.0", 24),
    ("3.3.{}.0", 24),
    ("4.4.{}.0", 24),
    ("5.5.{}.0", 24),
    ("2.2.7.16", 28),
    ("2.2.7.17", 32),
    ("9.9.{}.0", 24),
    ("192.0.2.0", 24),
    ("10.1.{}.0", 24),
    ("1.1.0.0", 16),
    ("0.0.0.0", 0),
    ("2a00:1:{}::", 56),
    ("2a00:2::", 48),
    ("2a00:3:{}::", 64),
    ("2001:db8::", 32),
]
SOURCES = ["127.0.0.1", "1.1.1.1", "2.2.2.2", "3.3.3.3", "::1", "2a00:3::1"]


def _case(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def _random_name(rng: random.Random) -> str:
    """Names nobody has asked before: missing ones of every length, under every kind of node."""
    label = "".join(rng.choice("abcXYZ-019") for _ in range(rng.randrange(1, 12)))
    parent = rng.choice(
        [
            "example.com.",
            "ns1.example.com.",
            "www.example.com.",
            "deep.example.com.",
            "b.deep.example.com.",
            "wild.example.com.",
            "x.wild.example.com.",
            "sub.example.com.",
            "example.org.",
            "com.",
            "nope.example.com.",
            "mail.example.com.",
        ]
    )
    return f"{label}.{parent}"


_EXTRA_OPTIONS = [
    dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8))),
    dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(24))),  # with a server cookie
    dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(17)),
    dns.edns.GenericOption(dns.edns.OptionType.NSID, b""),
    dns.edns.GenericOption(65001, b"\x01\x02"),
]


def _query(rng: random.Random) -> bytes:
    name = _case(rng, rng.choice(NAMES) if rng.random() < 0.7 else _random_name(rng))
    rdtype = rng.choice(TYPES)
    mode = rng.random()
    if mode < 0.25:
        message = dns.message.make_query(name, rdtype, use_edns=False)
    else:
        options: list[dns.edns.Option] = []
        if mode > 0.5:
            if rng.random() < 0.3:  # a network never seen before, anywhere in the address space
                if rng.random() < 0.8:
                    address, prefix = str(ipaddress.IPv4Address(rng.getrandbits(24) << 8)), 24
                else:
                    address, prefix = str(ipaddress.IPv6Address(rng.getrandbits(48) << 80)), 48
            else:
                address, prefix = rng.choice(ECS)
                address = address.format(rng.randrange(256) if ":" not in address else f"{rng.randrange(65536):x}")
            options.append(dns.edns.ECSOption(address, prefix))
        # Options resolvers send beside ECS, which neither path may answer differently:
        # a client cookie (RFC 7873; BIND and dig send one always), padding (RFC 7830),
        # an NSID request (RFC 5001), an unknown option.
        for option in _EXTRA_OPTIONS:
            if rng.random() < 0.25:
                options.insert(rng.randrange(len(options) + 1), option)
        message = dns.message.make_query(
            name,
            rdtype,
            use_edns=0,
            payload=rng.choice([512, 1232, 1400, 4096, 100]),
            options=options,
            ednsflags=dns.flags.DO if rng.random() < 0.3 else 0,
        )
    message.id = rng.randrange(65536)
    if rng.random() < 0.3:
        message.flags &= ~dns.flags.RD
    if rng.random() < 0.2:
        message.flags |= dns.flags.CD
    return message.to_wire()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    mmdb = tmp_path_factory.mktemp("geo") / "test.mmdb"
    build_test_mmdb(mmdb)
    return build(Sources(EXAMPLE_ZONES, geodb=Path(mmdb)))


def _health(down: set[str]) -> HealthView:
    now = time.time()
    return HealthView(1, {name: Status(False, "timeout", now) for name in down})


@pytest.mark.parametrize("down", [set(), {"eu"}, {"us", "eu", "ap"}])
def test_fast_and_general_paths_agree(snapshot: Snapshot, down: set[str]) -> None:
    rng = random.Random(20261125 + len(down))
    health = _health(down)
    warm = Answerer(snapshot, health)
    fast_hits = 0
    total = 6000
    for _ in range(total):
        wire = _query(rng)
        source = rng.choice(SOURCES)
        tcp = rng.random() < 0.2
        first = warm.handle(wire, source, tcp)  # fills the caches through the general path
        fast = warm._fast(wire, source, tcp)
        if fast is None:
            continue
        fast_hits += 1
        # A fresh answerer has empty caches: its general path computes everything anew.
        general = Answerer(snapshot, health)._general(wire, source, tcp)[0]
        assert fast == general, (dns.message.from_wire(wire).to_text(), source, tcp)
        assert first == general
    # The corpus is mostly common queries: the fast path must serve most of them once warm.
    assert fast_hits > total * 0.6, fast_hits
    # Names never seen before: NXDOMAIN and REFUSED come from the fast path all the same.
    fresh = 0
    for _ in range(500):
        wire = dns.message.make_query(_random_name(rng), rng.choice(["A", "AAAA", "MX"])).to_wire()
        fast = warm._fast(wire, "127.0.0.1", False)
        general = Answerer(snapshot, health)._general(wire, "127.0.0.1", False)[0]
        if fast is not None:
            fresh += 1
            assert fast == general, dns.message.from_wire(wire).to_text()
    assert fresh > 150, fresh


@pytest.fixture(scope="module")
def cookie_snapshot(tmp_path_factory: pytest.TempPathFactory, snapshot: Snapshot) -> Snapshot:
    """The same zones and database with DNS Cookies on ([cookies] and a secret file)."""
    directory = tmp_path_factory.mktemp("cookies")
    (directory / "cookie.key").write_text("00112233445566778899aabbccddeeff\n")
    config = directory / "gslb.toml"
    config.write_text((EXAMPLE_ZONES / "gslb.toml").read_text() + '\n[cookies]\nsecret_file = "cookie.key"\n')
    assert snapshot.geo.path is not None
    return build(Sources(EXAMPLE_ZONES, config=config, geodb=Path(snapshot.geo.path)))


def test_fast_and_general_paths_agree_with_cookies_on(
    cookie_snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server cookie is stamped in seconds: a pinned clock keeps the fresh answerer's equal.
    monkeypatch.setattr(cookie_module, "clock", lambda: 1_700_000_000)
    rng = random.Random(7873)
    warm = Answerer(cookie_snapshot, HealthView())
    cookies = warm.state.cookies
    assert cookies is not None
    fast_hits = with_cookie = 0
    for _ in range(4000):
        source = rng.choice(SOURCES)
        message = dns.message.from_wire(_query(rng))
        if message.edns >= 0 and rng.random() < 0.5:  # a valid server cookie of ours, young or older
            client = rng.randbytes(8)
            made = cookies.make(client, ipaddress.ip_address(source).packed, 1_700_000_000 - rng.choice([5, 2000]))
            options = [o for o in message.options if o.otype != dns.edns.OptionType.COOKIE]
            message.use_edns(
                0,
                message.ednsflags,
                message.payload,
                options=[*options, dns.edns.GenericOption(dns.edns.OptionType.COOKIE, client + made)],
            )
        wire = message.to_wire()
        tcp = rng.random() < 0.2
        first = warm.handle(wire, source, tcp)
        fast = warm._fast(wire, source, tcp)
        if fast is None:
            continue
        fast_hits += 1
        with_cookie += b"\x00\x0a\x00\x18" in fast
        general = Answerer(cookie_snapshot, HealthView())._general(wire, source, tcp)[0]
        assert fast == general == first, (dns.message.from_wire(wire).to_text(), source, tcp)
    assert fast_hits > 2000 and with_cookie > 800, (fast_hits, with_cookie)


def test_health_changes_during_a_run_keep_the_paths_equal(snapshot: Snapshot) -> None:
    rng = random.Random(77)
    answerer = Answerer(snapshot, HealthView())
    views = [_health(set()), _health({"eu"}), _health({"us", "ap"}), _health({"us", "eu", "ap"})]
    for i in range(4000):
        if i % 400 == 0:
            health = views[(i // 400) % len(views)]
            answerer.set_health(health)
        wire = _query(rng)
        source = rng.choice(SOURCES)
        first = answerer.handle(wire, source)
        fast = answerer._fast(wire, source, False)
        general = Answerer(snapshot, health)._general(wire, source, False)[0]
        assert first == general, dns.message.from_wire(wire).to_text()
        assert fast is None or fast == general, dns.message.from_wire(wire).to_text()


@pytest.mark.parametrize("option", _EXTRA_OPTIONS)
def test_common_options_keep_a_query_on_the_fast_path(snapshot: Snapshot, option: dns.edns.Option) -> None:
    answerer = Answerer(snapshot, HealthView())
    for name in ("static.example.com.", "www.example.com.", "missing-name.example.com."):
        ecs = dns.edns.ECSOption("2.2.9.0", 24)
        wire = dns.message.make_query(name, "A", use_edns=0, options=[option, ecs]).to_wire()
        answerer.handle(wire, "127.0.0.1")
        fast = answerer._fast(wire, "127.0.0.1", False)
        assert fast is not None, (name, option)
        assert fast == Answerer(snapshot, HealthView())._general(wire, "127.0.0.1", False)[0]


def _long_name_query(rng: random.Random, ending: bytes) -> bytes:
    """A query whose name runs past 255 octets (RFC 1035 §3.1), ending in a valid name."""
    labels = b""
    while len(labels) + len(ending) <= 255:
        label = bytes(rng.choice(b"abcdefgh") for _ in range(rng.randrange(1, 64)))
        labels += bytes((len(label),)) + label
    header = struct.pack("!HHHHHH", rng.randrange(65536), 0x0100, 1, 0, 0, 0)
    return header + labels + ending + b"\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "ending",
    [
        b"\x01x\x09localhost\x00",
        b"\x01a\x07example\x03com\x04evil\x00",
        b"\x07nothing\x07example\x03com\x00",
        b"\x03www\x07example\x03com\x00",
    ],
)
def test_names_past_255_octets_get_formerr_on_both_paths(snapshot: Snapshot, ending: bytes) -> None:
    rng = random.Random(len(ending))
    answerer = Answerer(snapshot, HealthView())
    # The valid name first, so that the caches hold its ending (REFUSED, NXDOMAIN or an answer).
    answerer.handle(struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + ending + b"\x00\x01\x00\x01", "127.0.0.1")
    for _ in range(20):
        wire = _long_name_query(rng, ending)
        assert answerer._fast(wire, "127.0.0.1", False) is None
        reply = answerer.handle(wire, "127.0.0.1")
        assert reply is not None
        assert reply[:2] == wire[:2] and reply[3] & 0x0F == 1  # FORMERR
        assert reply[4:6] == b"\x00\x00"  # the invalid name is not echoed
        dns.message.from_wire(reply)  # and the reply itself is valid


def test_fast_path_serves_repeated_common_queries(snapshot: Snapshot) -> None:
    answerer = Answerer(snapshot, HealthView())
    query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[dns.edns.ECSOption("2.2.9.0", 24)])
    wire = query.to_wire()
    answerer.handle(wire, "127.0.0.1")
    before = answerer.counters.fast
    for i in range(100):
        reply = answerer.handle(struct.pack("!H", i) + wire[2:], "127.0.0.1")
        assert reply is not None and reply[:2] == struct.pack("!H", i)
    assert answerer.counters.fast == before + 100
    parsed = dns.message.from_wire(reply)
    assert parsed.answer[0][0].address == "127.0.2.1"  # Frankfurt
    ecs = parsed.options[0]
    # The scope is never narrower than the MMDB network that decided, and wider where the
    # neighbours rank the data centers alike: the /28 elsewhere in 2.2/16 is in Europe too.
    with maxminddb.open_database(str(snapshot.geo.path)) as reader:
        _, prefix = reader.get_with_prefix_len("2.2.9.0")
    assert (ecs.address, ecs.srclen) == ("2.2.9.0", 24)
    assert ecs.scopelen <= prefix
    assert ecs.scopelen == 16
