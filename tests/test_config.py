"""The configuration loader: the example, each mistake at its file:line, and the model."""

from __future__ import annotations

import ipaddress
import textwrap
import tomllib
from pathlib import Path

import pytest

from gslb.config import load as config
from gslb.config.locate import Locator
from gslb.config.model import Check, ConfigError, DataCenter, GeoRule, Problem, Target
from gslb.geo.places import Location
from gslb.steering import rules

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "zones" / "gslb.toml"

# A valid configuration the broken snippets below extend (its lines are counted too).
BASE = """\
[checks.web]
kind = "http"
port = 8080

[datacenters.us]
vips = ["127.0.1.1"]
latitude = 39.04
longitude = -77.49
check = "web"

[datacenters.eu]
vips = ["127.0.2.1", "2001:db8:2::1"]
latitude = 50.11
longitude = 8.68
check = "web"

[datacenters.ap]
vips = ["127.0.3.1"]
latitude = 35.68
longitude = 139.69
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gslb.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return [str(p) for p in info.value.problems]


# --------------------------------------------------------------------------- the example


def test_example_loads() -> None:
    c = config.load(EXAMPLE)
    assert set(c.datacenters) == {"us", "eu", "ap"}
    assert list(c.services) == [
        "www.example.com.",
        "app.example.com.",
        "api.example.com.",
        "img.example.com.",
    ]
    assert {s.name: s.policy for s in c.services.values()} == {
        "www.example.com.": "nearest",
        "app.example.com.": "geo",
        "api.example.com.": "failover",
        "img.example.com.": "weighted",
    }
    www = c.services["www.example.com."]
    assert (www.ttl, www.ttl_degraded, www.answers, www.all_down) == (30, 10, 1, "open")
    assert www.path == EXAMPLE
    assert EXAMPLE.read_text().splitlines()[www.line - 1] == '[services."www.example.com."]'
    api = c.services["api.example.com."]
    assert api.order == ("eu", "us")
    assert api.fallback_addresses(4) == ("127.0.9.1",)
    assert c.services["img.example.com."].answers == 2
    us = c.datacenters["us"]
    assert us.vips == (ipaddress.ip_address("127.0.1.1"), ipaddress.ip_address("2001:db8:1::1"))
    assert us.check == Check(kind="http", port=8080, path="/health", interval=1.0, timeout=0.8)
    assert us.target() == Target("us", "127.0.1.1", us.check)
    assert c.default_location == Location(country="US", continent="NA", latitude=39.04, longitude=-77.49)
    assert c.overrides[0][0] == ipaddress.ip_network("192.0.2.0/24")
    assert c.overrides[0][1].source == "override"
    assert c.no_ecs == "resolver"


def test_example_probes_only_loopback() -> None:
    # The network rule: trying the example must not send traffic off this machine.
    c = config.load(EXAMPLE)
    assert c.probe_addresses == ("127.0.1.1", "127.0.2.1", "127.0.3.1")
    assert all(ipaddress.ip_address(a).is_loopback for a in c.probe_addresses)
    assert [t.name for t in c.targets()] == ["us", "eu", "ap"]


def test_example_geo_map_precedence() -> None:
    app = config.load(EXAMPLE).services["app.example.com."]
    assert [r.text for r in app.map] == [
        "cidr:203.0.113.0/24",
        "subdivision:US-HI",
        "continent:EU",
        "continent:AS",
        "continent:OC",
        "continent:NA",
    ]
    hawaii = Location(country="US", continent="NA", subdivision="HI")
    rule = rules.rule_for(app, hawaii)
    assert rule is not None and rule.order == ("ap", "us")
    assert rules.rule_for(app, Location(country="BR", continent="SA")) is None


# --------------------------------------------------------------------------- mistakes
# Each snippet marks the line the problem must be reported at with "# <-".

CASES: list[tuple[str, str, str]] = [
    # (id, snippet appended to BASE, expected "key: message")
    (
        "syntax",
        """
        [services."www.example.com."]
        policy = nearest  # <-
        """,
        "invalid TOML: Invalid value (column 10)",
    ),
    (
        "unknown-top",
        """
        [datacenter.xx]  # <-
        vips = ["127.0.4.1"]
        """,
        "datacenter: unknown key; did you mean 'datacenters'?",
    ),
    (
        "typo-dc-key",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        wieght = 2  # <-
        """,
        "datacenters.sa.wieght: unknown key; did you mean 'weight'?",
    ),
    (
        "missing-vips",
        """
        [datacenters.sa]  # <-
        latitude = 1.0
        longitude = 2.0
        """,
        "datacenters.sa.vips: required key is missing",
    ),
    (
        "bad-vip",
        """
        [datacenters.sa]
        vips = ["127.0.4.300"]  # <-
        """,
        "datacenters.sa.vips[0]: '127.0.4.300' is not an IPv4 or IPv6 address",
    ),
    (
        "bad-vip-multiline",
        """
        [datacenters.sa]
        vips = [
            "127.0.4.1",
            "2001:db8::g",  # <-
        ]
        """,
        "datacenters.sa.vips[1]: '2001:db8::g' is not an IPv4 or IPv6 address",
    ),
    (
        "duplicate-vip",
        """
        [datacenters.sa]
        vips = ["127.0.4.1",
                "127.0.4.1"]  # <-
        """,
        "datacenters.sa.vips[1]: duplicate address '127.0.4.1'",
    ),
    (
        "unspecified-vip",
        """
        [datacenters.sa]
        vips = ["0.0.0.0"]  # <-
        """,
        "datacenters.sa.vips[0]: '0.0.0.0' is not a unicast address",
    ),
    (
        "vips-not-array",
        """
        [datacenters.sa]
        vips = "127.0.4.1"  # <-
        """,
        "datacenters.sa.vips: expected an array, got a string",
    ),
    (
        "latitude-range",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        latitude = 91  # <-
        longitude = 0
        """,
        "datacenters.sa.latitude: must be between -90 and 90, got 91",
    ),
    (
        "latitude-alone",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        latitude = -23.5  # <-
        """,
        "datacenters.sa.latitude: latitude without longitude",
    ),
    (
        "unknown-check",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        check = "wbe"  # <-
        """,
        "datacenters.sa.check: unknown check 'wbe'; did you mean 'web'?",
    ),
    (
        "probe-without-check",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        probe = "127.0.4.2"  # <-
        """,
        "datacenters.sa.probe: a probe address needs a check",
    ),
    (
        "weight-zero",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        weight = 0  # <-
        """,
        "datacenters.sa.weight: must be greater than 0, got 0",
    ),
    (
        "weight-bool",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        weight = true  # <-
        """,
        "datacenters.sa.weight: expected a number, got a boolean",
    ),
    (
        "unknown-continent",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        continent = "EA"  # <-
        """,
        "datacenters.sa.continent: unknown continent 'EA'; expected one of AF AN AS EU NA OC SA",
    ),
    (
        "bad-country",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        country = "BRA"  # <-
        """,
        "datacenters.sa.country: 'BRA' is not an ISO 3166-1 alpha-2 code",
    ),
    (
        "bad-dc-name",
        """
        [datacenters."us east"]  # <-
        vips = ["127.0.4.1"]
        """,
        "datacenters.\"us east\": a data center name is letters, digits, '_', '-' and '.', "
        "starting with a letter or digit",
    ),
    (
        "check-port-range",
        """
        [checks.tcp]
        kind = "tcp"
        port = 70000  # <-
        """,
        "checks.tcp.port: must be between 1 and 65535, got 70000",
    ),
    (
        "check-tcp-no-port",
        """
        [checks.tcp]  # <-
        kind = "tcp"
        """,
        "checks.tcp.port: required key is missing",
    ),
    (
        "check-tcp-path",
        """
        [checks.tcp]
        kind = "tcp"
        port = 25
        path = "/health"  # <-
        """,
        "checks.tcp.path: only used by http and https checks",
    ),
    (
        "check-kind",
        """
        [checks.other]
        kind = "icmp"  # <-
        """,
        "checks.other.kind: 'icmp' is not one of 'http', 'https', 'tcp'",
    ),
    (
        "check-fall",
        """
        [checks.other]
        kind = "https"
        fall = 0  # <-
        """,
        "checks.other.fall: must be between 1 and 1000, got 0",
    ),
    (
        "check-timeout",
        """
        [checks.other]
        kind = "http"
        interval = 1
        timeout = 1.5  # <-
        """,
        "checks.other.timeout: timeout (1.5s) must be shorter than interval (1s)",
    ),
    (
        "check-status",
        """
        [checks.other]
        kind = "http"
        expect_status = [200, 700]  # <-
        """,
        "checks.other.expect_status[1]: must be between 100 and 599, got 700",
    ),
    (
        "check-head-body",
        """
        [checks.other]
        kind = "http"
        method = "HEAD"
        body_contains = "ok"  # <-
        """,
        "checks.other.body_contains: a HEAD response has no body; use method GET",
    ),
    (
        "check-path",
        """
        [checks.other]
        kind = "http"
        path = "health"  # <-
        """,
        "checks.other.path: must start with '/', got 'health'",
    ),
    (
        "unknown-policy",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "closest"  # <-
        """,
        "services.\"www.example.com.\".policy: 'closest' is not one of 'nearest', 'geo', 'failover', 'weighted'",
    ),
    (
        "unknown-dc",
        """
        [services."www.example.com."]
        datacenters = ["us", "euu"]  # <-
        """,
        "services.\"www.example.com.\".datacenters[1]: unknown data center 'euu'; did you mean 'eu'?",
    ),
    (
        "dc-twice",
        """
        [services."www.example.com."]
        datacenters = ["us", "us"]  # <-
        """,
        "services.\"www.example.com.\".datacenters[1]: data center 'us' is listed twice",
    ),
    (
        "empty-dcs",
        """
        [services."www.example.com."]
        datacenters = []  # <-
        """,
        'services."www.example.com.".datacenters: must not be empty',
    ),
    (
        "missing-dcs",
        """
        [services."www.example.com."]  # <-
        policy = "failover"
        """,
        'services."www.example.com.".datacenters: required key is missing',
    ),
    (
        "answers-zero",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        answers = 0  # <-
        """,
        'services."www.example.com.".answers: must be between 1 and 1000, got 0',
    ),
    (
        "answers-too-many",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        answers = 3  # <-
        """,
        'services."www.example.com.".answers: answers = 3 but the service has 2 data center(s)',
    ),
    (
        "ttl-type",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        ttl = "30"  # <-
        """,
        'services."www.example.com.".ttl: expected an integer, got a string',
    ),
    (
        "ttl-degraded",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        ttl = 20
        ttl_degraded = 60  # <-
        """,
        'services."www.example.com.".ttl_degraded: ttl_degraded (60) is longer than ttl (20)',
    ),
    (
        "fallback-missing",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        all_down = "fallback"  # <-
        """,
        'services."www.example.com.".all_down: all_down = "fallback" needs fallback addresses',
    ),
    (
        "fallback-unused",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        fallback = ["127.0.9.1"]  # <-
        """,
        'services."www.example.com.".fallback: only used with all_down = "fallback"',
    ),
    (
        "fallback-bad",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        all_down = "fallback"
        fallback = ["127.0.9.1", "example.net"]  # <-
        """,
        "services.\"www.example.com.\".fallback[1]: 'example.net' is not an IPv4 or IPv6 address",
    ),
    (
        "nearest-needs-coordinates",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]

        [services."www.example.com."]
        datacenters = ["us",
                       "sa"]  # <-
        """,
        'services."www.example.com.".datacenters[1]: '
        "policy \"nearest\" needs latitude and longitude on data center 'sa'",
    ),
    (
        "map-with-nearest",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        map = []  # <-
        """,
        'services."www.example.com.".map: only used by policy "geo"',
    ),
    (
        "map-syntax",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [
            { match = "continent:EU", order = ["eu"] },
            { match = "contnent:NA", order = ["us"] },  # <-
        ]
        """,
        "services.\"www.example.com.\".map[1].match: 'contnent:NA' is not KIND:VALUE with KIND "
        "one of cidr, subdivision, country, continent",
    ),
    (
        "map-continent",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = "continent:EA", order = ["eu"] }]  # <-
        """,
        "services.\"www.example.com.\".map[0].match: unknown continent 'EA'; expected one of AF AN AS EU NA OC SA",
    ),
    (
        "map-subdivision",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = "subdivision:CA", order = ["us"] }]  # <-
        """,
        'services."www.example.com.".map[0].match: \'CA\' is not an ISO 3166-2 code like "US-CA"',
    ),
    (
        "map-cidr-host-bits",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [
            { match = ["country:JP", "cidr:203.0.113.1/24"], order = ["eu"] },  # <-
        ]
        """,
        "services.\"www.example.com.\".map[0].match[1]: '203.0.113.1/24' has host bits set; "
        "did you mean '203.0.113.0/24'?",
    ),
    (
        "map-duplicate",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [
            { match = "country:DE", order = ["eu"] },
            { match = "country:de", order = ["us"] },  # <-
        ]
        """,
        "services.\"www.example.com.\".map[1].match: 'country:DE' is already matched by "
        'services."www.example.com.".map[0].match',
    ),
    (
        "map-not-member",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = "continent:AS", order = ["ap", "us"] }]  # <-
        """,
        "services.\"www.example.com.\".map[0].order[0]: 'ap' is not one of the service's datacenters",
    ),
    (
        "map-rule-key",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = "continent:EU", order = ["eu"], ordr = ["us"] }]  # <-
        """,
        "services.\"www.example.com.\".map[0].ordr: unknown key; did you mean 'order'?",
    ),
    (
        "failover-order",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "failover"
        order = ["eu", "ap"]  # <-
        """,
        "services.\"www.example.com.\".order[1]: 'ap' is not one of the service's datacenters",
    ),
    (
        "order-with-geo",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        order = ["eu", "us"]  # <-
        """,
        'services."www.example.com.".order: only used by policy "failover"',
    ),
    (
        "duplicate-service",
        """
        [services."WWW.Example.COM"]
        datacenters = ["us"]

        [services."www.example.com."]  # <-
        datacenters = ["us"]
        """,
        "services.\"www.example.com.\": the same name as service 'WWW.Example.COM'",
    ),
    (
        "unquoted-service",
        """
        [services.www.example.com]  # <-
        datacenters = ["us"]
        """,
        'services.www: no service keys here; quote a name with dots: [services."www.…"]',
    ),
    (
        "wildcard-service",
        """
        [services."*.example.com."]  # <-
        datacenters = ["us"]
        """,
        'services."*.example.com.": wildcard services are not supported',
    ),
    (
        "empty-label",
        """
        [services."www..example.com."]  # <-
        datacenters = ["us"]
        """,
        "services.\"www..example.com.\": 'www..example.com.' has an empty label",
    ),
    (
        "no-ecs",
        """
        [geo]
        no_ecs = "client"  # <-
        """,
        "geo.no_ecs: 'client' is not one of 'resolver', 'default'",
    ),
    (
        "geo-default-key",
        """
        [geo]
        default = { country = "US", lat = 1.0 }  # <-
        """,
        "geo.default.lat: unknown key; did you mean 'latitude'?",
    ),
    (
        "override-cidr",
        """
        [[geo.override]]
        network = "192.0.2.0/24"
        country = "JP"

        [[geo.override]]
        network = "198.51.100.0/33"  # <-
        country = "DE"
        """,
        "geo.override[1].network: '198.51.100.0/33' is not a CIDR network (like 192.0.2.0/24)",
    ),
    (
        "override-twice",
        """
        [[geo.override]]
        network = "192.0.2.0/24"
        country = "JP"

        [[geo.override]]
        network = "192.0.2.0/24"  # <-
        country = "DE"
        """,
        "geo.override[1].network: 192.0.2.0/24 is overridden twice",
    ),
    (
        "dotted-key",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        all_down.mode = "open"  # <-
        """,
        'services."www.example.com.".all_down: expected a string, got a table',
    ),
    # wrong shapes and types
    (
        "dc-not-table",
        """
        [services]
        "www.example.com." = "us"  # <-
        """,
        'services."www.example.com.": expected a table, got a string',
    ),
    (
        "check-not-table",
        """
        [checks]
        tcp = true  # <-
        """,
        "checks.tcp: expected a table, got a boolean",
    ),
    (
        "verify-tls-type",
        """
        [checks.other]
        kind = "https"
        verify_tls = "yes"  # <-
        """,
        "checks.other.verify_tls: expected true or false, got a string",
    ),
    (
        "expect-status-type",
        """
        [checks.other]
        kind = "https"
        expect_status = "200"  # <-
        """,
        "checks.other.expect_status: expected an array, got a string",
    ),
    (
        "ca-file-type",
        """
        [checks.other]
        kind = "https"
        ca_file = 1  # <-
        """,
        "checks.other.ca_file: expected a string, got an integer",
    ),
    (
        "ttl-date",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        ttl = 1979-05-27  # <-
        """,
        'services."www.example.com.".ttl: expected an integer, got a date/time',
    ),
    (
        "policy-array",
        """
        [services."www.example.com."]
        datacenters = ["us"]
        policy = ["nearest"]  # <-
        """,
        'services."www.example.com.".policy: expected a string, got an array',
    ),
    (
        "vip-type",
        """
        [datacenters.sa]
        vips = [1]  # <-
        """,
        "datacenters.sa.vips[0]: expected an IP address string, got an integer",
    ),
    (
        "vip-scoped",
        """
        [datacenters.sa]
        vips = ["fe80::1%eth0"]  # <-
        """,
        "datacenters.sa.vips[0]: 'fe80::1%eth0': a scoped address (%zone) cannot be answered",
    ),
    (
        "check-ref-type",
        """
        [datacenters.sa]
        vips = ["127.0.4.1"]
        check = 1  # <-
        """,
        "datacenters.sa.check: expected a check name, got an integer",
    ),
    (
        "member-type",
        """
        [services."www.example.com."]
        datacenters = ["us", 1]  # <-
        """,
        'services."www.example.com.".datacenters[1]: expected a data center name, got an integer',
    ),
    (
        "dc-table-not-table",
        """
        [datacenters]
        sa = "127.0.4.1"  # <-
        """,
        "datacenters.sa: expected a table, got a string",
    ),
    (
        "service-not-table",
        """
        [services]
        "x.example." = 1  # <-
        """,
        'services."x.example.": expected a table, got an integer',
    ),
    (
        "override-not-table",
        """
        [geo]
        override = [1]  # <-
        """,
        "geo.override[0]: expected a table, got an integer",
    ),
    (
        "override-network-type",
        """
        [[geo.override]]
        network = 10  # <-
        """,
        "geo.override[0].network: expected a CIDR string, got an integer",
    ),
    (
        "override-network-missing",
        """
        [[geo.override]]  # <-
        country = "DE"
        """,
        "geo.override[0].network: required key is missing",
    ),
    (
        "override-subdivision",
        """
        [[geo.override]]
        network = "10.0.0.0/8"
        subdivision = "CALIF"  # <-
        """,
        "geo.override[0].subdivision: 'CALIF' is not an ISO 3166-2 subdivision code (like \"CA\")",
    ),
    (
        "override-subtable",
        """
        [[geo.override]]
        network = "10.0.0.0/8"
        [geo.override.extra]  # <-
        x = 1
        """,
        "geo.override[0].extra: unknown key; expected network, country, continent, "
        "subdivision, latitude, longitude, city",
    ),
    (
        "geo-default-type",
        """
        [geo]
        default = "US"  # <-
        """,
        "geo.default: expected a table, got a string",
    ),
    # service names
    (
        "root-service",
        """
        [services."."]  # <-
        datacenters = ["us"]
        """,
        'services.".": the root cannot be a service',
    ),
    (
        "unicode-service",
        """
        [services."bücher.example."]  # <-
        datacenters = ["us"]
        """,
        'services."bücher.example.": use the ASCII (punycode, xn--) form of the name',
    ),
    (
        "long-label",
        f"""
        [services."{"a" * 64}.example."]  # <-
        datacenters = ["us"]
        """,
        f"services.\"{'a' * 64}.example.\": '{'a' * 64}.example.' is too long "
        "(labels up to 63, names up to 253 characters)",
    ),
    (
        "blank-in-name",
        """
        [services."a b.example."]  # <-
        datacenters = ["us"]
        """,
        "services.\"a b.example.\": 'a b.example.': a service name cannot hold blanks or backslashes",
    ),
    # geo maps
    (
        "map-rule-type",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = ["continent:EU"]  # <-
        """,
        'services."www.example.com.".map[0]: expected a table, got a string',
    ),
    (
        "map-no-match",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ order = ["eu"] }]  # <-
        """,
        'services."www.example.com.".map[0].match: required key is missing',
    ),
    (
        "map-empty-match",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = [], order = ["eu"] }]  # <-
        """,
        'services."www.example.com.".map[0].match: must not be empty',
    ),
    (
        "map-match-type",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = 7, order = ["eu"] }]  # <-
        """,
        'services."www.example.com.".map[0].match: expected a string like "country:JP", got an integer',
    ),
    (
        "map-country",
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        policy = "geo"
        map = [{ match = "country:JPN", order = ["eu"] }]  # <-
        """,
        "services.\"www.example.com.\".map[0].match: 'JPN' is not an ISO 3166-1 alpha-2 country code",
    ),
    (
        "load-kind",
        """
        [datacenters.eu.load]
        kind = "lvs"  # <-
        url = "http://127.0.2.1:8081/stub_status"
        target = 600
        """,
        "datacenters.eu.load.kind: 'lvs' is not one of 'nginx', 'haproxy', 'json'",
    ),
    (
        "load-metric",
        """
        [datacenters.eu.load]
        kind = "nginx"
        url = "http://127.0.2.1:8081/stub_status"
        metric = "scur"  # <-
        target = 600
        """,
        "datacenters.eu.load.metric: 'scur' is not one of 'requests_per_second', 'active_connections'",
    ),
    (
        "load-max-below-target",
        """
        [datacenters.eu.load]
        kind = "nginx"
        url = "http://127.0.2.1:8081/stub_status"
        target = 600
        max = 500  # <-
        """,
        "datacenters.eu.load.max: must be at least the target (600), got 500",
    ),
    (
        "load-url",
        """
        [datacenters.ap.load]
        kind = "json"
        url = "127.0.2.1:8081/load"  # <-
        """,
        "datacenters.ap.load.url: '127.0.2.1:8081/load' is not an http(s) URL (like \"http://127.0.2.1:8081/stub_status\")",
    ),
    (
        "load-haproxy-row",
        """
        [datacenters.eu.load]  # <-
        kind = "haproxy"
        url = "http://127.0.2.1:8404/stats;csv"
        target = 100
        """,
        'datacenters.eu.load: an haproxy load source names its row: frontend = "NAME" or backend = "NAME"',
    ),
    (
        "dnssec-refresh",
        """
        [dnssec]
        validity = 86400
        refresh = 86400  # <-
        """,
        "dnssec.refresh: must be less than validity (86400 s), got 86400",
    ),
    (
        "dnssec-due-at-once",
        """
        [dnssec]
        validity = 86400
        inception_offset = 43200
        refresh = 43200  # <-
        """,
        "dnssec.refresh: signatures would be due again 0 s after they are made: validity (86400 s) must exceed "
        "inception_offset (43200 s) + refresh (43200 s) by at least 1 s",
    ),
    (
        "dnssec-offset-too-long",
        """
        [dnssec]
        validity = 86400
        inception_offset = 50000  # <-
        """,
        "dnssec.inception_offset: signatures would be due again -6800 s after they are made: validity (86400 s) "
        "must exceed inception_offset (50000 s) + refresh (43200 s) by at least 1 s",
    ),
]


