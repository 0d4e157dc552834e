"""The policies as tables: (service, client location, health, family) → the decision."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from pathlib import Path

import pytest

from gslb.config import load as config
from gslb.geo.places import Location, distance_km
from gslb.health.view import HealthView, Status
from gslb.steering.policy import SERVFAIL, Candidate, Decision, choose

CONFIG = config.loads(
    """
    [datacenters.us]   # Ashburn
    vips = ["127.0.1.1", "2001:db8:1::1"]
    latitude = 39.04
    longitude = -77.49

    [datacenters.eu]   # Frankfurt
    vips = ["127.0.2.1", "2001:db8:2::1"]
    latitude = 50.11
    longitude = 8.68

    [datacenters.ap]   # Tokyo, IPv4 only
    vips = ["127.0.3.1", "127.0.3.2"]
    latitude = 35.68
    longitude = 139.69
    weight = 2

    [datacenters.sa]   # São Paulo, IPv6 only
    vips = ["2001:db8:4::1"]
    latitude = -23.55
    longitude = -46.63

    [datacenters.nowhere]
    vips = ["127.0.5.1"]

    [services."near.example."]
    datacenters = ["us", "eu", "ap"]
    ttl = 30
    ttl_degraded = 10

    [services."near2.example."]
    datacenters = ["us", "eu", "ap"]
    answers = 2

    [services."geo.example."]
    datacenters = ["us", "eu", "ap", "sa"]
    policy = "geo"
    map = [
        { match = "continent:EU", order = ["eu", "us"] },
        { match = "country:JP", order = ["ap"] },
        { match = "subdivision:US-CA", order = ["ap", "us"] },
        { match = "cidr:203.0.113.0/24", order = ["eu"] },
        { match = "cidr:203.0.113.128/25", order = ["us"] },
    ]
    default = ["us", "eu"]

    [services."geo2.example."]
    datacenters = ["us", "eu", "ap"]
    policy = "geo"
    answers = 2
    map = [
        { match = "country:JP", order = ["ap"] },
        { match = "continent:EU", order = ["eu", "us"] },
    ]

    [services."plain-geo.example."]
    datacenters = ["us", "eu", "nowhere"]
    policy = "geo"

    [services."fo.example."]
    datacenters = ["us", "eu"]
    policy = "failover"
    order = ["eu", "us"]
    ttl = 60
    ttl_degraded = 5
    all_down = "fallback"
    fallback = ["127.0.9.1", "2001:db8:9::1"]

    [services."fo4.example."]
    datacenters = ["us", "eu", "ap"]
    policy = "failover"
    answers = 2
    all_down = "fallback"
    fallback = ["127.0.9.1"]

    [services."nodata.example."]
    datacenters = ["us", "eu"]
    all_down = "nodata"

    [services."servfail.example."]
    datacenters = ["us", "eu"]
    policy = "failover"
    all_down = "servfail"

    [services."w.example."]
    datacenters = ["us", "eu", "ap"]
    policy = "weighted"

    [services."w2.example."]
    datacenters = ["us", "eu", "ap"]
    policy = "weighted"
    answers = 2

    [services."single.example."]
    datacenters = ["nowhere"]
    """,
    Path("policy-test.toml"),
)
DCS = CONFIG.datacenters

NEW_YORK = Location(country="US", continent="NA", subdivision="NY", latitude=40.71, longitude=-74.01)
BERLIN = Location(country="DE", continent="EU", latitude=52.52, longitude=13.40)
OSAKA = Location(country="JP", continent="AS", latitude=34.69, longitude=135.50)
LOS_ANGELES = Location(country="US", continent="NA", subdivision="CA", latitude=34.05, longitude=-118.24)
SYDNEY = Location(country="AU", continent="OC", latitude=-33.87, longitude=151.21)
SOMEWHERE = Location(country="BR", continent="SA")  # no coordinates


def net(network: str, base: Location = OSAKA) -> Location:
    """``base`` as decided by the geo network ``network``."""
    return Location(
        country=base.country,
        continent=base.continent,
        latitude=base.latitude,
        longitude=base.longitude,
        network=ipaddress.ip_network(network),
        source="override",
    )


def health(*down: str, reason: str = "timeout") -> HealthView:
    return HealthView(1, {name: Status(False, reason, 0.0) for name in down})


def decide(service: str, location: Location, down: tuple[str, ...] = (), family: int = 4) -> Decision:
    return choose(CONFIG.services[service], DCS, location, health(*down), family)


# --------------------------------------------------------------------------- the table

CASES = [
    # id, service, location, down, family → addresses, ttl, datacenters, location_dependent
    # nearest
    ("nyc", "near", NEW_YORK, "", 4, "127.0.1.1", 30, "us", True),
    ("nyc-aaaa", "near", NEW_YORK, "", 6, "2001:db8:1::1", 30, "us", True),
    ("nyc-us-down", "near", NEW_YORK, "us", 4, "127.0.2.1", 10, "eu", True),
    ("berlin", "near", BERLIN, "", 4, "127.0.2.1", 30, "eu", True),
    ("osaka-a", "near", OSAKA, "", 4, "127.0.3.1 127.0.3.2", 30, "ap", True),
    # ap has no IPv6 VIP: NODATA for AAAA, not another data center
    ("osaka-aaaa-nodata", "near", OSAKA, "", 6, "", 30, "ap", True),
    ("osaka-ap-down-aaaa", "near", OSAKA, "ap", 6, "2001:db8:2::1", 10, "eu", True),
    ("sydney", "near", SYDNEY, "", 4, "127.0.3.1 127.0.3.2", 30, "ap", True),
    ("no-coordinates", "near", SOMEWHERE, "", 4, "127.0.1.1", 30, "us", True),
    ("one-up", "near", BERLIN, "eu ap", 4, "127.0.1.1", 10, "us", False),
    ("all-down-open", "near", BERLIN, "us eu ap", 4, "127.0.2.1", 10, "eu", True),
    ("answers-2", "near2", BERLIN, "", 4, "127.0.2.1 127.0.1.1", 30, "eu us", True),
    ("answers-2-aaaa", "near2", OSAKA, "", 6, "2001:db8:2::1", 30, "ap eu", True),
    ("answers-2-dn", "near2", BERLIN, "us", 4, "127.0.2.1 127.0.3.1 127.0.3.2", 10, "eu ap", True),
    ("answers-2-one-up", "near2", BERLIN, "us eu", 4, "127.0.3.1 127.0.3.2", 10, "ap", False),
    # geo: most specific rule wins
    ("geo-continent", "geo", BERLIN, "", 4, "127.0.2.1", 30, "eu", True),
    ("geo-country", "geo", OSAKA, "", 4, "127.0.3.1 127.0.3.2", 30, "ap", True),
    ("geo-subdivision", "geo", LOS_ANGELES, "", 4, "127.0.3.1 127.0.3.2", 30, "ap", True),
    ("geo-default", "geo", NEW_YORK, "", 4, "127.0.1.1", 30, "us", True),
    ("geo-default-no-coordinates", "geo", SOMEWHERE, "", 4, "127.0.1.1", 30, "us", True),
    ("geo-cidr-beats-country", "geo", net("203.0.113.0/26"), "", 4, "127.0.2.1", 30, "eu", True),
    ("geo-longest-cidr", "geo", net("203.0.113.200/32"), "", 4, "127.0.1.1", 30, "us", True),
    ("geo-coarser", "geo", net("203.0.112.0/20"), "", 4, "127.0.3.1 127.0.3.2", 30, "ap", True),
    ("geo-next-in-order", "geo", BERLIN, "eu", 4, "127.0.1.1", 10, "us", True),
    ("geo-order-aaaa", "geo", BERLIN, "eu", 6, "2001:db8:1::1", 10, "us", True),
    # every data center of the rule down: the rest, nearest first (from Osaka: eu, us, sa)
    ("geo-fall-through", "geo", OSAKA, "ap", 4, "127.0.2.1", 10, "eu", True),
    ("geo-fall-through-2", "geo", OSAKA, "ap eu", 4, "127.0.1.1", 10, "us", True),
    ("geo-fall-through-last", "geo", OSAKA, "ap eu us", 6, "2001:db8:4::1", 10, "sa", False),
    ("geo-all-down-open", "geo", BERLIN, "us eu ap sa", 4, "127.0.2.1", 10, "eu", True),
    # answers = 2 takes only the rule's order while any of it is up
    ("geo2-short-order", "geo2", OSAKA, "", 4, "127.0.3.1 127.0.3.2", 30, "ap", True),
    ("geo2-two", "geo2", BERLIN, "", 4, "127.0.2.1 127.0.1.1", 30, "eu us", True),
    ("geo2-fall-through", "geo2", OSAKA, "ap", 4, "127.0.2.1 127.0.1.1", 10, "eu us", True),
    ("geo2-default", "geo2", SOMEWHERE, "", 4, "127.0.1.1 127.0.2.1", 30, "us eu", True),
    # a geo map without rules answers the same everywhere
    ("plain-geo", "plain-geo", BERLIN, "", 4, "127.0.1.1", 30, "us", False),
    ("plain-geo-down", "plain-geo", BERLIN, "us", 4, "127.0.2.1", 10, "eu", False),
    # failover
    ("fo", "fo", NEW_YORK, "", 4, "127.0.2.1", 60, "eu", False),
    ("fo-aaaa", "fo", NEW_YORK, "", 6, "2001:db8:2::1", 60, "eu", False),
    ("fo-eu-down", "fo", BERLIN, "eu", 4, "127.0.1.1", 5, "us", False),
    ("fo-answers-2", "fo4", BERLIN, "us", 4, "127.0.2.1 127.0.3.1 127.0.3.2", 10, "eu ap", False),
    ("fo-answers-2-aaaa", "fo4", BERLIN, "", 6, "2001:db8:1::1 2001:db8:2::1", 30, "us eu", False),
    # single member
    ("single", "single", BERLIN, "", 4, "127.0.5.1", 30, "nowhere", False),
    ("single-aaaa", "single", BERLIN, "", 6, "", 30, "nowhere", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("service", "location", "down", "family", "addresses", "ttl", "datacenters", "dependent"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_choose(
    service: str,
    location: Location,
    down: str,
    family: int,
    addresses: str,
    ttl: int,
    datacenters: str,
    dependent: bool,
) -> None:
    name = f"{service}.example."
    d = decide(name, location, tuple(down.split()), family)
    assert (d.addresses, d.ttl, d.datacenters, d.location_dependent) == (
        tuple(addresses.split()),
        ttl,
        tuple(datacenters.split()),
        dependent,
    )
    assert d.rcode == 0
    assert d.cacheable
    assert d.all_down == (set(down.split()) == set(CONFIG.services[name].datacenters))
    # The choice never depends on the family, only the addresses do.
    other = decide(name, location, tuple(down.split()), 10 - family)
    assert other.datacenters == d.datacenters


# --------------------------------------------------------------------------- all down

ALL_DOWN = [
    # id, service, family → addresses, rcode
    ("fallback-a", "fo.example.", 4, ("127.0.9.1",), 0),
    ("fallback-aaaa", "fo.example.", 6, ("2001:db8:9::1",), 0),
    ("fallback-aaaa-none", "fo4.example.", 6, (), 0),
    ("nodata", "nodata.example.", 4, (), 0),
    ("servfail", "servfail.example.", 4, (), SERVFAIL),
]


@pytest.mark.parametrize(
    ("service", "family", "addresses", "rcode"),
    [c[1:] for c in ALL_DOWN],
    ids=[c[0] for c in ALL_DOWN],
)
def test_all_down(service: str, family: int, addresses: tuple[str, ...], rcode: int) -> None:
    svc = CONFIG.services[service]
    d = choose(svc, DCS, BERLIN, health(*svc.datacenters), family)
    assert (d.addresses, d.rcode, d.datacenters) == (addresses, rcode, ())
    assert d.all_down and d.cacheable and not d.location_dependent
    assert d.ttl == svc.ttl_degraded
    assert [c.note for c in d.candidates] == ["down: timeout"] * len(svc.datacenters)
    assert d.reason.startswith(f"all down (all_down = {svc.all_down}): ")


def test_all_down_open_answers_as_if_up() -> None:
    d = decide("near.example.", NEW_YORK, ("us", "eu", "ap"))
    assert d.datacenters == ("us",) and d.all_down
    assert d.reason == (
        "all down, answering as if up (all_down = open): nearest: us (350 km); "
        "us down: timeout; eu down: timeout; ap down: timeout"
    )


# --------------------------------------------------------------------------- bias


BIASED = config.loads(
    """
    [datacenters.a]
    vips = ["127.0.1.1"]
    latitude = 0
    longitude = 0

    [datacenters.b]
    vips = ["127.0.2.1"]
    latitude = 0
    longitude = 10
    bias_km = -300

    [datacenters.c]
    vips = ["127.0.3.1"]
    latitude = 0
    longitude = -10
    bias_km = 500

    [services."s.example."]
    datacenters = ["a", "b", "c"]
    """
)


@pytest.mark.parametrize(
    ("longitude", "expected"),
    [
        (2.0, "a"),  # a 222 km, b 889 - 300 km
        (4.0, "b"),  # a 445 km, b 667 - 300 = 367 km
        (-6.0, "a"),  # c is nearer (445 km vs 667 km), but 500 km of bias away
        (-9.0, "c"),  # c 111 + 500 km, a 1001 km
    ],
)
def test_bias_km(longitude: float, expected: str) -> None:
    location = Location(latitude=0.0, longitude=longitude)
    d = choose(BIASED.services["s.example."], BIASED.datacenters, location, health(), 4)
    ranked = sorted(
        BIASED.datacenters.values(),
        key=lambda dc: distance_km(0.0, longitude, dc.latitude or 0, dc.longitude or 0) + dc.bias_km,
    )
    assert d.datacenters == (ranked[0].name,) == (expected,)
    # Candidates show the plain distance, without the bias.
    a = next(c for c in d.candidates if c.name == "a")
    assert a.distance_km == pytest.approx(distance_km(0.0, longitude, 0.0, 0.0))


# --------------------------------------------------------------------------- weighted


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        # weights us 1, eu 1, ap 2
        ("w.example.", {"us": 0.25, "eu": 0.25, "ap": 0.5}),
        # two drawn without replacement: how often each is among them
        ("w2.example.", {"us": 7 / 12, "eu": 7 / 12, "ap": 5 / 6}),
    ],
)
def test_weighted_follows_weights(service: str, expected: dict[str, float]) -> None:
    rng = random.Random(20240601)
    n = 20_000
    seen: Counter[str] = Counter()
    svc = CONFIG.services[service]
    view = health()
    for _ in range(n):
        d = choose(svc, DCS, BERLIN, view, 4, rng)
        assert len(set(d.datacenters)) == svc.answers
        seen.update(d.datacenters)
        assert not d.cacheable and not d.location_dependent
    for name, share in expected.items():
        assert seen[name] / n == pytest.approx(share, abs=0.015)


def test_weighted_is_deterministic_with_a_seed() -> None:
    svc = CONFIG.services["w.example."]
    runs = [
        [choose(svc, DCS, BERLIN, health(), 4, rng).datacenters for _ in range(50)]
        for rng in (random.Random(7), random.Random(7))
    ]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 3


def test_weighted_skips_down_members() -> None:
    svc = CONFIG.services["w.example."]
    rng = random.Random(1)
    picks = {choose(svc, DCS, BERLIN, health("ap"), 4, rng).datacenters for _ in range(200)}
    assert picks == {("us",), ("eu",)}
    d = choose(svc, DCS, BERLIN, health("ap"), 4, rng)
    assert d.ttl == svc.ttl_degraded and not d.cacheable


def test_weighted_answering_every_healthy_member_is_cacheable() -> None:
    # Two of three are up and two are answered: the set cannot vary, only its order.
    d = choose(CONFIG.services["w2.example."], DCS, BERLIN, health("us"), 4, random.Random(3))
    assert set(d.datacenters) == {"eu", "ap"}
    assert d.cacheable and not d.location_dependent


def test_weighted_all_down_open_draws_from_all() -> None:
    svc = CONFIG.services["w.example."]
    rng = random.Random(5)
    picks = Counter(choose(svc, DCS, BERLIN, health("us", "eu", "ap"), 4, rng).datacenters[0] for _ in range(400))
    assert set(picks) == {"us", "eu", "ap"}


def test_weighted_without_rng_uses_random() -> None:
    d = choose(CONFIG.services["w.example."], DCS, BERLIN, health(), 6)
    assert len(d.datacenters) == 1


# --------------------------------------------------------------------------- explanations


def test_reason_and_candidates_nearest() -> None:
    d = choose(CONFIG.services["near.example."], DCS, BERLIN, health("eu"), 4)
    assert d.reason == "nearest healthy: us (6727 km); eu down: timeout"
    assert [(c.name, c.up, c.rank, c.note) for c in d.candidates] == [
        ("eu", False, 1, "down: timeout"),
        ("us", True, 2, "chosen"),
        ("ap", True, 3, ""),
    ]
    eu = d.candidates[0]
    assert eu.distance_km == pytest.approx(distance_km(52.52, 13.40, 50.11, 8.68))
    assert isinstance(eu, Candidate) and eu.weight is None


def test_reason_nodata() -> None:
    d = decide("near.example.", OSAKA, (), 6)
    assert d.reason == "nearest healthy: ap (396 km); no IPv6 VIP in ap (NODATA)"
    assert d.candidates[0].note == "chosen, no IPv6 VIP"


def test_reason_geo() -> None:
    assert decide("geo.example.", BERLIN).reason == "geo rule continent:EU: eu"
    assert decide("geo.example.", NEW_YORK).reason == "geo default: us"
    d = decide("geo.example.", OSAKA, ("ap",))
    assert d.reason == ("geo rule country:JP: ap down; nearest healthy of the rest: eu (9237 km); ap down: timeout")
    assert [(c.name, c.rank) for c in d.candidates] == [
        ("ap", 1),
        ("eu", 2),
        ("us", 3),
        ("sa", 4),
    ]
    d = decide("geo.example.", BERLIN)
    assert [(c.name, c.rank, c.note) for c in d.candidates] == [
        ("eu", 1, "chosen"),
        ("us", 2, ""),
        ("ap", None, "not in the order"),
        ("sa", None, "not in the order"),
    ]


def test_reason_failover_and_weighted() -> None:
    d = decide("fo.example.", BERLIN, ("eu",))
    assert d.reason == "failover: us; eu down: timeout"
    svc = CONFIG.services["w.example."]
    d = choose(svc, DCS, BERLIN, health("ap"), 4, random.Random(1))
    assert d.reason.startswith("weighted draw: ")
    assert d.reason.endswith(" (weight 1 of 2); ap down: timeout")
    assert {c.weight for c in d.candidates} == {1.0, 2.0}
    assert [c.rank for c in d.candidates] == [1, None, None]


def test_reason_fallback() -> None:
    svc = CONFIG.services["fo4.example."]
    d = choose(svc, DCS, BERLIN, health("us", "eu", "ap", reason="status 503"), 6)
    assert d.reason == (
        "all down (all_down = fallback): fallback (no IPv6 address: NODATA); "
        "us down: status 503; eu down: status 503; ap down: status 503"
    )


def test_reason_no_coordinates_and_drained() -> None:
    view = HealthView(1, {"us": Status(False, "drained", 0.0, drained=True)})
    d = choose(CONFIG.services["near.example."], DCS, SOMEWHERE, view, 4)
    assert d.reason == "no client coordinates, member order: eu; us down: drained"


def test_duck_typed_health() -> None:
    class Health:
        def is_up(self, name: str) -> bool:
            return name != "us"

        def status(self, name: str) -> None:
            return None

    d = choose(CONFIG.services["near.example."], DCS, NEW_YORK, Health(), 4)
    assert d.datacenters == ("eu",)
    assert d.reason == "nearest healthy: eu (6203 km); us down: failing"


def test_decision_equality_ignores_explanation() -> None:
    assert decide("near.example.", BERLIN) == decide("near.example.", BERLIN)
    assert decide("near.example.", BERLIN) != decide("near.example.", NEW_YORK)


# --------------------------------------------------------------------------- distances


def test_ranking_uses_the_same_distances() -> None:
    # The ranking's precomputed haversine agrees with gslb.geo.database.distance_km().
    for location in (NEW_YORK, BERLIN, OSAKA, SYDNEY, LOS_ANGELES):
        d = decide("near.example.", location)
        for c in d.candidates:
            dc = DCS[c.name]
            assert dc.latitude is not None and dc.longitude is not None
            assert location.latitude is not None and location.longitude is not None
            expected = distance_km(location.latitude, location.longitude, dc.latitude, dc.longitude)
            assert c.distance_km == pytest.approx(expected, rel=1e-9)
