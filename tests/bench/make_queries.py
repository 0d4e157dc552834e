"""dnsperf input files and the large test zone for tests/bench/run.py (deterministic, stdlib only).

Text files (dnsperf's default format, one "name type" per line):
  static.txt    static.example.test A and AAAA              (plain zone data)
  www.txt       www.example.test A                          (the geo service only)
  mix.txt       50% www A, 10% www AAAA, 30% static A/AAAA, 10% SOA/NS (no EDNS)
  nxdomain.txt  100,000 random names that do not exist under example.test, A/AAAA
  nx-repeat.txt the first 1,000 of them (the same names again and again)
  bigzone.txt   names (and their types) drawn from the large zone, big.test
Binary file (dnsperf -B: a 2-byte length before each DNS message):
  mix-ecs-varied.bin  the mix.txt name mix, and every query carries its own ECS option:
      70% a random /24 inside one of the located /16s (1.1/16 US ... 7.7/16 SG),
      20% a random /24 in public space the database does not know (-> default answer),
      10% a random /56 inside a located IPv6 /48 (2600:1:1::/48 US, 2a02:2:2::/48 DE,
          2400:3:3::/48 JP).
  The ECS networks are option data only; the queries all go to 127.0.0.1.

big.test.zone: N records, one per name, A / AAAA / TXT / MX in turn.
"""

from __future__ import annotations

import ipaddress
import random
import string
import struct
from pathlib import Path

ZONE = "example.test"
QTYPES = {"A": 1, "NS": 2, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}
MIX = (
    [("www", "A")] * 50
    + [("www", "AAAA")] * 10
    + [("static", "A")] * 20
    + [("static", "AAAA")] * 10
    + [("", "SOA")] * 5
    + [("", "NS")] * 5
)
LOCATED_V4 = [1, 2, 3, 4, 5, 6, 7]  # first (= second) octet of the located /16s
# Public first octets the database does not know (none of them is special-purpose).
UNKNOWN_V4 = [8, 9, *range(11, 100)]
LOCATED_V6 = ["2600:1:1::", "2a02:2:2::", "2400:3:3::"]
ECS_FIXED_EU = "8:00011800020200"  # dnsperf -E: family 1, /24, scope 0, 2.2.0.0 (DE)
BIG_TYPES = ("A", "AAAA", "TXT", "MX")


def fqdn(label: str) -> str:
    return f"{label}.{ZONE}" if label else ZONE


def qname_wire(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def ecs_option(family: int, address: bytes, prefix: int) -> bytes:
    data = struct.pack("!HBB", family, prefix, 0) + address[: (prefix + 7) // 8]
    return struct.pack("!HH", 8, len(data)) + data


def query(name: str, qtype: str, ecs: bytes) -> bytes:
    header = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 1)  # id 0 (dnsperf sets it), RD=0, qd=1, ar=1
    question = qname_wire(name) + struct.pack("!HH", QTYPES[qtype], 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(ecs)) + ecs
    return header + question + opt


def random_ecs(rnd: random.Random) -> bytes:
    r = rnd.random()
    if r < 0.7:
        o = rnd.choice(LOCATED_V4)
        return ecs_option(1, bytes([o, o, rnd.randint(0, 255), 0]), 24)
    if r < 0.9:
        return ecs_option(1, bytes([rnd.choice(UNKNOWN_V4), rnd.randint(0, 255), rnd.randint(0, 255), 0]), 24)
    base = ipaddress.IPv6Address(rnd.choice(LOCATED_V6)).packed
    return ecs_option(2, base[:6] + bytes([rnd.randint(0, 255), 0]) + bytes(8), 56)


def write_queries(out: Path, *, ecs_queries: int = 50_000, nx_names: int = 100_000) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(20261125)
    (out / "static.txt").write_text("static.example.test A\nstatic.example.test AAAA\n")
    (out / "www.txt").write_text("www.example.test A\n")
    mix = list(MIX)
    rnd.shuffle(mix)
    (out / "mix.txt").write_text("".join(f"{fqdn(label)} {t}\n" for label, t in mix))
    with (out / "mix-ecs-varied.bin").open("wb") as f:
        for _ in range(ecs_queries):
            label, t = rnd.choice(MIX)
            msg = query(fqdn(label), t, random_ecs(rnd))
            f.write(struct.pack("!H", len(msg)) + msg)
    alphabet = string.ascii_lowercase + string.digits
    seen: set[str] = set()
    lines = []
    while len(lines) < nx_names:
        label = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(6, 14)))
        if label in seen or label in ("www", "static", "ns1"):
            continue
        seen.add(label)
        lines.append(f"{label}.{ZONE} {'A' if rnd.random() < 0.8 else 'AAAA'}\n")
    (out / "nxdomain.txt").write_text("".join(lines))
    (out / "nx-repeat.txt").write_text("".join(lines[:1000]))


def big_name(i: int) -> str:
    return f"host{i:06d}"


def write_big_zone(path: Path, queries: Path, records: int) -> None:
    """big.test with `records` records, one per name, cycling A / AAAA / TXT / MX."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "$ORIGIN big.test.\n$TTL 300\n",
        "@ SOA ns1.example.test. hostmaster.example.test. 2026112501 7200 1800 259200 300\n",
        "@ NS ns1.example.test.\n",
    ]
    for i in range(records):
        name = big_name(i)
        kind = BIG_TYPES[i % 4]
        if kind == "A":
            rdata = f"198.18.{(i >> 8) & 0xFF}.{i & 0xFF}"
        elif kind == "AAAA":
            rdata = f"2001:db8:b:{i >> 16:x}::{i & 0xFFFF:x}"
        elif kind == "TXT":
            rdata = f'"record {i} of the benchmark zone"'
        else:
            rdata = f"10 mail{i % 100}.example.test."
        lines.append(f"{name} {kind} {rdata}\n")
    path.write_text("".join(lines))
    rnd = random.Random(records)
    picks = [rnd.randrange(records) for _ in range(50_000)]
    queries.write_text("".join(f"{big_name(i)}.big.test {BIG_TYPES[i % 4]}\n" for i in picks))


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("queries")
    write_queries(target)
    print(f"wrote query files into {target}")