@pytest.mark.parametrize(("snippet", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_reported_at_its_line(tmp_path: Path, snippet: str, expected: str) -> None:
    text = BASE + textwrap.dedent(snippet)
    marked = [n for n, line in enumerate(text.splitlines(), 1) if line.endswith("# <-")]
    assert len(marked) == 1
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:{marked[0]}: {expected}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# top\ngeo = 1\n", "2: geo: expected a table, got an integer"),
        ("checks = 1.5\n", "1: checks: expected a table, got a float"),
        ("\n\ndatacenters = []\n", "3: datacenters: expected a table, got an array"),
        ('services = "x"\n', "1: services: expected a table, got a string"),
    ],
)
def test_top_level_types(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:{expected}"]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + textwrap.dedent(
            """
            [datacenters.sa]
            vips = ["127.0.4.1"]
            weight = -1

            [services."www.example.com."]
            datacenters = ["us", "eu", "mars"]
            policy = "nearest"
            ttl = 10
            ttl_degraded = 20
            bogus = 1

            [services."api.example.com."]
            datacenters = ["us"]
            all_down = "fallback"
            """
        ),
    )
    with pytest.raises(ConfigError) as info:
        config.load(path)
    lines = [p.line for p in info.value.problems]
    assert lines == sorted(lines)
    assert [(p.line, p.key) for p in info.value.problems] == [
        (24, "datacenters.sa.weight"),
        (27, 'services."www.example.com.".datacenters[2]'),
        (30, 'services."www.example.com.".ttl_degraded'),
        (31, 'services."www.example.com.".bogus'),
        (35, 'services."api.example.com.".all_down'),
    ]
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)


