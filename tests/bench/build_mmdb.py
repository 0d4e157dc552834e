"""Build the synthetic GeoIP2-City-layout MMDB that every server in the benchmark reads.

Usage: python tests/bench/build_mmdb.py OUTPUT.mmdb   (needs: pip install mmdb-writer)

The layout follows the one the peer configs in shared/peers/ were verified with (an IPv6
database, IPv4 data in ::/96 plus ::ffff:0:0/96 aliases, database_type "GeoIP2-City",
continent / country / subdivisions / city / location records), so gdnsd, knot mod-geoip,
both PowerDNS setups and gslb all read it unchanged.

Unlike the peers' database, the client networks are *public* ranges: gslb sends private and
documentation addresses (10/8, 2001:db8::/32, ...) to its default location without a
database lookup, so ECS data in those ranges would not exercise its geo path.  These
networks are only ever bytes inside an EDNS Client Subnet option: the benchmark never sends
a packet to any of them (all traffic goes to 127.0.0.1).
"""

from __future__ import annotations

import sys
from pathlib import Path

# place: continent code, continent name, country, country name, subdivision, city, lat, lon,
#        country geoname id, city geoname id
PLACES = {
    "us": ("NA", "North America", "US", "United States", "VA", "Ashburn", 39.0438, -77.4874, 6252001, 4744870),
    "de": ("EU", "Europe", "DE", "Germany", "HE", "Frankfurt am Main", 50.1155, 8.6842, 2921044, 2925533),
    "jp": ("AS", "Asia", "JP", "Japan", "13", "Tokyo", 35.6895, 139.6917, 1861060, 1850147),
    "br": ("SA", "South America", "BR", "Brazil", "SP", "Sao Paulo", -23.5475, -46.6361, 3469034, 3448439),
    "au": ("OC", "Oceania", "AU", "Australia", "NSW", "Sydney", -33.8678, 151.2073, 2077456, 2147714),
    "gb": ("EU", "Europe", "GB", "United Kingdom", "ENG", "London", 51.5085, -0.1257, 2635167, 2643743),
    "sg": ("AS", "Asia", "SG", "Singapore", None, "Singapore", 1.2897, 103.8501, 1880251, 1880252),
}
CONTINENT_IDS = {"NA": 6255149, "EU": 6255148, "AS": 6255147, "SA": 6255150, "OC": 6255151}

# Located client networks (ECS data only).  make_queries.py draws from these.
CLIENT_V4 = [
    ("1.1.0.0/16", "us"),
    ("2.2.0.0/16", "de"),
    ("3.3.0.0/16", "jp"),
    ("4.4.0.0/16", "br"),
    ("5.5.0.0/16", "au"),
    ("6.6.0.0/16", "gb"),
    ("7.7.0.0/16", "sg"),
]
CLIENT_V6 = [
    ("2600:1:1::/48", "us"),
    ("2a02:2:2::/48", "de"),
    ("2400:3:3::/48", "jp"),
]
# The data-center VIPs are located too (PowerDNS pickclosest() would need them; harmless
# for the rest).  They are documentation addresses and are never contacted either.
VIPS = [
    ("192.0.2.0/24", "us"),
    ("198.51.100.0/24", "de"),
    ("203.0.113.0/24", "jp"),
    ("2001:db8:100::/48", "us"),
    ("2001:db8:200::/48", "de"),
    ("2001:db8:300::/48", "jp"),
]
NETWORKS = CLIENT_V4 + CLIENT_V6 + VIPS

# What each located ECS network must resolve to (used by the self-check and run.py).
EXPECT_COUNTRY = {
    "1.1.2.3": "US",
    "2.2.0.1": "DE",
    "3.3.9.9": "JP",
    "5.5.1.1": "AU",
    "2a02:2:2::1": "DE",
    "2400:3:3:ff::1": "JP",
    "198.51.100.1": "DE",
}


def record(key: str) -> dict:
    cc, cname, iso, country, subd, city, lat, lon, country_id, city_id = PLACES[key]
    rec = {
        "continent": {"code": cc, "geoname_id": CONTINENT_IDS[cc], "names": {"en": cname}},
        "country": {"iso_code": iso, "geoname_id": country_id, "names": {"en": country}},
        "registered_country": {"iso_code": iso, "geoname_id": country_id, "names": {"en": country}},
        "city": {"geoname_id": city_id, "names": {"en": city}},
        "location": {"latitude": float(lat), "longitude": float(lon), "accuracy_radius": 100},
    }
    if subd:
        rec["subdivisions"] = [{"iso_code": subd, "names": {"en": subd}}]
    return rec


def build(out: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",  # gdnsd's auto_dc_coords wants "City" in the type
        languages=["en"],
        description="gslb benchmark test City DB (synthetic, public ranges as ECS data only)",
    )
    for net, key in NETWORKS:
        writer.insert_network(IPSet([net]), record(key))
        if ":" not in net:
            addr, plen = net.split("/")
            writer.insert_network(IPSet([f"::ffff:{addr}/{96 + int(plen)}"]), record(key))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(out))
    check(out)
    return out


def check(path: Path) -> None:
    import maxminddb

    with maxminddb.open_database(str(path)) as reader:
        for ip, want in EXPECT_COUNTRY.items():
            got = ((reader.get(ip) or {}).get("country") or {}).get("iso_code")
            if got != want:
                raise SystemExit(f"{path}: {ip} -> {got}, expected {want}")
        if reader.get("127.0.0.1") is not None or reader.get("9.9.9.9") is not None:
            raise SystemExit(f"{path}: unexpected data for an unlocated address")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: build_mmdb.py OUTPUT.mmdb")
    p = build(Path(sys.argv[1]))
    print(f"wrote {p} ({p.stat().st_size} bytes), self-check OK")