def test_broken_check_is_reported_once(tmp_path: Path) -> None:
    # A data center using a broken check, and a service using that data center, are not
    # reported again: the one real problem stands alone.
    text = BASE.replace("port = 8080", "port = 0  # <-") + textwrap.dedent(
        """
        [services."www.example.com."]
        datacenters = ["us", "eu"]
        """
    )
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:3: checks.web.port: must be between 1 and 65535, got 0"]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert problems(missing) == [f"{missing}: cannot read: No such file or directory"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gslb.toml"
    path.write_bytes(b"[geo]\n# \xff\n")
    assert problems(path) == [f"{path}:2: not valid UTF-8"]


def test_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[geo]\nno_ecs = "resolver')
    (message,) = problems(path)
    assert message.startswith(f"{path}:2: invalid TOML: ")


def test_ca_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("")
    path = write(
        tmp_path,
        '[checks.tls]\nkind = "https"\nca_file = "ca.pem"\n\n[checks.bad]\nkind = "https"\nca_file = "missing.pem"\n',
    )
    assert problems(path) == [f"{path}:7: checks.bad.ca_file: no such file: {str(tmp_path / 'missing.pem')!r}"]
    path.write_text('[checks.tls]\nkind = "https"\nca_file = "ca.pem"\n')
    check = config.load(path).checks["tls"]
    assert (check.port, check.ca_file) == (443, str(tmp_path / "ca.pem"))


# --------------------------------------------------------------------------- the model


def test_load_sources_and_dnssec_settings(tmp_path: Path) -> None:
    text = BASE.replace(
        "latitude = 50.11\n",
        'latitude = 50.11\nload = { kind = "nginx", url = "http://127.0.2.1:8081/stub_status", target = 600, '
        "max = 900, interval = 2.0 }\n",
    ).replace(
        "latitude = 39.04\n",
        'latitude = 39.04\nload = { kind = "haproxy", url = "http://127.0.1.1:8404/stats;csv", '
        'frontend = "www", metric = "scur", target = 50 }\n',
    )
    loaded = config.load(write(tmp_path, text + "[dnssec]\nvalidity = 604800\n"))
    eu, us = loaded.datacenters["eu"].load, loaded.datacenters["us"].load
    assert eu == config.LoadSource(
        "nginx", "http://127.0.2.1:8081/stub_status", "requests_per_second", 600, 900, 2.0, 1.0
    )
    assert us is not None and (us.proxy, us.row, us.metric, us.max, us.interval) == (
        "www",
        "FRONTEND",
        "scur",
        None,
        5.0,
    )
    assert loaded.datacenters["ap"].load is None
    assert loaded.dnssec == config.DnssecSettings(validity=604800, refresh=302400)
    assert config.loads(BASE).dnssec == config.DnssecSettings()


def test_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE
        + textwrap.dedent(
            """
            [services."WWW.Example.com"]
            datacenters = ["us", "eu", "ap"]

            [services."one.example.com."]
            datacenters = ["ap"]
            ttl = 300

            [services."fo.example.com."]
            datacenters = ["us", "eu", "ap"]
            policy = "failover"
            order = ["ap"]
            """
        ),
    )
    c = config.load(path)
    www = c.services["www.example.com."]
    assert (www.policy, www.answers, www.ttl, www.ttl_degraded, www.all_down) == (
        "nearest",
        1,
        30,
        10,
        "open",
    )
    assert www.line == 22
    one = c.services["one.example.com."]
    assert (one.ttl, one.ttl_degraded) == (300, 10)
    # Members left out of a failover order follow it in datacenters order.
    assert c.services["fo.example.com."].order == ("ap", "us", "eu")
    assert c.no_ecs == "resolver"
    assert c.default_location == Location()
    assert c.overrides == ()
    assert c.checks["web"] == Check(kind="http", port=8080)


def test_probe_addresses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        textwrap.dedent(
            """
            [checks.tcp]
            kind = "tcp"
            port = 443

            [datacenters.a]
            vips = ["2001:db8::1", "127.0.5.1"]
            check = "tcp"

            [datacenters.b]
            vips = ["2001:db8::2"]
            check = "tcp"

            [datacenters.c]
            vips = ["192.0.2.1"]
            check = "tcp"
            probe = "::1"

            [datacenters.d]
            vips = ["127.0.5.1"]
            check = "tcp"

            [datacenters.e]
            vips = ["127.0.6.1"]
            """
        ),
    )
    c = config.load(path)
    # The first IPv4 VIP, else the first IPv6 one, unless a probe address is given.
    assert [(t.name, t.address) for t in c.targets()] == [
        ("a", "127.0.5.1"),
        ("b", "2001:db8::2"),
        ("c", "::1"),
        ("d", "127.0.5.1"),
    ]
    assert c.probe_addresses == ("127.0.5.1", "2001:db8::2", "::1")
    assert c.datacenters["e"].target() is None
    assert c.datacenters["e"].probe is None


def test_datacenter_families() -> None:
    dc = DataCenter("x", tuple(ipaddress.ip_address(a) for a in ("127.0.1.1", "2001:db8::1", "127.0.1.2")))
    assert dc.vips_v4 == (ipaddress.IPv4Address("127.0.1.1"), ipaddress.IPv4Address("127.0.1.2"))
    assert dc.vips_v6 == (ipaddress.IPv6Address("2001:db8::1"),)
    assert dc.addresses(4) == ("127.0.1.1", "127.0.1.2")
    assert dc.addresses(6) == ("2001:db8::1",)
    assert not dc.has_coordinates and rules.radians(dc) is None


def test_override_order_and_subdivision(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        textwrap.dedent(
            """
            [[geo.override]]
            network = "10.0.0.0/8"
            country = "us"
            subdivision = "US-ca"
            continent = "na"

            [[geo.override]]
            network = "10.1.0.0/16"
            country = "DE"

            [[geo.override]]
            network = "fd00::/8"
            continent = "EU"
            """
        ),
    )
    c = config.load(path)
    assert [str(n) for n, _ in c.overrides] == ["10.1.0.0/16", "10.0.0.0/8", "fd00::/8"]
    wide = c.overrides[1][1]
    assert (wide.country, wide.subdivision, wide.continent) == ("US", "CA", "NA")
    assert wide.network == ipaddress.ip_network("10.0.0.0/8") and wide.source == "override"


def test_empty() -> None:
    c = config.empty()
    assert (dict(c.services), dict(c.datacenters), c.targets(), c.probe_addresses) == (
        {},
        {},
        (),
        (),
    )
    assert c.default_location == Location()


def at(network: str) -> Location:
    return Location(network=ipaddress.ip_network(network))


@pytest.mark.parametrize(
    ("rule", "location", "matches"),
    [
        (("continent", "EU"), Location(continent="EU"), True),
        (("continent", "EU"), Location(continent="NA"), False),
        (("country", "JP"), Location(country="JP", continent="AS"), True),
        (("country", "JP"), Location(), False),
        (("subdivision", "US-CA"), Location(country="US", subdivision="CA"), True),
        (("subdivision", "US-CA"), Location(country="MX", subdivision="CA"), False),
        (("cidr", "203.0.113.0/24"), at("203.0.113.0/25"), True),
        (("cidr", "203.0.113.0/24"), at("203.0.113.0/24"), True),
        (("cidr", "203.0.113.0/24"), at("203.0.112.0/20"), False),
        (("cidr", "203.0.113.0/24"), at("203.0.114.0/24"), False),
        (("cidr", "2001:db8::/32"), at("2001:db8:5::/48"), True),
        (("cidr", "2001:db8::/32"), at("203.0.113.0/24"), False),
        (("cidr", "2001:db8::/32"), Location(), False),
    ],
)
def test_geo_rule_matches(rule: tuple[str, str], location: Location, matches: bool) -> None:
    geo_rule = GeoRule(rule[0], rule[1], ("x",))
    assert rules.matches(geo_rule, location) is matches
    # The service's index agrees with the rule itself.
    service = config.Service("s.example.", ("x",), policy="geo", map=(geo_rule,))
    assert (rules.rule_for(service, location) is geo_rule) is matches


def test_problem_text() -> None:
    assert str(Problem(Path("a.toml"), 3, "geo.no_ecs", "bad")) == "a.toml:3: geo.no_ecs: bad"
    assert str(Problem(Path("a.toml"), 3, "", "bad")) == "a.toml:3: bad"
    assert str(Problem(None, 0, "", "bad")) == "<config>: bad"


def test_loads_without_path() -> None:
    with pytest.raises(ConfigError) as info:
        config.loads("[geo]\nno_ecs = 1\n")
    assert str(info.value) == "<config>:2: geo.no_ecs: expected a string, got an integer"


# --------------------------------------------------------------------------- the line locator


def test_locator_is_not_fooled_by_strings_and_comments() -> None:
    text = textwrap.dedent(
        '''\
        # [services."fake."] in a comment
        title = """
        [services."also.fake."]
        key = "x" # not a comment
        """
        literal = 'C:\\path [x] = #'
        [services."a.example."]   # a real header
        datacenters = [ # comment [
          "us",  # ]
          'eu',
        ]
        map = [{ match = "country:DE", order = ["eu"] }, { match = "a", order = [
            "us" ] }]
        [[geo.override]]
        network = "10.0.0.0/8"
        [[geo.override]]
        network = "10.1.0.0/16"
        [datacenters]
        us.vips = ["127.0.0.1"]
        "eu" . "vips" = ["127.0.0.2"]
        '''
    )
    tomllib.loads(text)  # valid TOML
    find = Locator(text).find
    svc = ("services", "a.example.")
    assert find(svc) == 7
    assert find((*svc, "datacenters", 0)) == 9
    assert find((*svc, "datacenters", 1)) == 10
    assert find((*svc, "map", 0, "order", 0)) == 12
    assert find((*svc, "map", 1, "order", 0)) == 13
    assert find((*svc, "missing")) == 7  # falls back to the table header
    assert find(("geo", "override", 1, "network")) == 17
    assert find(("geo", "override", 0)) == 14
    assert find(("datacenters", "us", "vips")) == 19
    assert find(("datacenters", "eu", "vips", 0)) == 20
    assert find(("nothing",)) == 1
    assert find(("title",)) == 2
    assert find(("literal",)) == 6


def test_locator_multiline_string_escapes_and_quotes() -> None:
    text = (
        'a = """one \\""" [x] = 1\n'  # an escaped delimiter does not end the string
        '[not.a.header]"""\n'
        'b = """ends in quotes"""""\n'  # up to two quotes may precede the delimiter
        "c = '''literal ''''\n"
        "[t]\n"
        "d = 1\n"
    )
    assert tomllib.loads(text)["b"] == 'ends in quotes""'
    find = Locator(text).find
    assert (find(("a",)), find(("b",)), find(("c",)), find(("t", "d"))) == (1, 3, 4, 6)
    assert find(("not",)) == 1  # inside a string: no such table


def test_check_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        textwrap.dedent(
            """
            [checks.x]
            kind = "https"
            port = 8443
            path = "/ready"
            method = "GET"
            expect_status = 204
            body_contains = "ok"
            host = "www.example.com"
            verify_tls = false
            follow_redirects = true
            interval = 2
            timeout = 1.5
            fall = 1
            rise = 5
            jitter = 0
            """
        ),
    )
    assert config.load(path).checks["x"] == Check(
        kind="https",
        port=8443,
        path="/ready",
        expect_status=(204,),
        body_contains="ok",
        host="www.example.com",
        verify_tls=False,
        follow_redirects=True,
        interval=2.0,
        timeout=1.5,
        fall=1,
        rise=5,
        jitter=0.0,
    )


def test_private_addresses_can_be_looked_up_in_the_database(tmp_path: Path) -> None:
    assert config.loads('[geo]\nprivate = "database"\n').private_in_database
    assert not config.loads("[geo]\n").private_in_database
    with pytest.raises(ConfigError) as info:
        config.loads('[geo]\nprivate = "yes"\n')
    assert "geo.private: 'yes' is not one of 'default', 'database'" in str(info.value)
