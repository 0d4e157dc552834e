"""The never-repeating query stream: every query from a client network not seen before.

Usage: python tests/bench/stream.py OUT.bin [-n QUERIES] [--seed N] [--geodb FILE]

A real authoritative server sees a different client network in almost every query
(resolvers send ECS with their client's /24 or /56), so this stream gives every query its
own EDNS Client Subnet network, and no network appears twice in the file:

* 85 % a random public IPv4 /24, drawn uniformly from all /24s outside the special-purpose
  blocks (``gslb.geo.database.SPECIAL_NETWORKS``: private, loopback, multicast, documentation,
  reserved ...);
* 15 % a random public IPv6 /48 inside a network the GeoIP database places: a random walk
  down the database's search tree from 2000::/3 (most of 2000::/3 is unallocated and no
  database knows it, so a uniform /48 would nearly always be "unknown"), skipping the
  special-purpose blocks.

The names, by share of queries: 60 % ``www.example.com`` A (the geo service), 10 % www
AAAA, 10 % the apex SOA, 10 % the apex NS, 10 % a random name that does not exist (A,
NXDOMAIN).  A third of the queries carry a DNS COOKIE option with an 8-byte client cookie
(RFC 7873), as BIND resolvers send: one of RESOLVERS stable client cookies (a resolver keeps
its client cookie for a server for a long time, RFC 7873 §5.1), so a server that remembers
what it answered a (client, cookie) pays for SipHash once per resolver, as in real traffic.
Every query: ID 0 (dnsperf sets it), RD clear, one OPT record (UDP size 1232) with the ECS
option, then the cookie if any.

Output: dnsperf's ``-B`` format (a 2-byte length before each message), written once per
(count, seed, database content) and reused.  The networks are option bytes only: nothing
is ever sent to them, every query goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import ipaddress
import random
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gslb.geo.places import SPECIAL_NETWORKS  # noqa: E402

ZONE = "example.com"
SERVICE = f"www.{ZONE}"
V6_SHARE = 0.15
COOKIE_SHARE = 1 / 3
RESOLVERS = 1000  # distinct client cookies in a stream: the resolvers that send them
# (kind, qtype) by cumulative share
MIX: tuple[tuple[float, str, int], ...] = (
    (0.60, "www-A", 1),
    (0.70, "www-AAAA", 28),
    (0.80, "SOA", 6),
    (0.90, "NS", 2),
    (1.00, "NX", 1),
)
UDP_SIZE = 1232
OPT_ECS = 8
OPT_COOKIE = 10
NX_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"


def geolite2_city() -> Path:
    """The GeoLite2-City database of the PyPI package maxminddb-geolite2."""
    import importlib.util

    spec = importlib.util.find_spec("_maxminddb_geolite2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("GeoLite2-City not found: pip install maxminddb-geolite2")
    path = Path(next(iter(spec.submodule_search_locations))) / "GeoLite2-City.mmdb"
    if not path.is_file():
        raise SystemExit(f"GeoLite2-City not found at {path}")
    return path


def qname_wire(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


# --------------------------------------------------------------------------- IPv4


class PublicV4:
    """Uniform random public /24s, each at most once (a 2 MiB bitmap of the ones drawn)."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        special = sorted(
            (int(n.network_address) >> 8, (int(n.broadcast_address) >> 8) + 1)
            for n in SPECIAL_NETWORKS
            if n.version == 4
        )
        # the complement: runs [start, end) of allowed /24 indices, and their cumulative sizes
        self.starts: list[int] = []
        self.cum: list[int] = [0]
        pos = 0
        for lo, hi in special:
            if lo > pos:
                self.starts.append(pos)
                self.cum.append(self.cum[-1] + lo - pos)
            pos = max(pos, hi)
        if pos < 1 << 24:
            self.starts.append(pos)
            self.cum.append(self.cum[-1] + (1 << 24) - pos)
        self.total = self.cum[-1]
        self.seen = bytearray(1 << 21)

    def draw(self) -> int:
        """A /24 never drawn before, as its index (address >> 8)."""
        for _ in range(1000):
            k = self.rnd.randrange(self.total)
            run = bisect.bisect_right(self.cum, k) - 1
            idx = self.starts[run] + k - self.cum[run]
            byte, bit = idx >> 3, 1 << (idx & 7)
            if not self.seen[byte] & bit:
                self.seen[byte] |= bit
                return idx
        raise RuntimeError("public IPv4 /24s exhausted")


# --------------------------------------------------------------------------- IPv6


class TreeWalk:
    """Random /48s the database places, found by walking its search tree (no record decoded)."""

    def __init__(self, mmdb: Path, rnd: random.Random) -> None:
        import maxminddb

        with maxminddb.open_database(str(mmdb)) as reader:
            meta = reader.metadata()
            self.nodes = int(meta.node_count)
            self.record_size = int(meta.record_size)
            if int(meta.ip_version) != 6:
                raise SystemExit(f"{mmdb}: an IPv4-only database has no IPv6 networks")
        self.data = mmdb.read_bytes()[: self.nodes * self.record_size // 4]
        self.rnd = rnd
        self.special = [n for n in SPECIAL_NETWORKS if n.version == 6]
        self.seen: set[int] = set()
        # node reached by the prefix 2000::/3 (bits 001)
        node = 0
        for bit in (0, 0, 1):
            node = self.child(node, bit)
        self.start = node

    def child(self, node: int, bit: int) -> int:
        d, rs = self.data, self.record_size
        if rs == 24:
            o = node * 6 + bit * 3
            return int.from_bytes(d[o : o + 3], "big")
        if rs == 28:
            o = node * 7
            if bit == 0:
                return ((d[o + 3] & 0xF0) << 20) | int.from_bytes(d[o : o + 3], "big")
            return ((d[o + 3] & 0x0F) << 24) | int.from_bytes(d[o + 4 : o + 7], "big")
        o = node * 8 + bit * 4
        return int.from_bytes(d[o : o + 4], "big")

    def draw(self) -> int:
        """A /48 never drawn before, as its top 48 bits, inside a network with a record."""
        rnd = self.rnd
        for _ in range(100_000):
            node, prefix, depth = self.start, 1, 3  # the bits so far: 001
            while node < self.nodes and depth < 128:
                first = rnd.getrandbits(1)
                nxt = self.child(node, first)
                bit = first
                if nxt == self.nodes:  # empty on that side: take the other one
                    bit = first ^ 1
                    nxt = self.child(node, bit)
                    if nxt == self.nodes:
                        break
                prefix = prefix << 1 | bit
                depth += 1
                node = nxt
            if node <= self.nodes:  # dead end: no record below
                continue
            if depth < 48:  # a network wider than /48: any /48 inside it
                prefix = prefix << (48 - depth) | rnd.getrandbits(48 - depth)
            else:
                prefix >>= depth - 48
            if prefix in self.seen:
                continue
            address = ipaddress.IPv6Address(prefix << 80)
            if any(address in n for n in self.special):
                continue
            self.seen.add(prefix)
            return prefix
        raise RuntimeError("no new IPv6 /48 found in the database")


# --------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Query:
    kind: str  # www-A, www-AAAA, SOA, NS, NX
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    cookie: bytes | None
    wire: bytes


def ecs_option(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    family = 1 if network.version == 4 else 2
    plen = network.prefixlen
    data = struct.pack("!HBB", family, plen, 0) + network.network_address.packed[: (plen + 7) // 8]
    return struct.pack("!HH", OPT_ECS, len(data)) + data


def make_query(qname: bytes, qtype: int, options: bytes) -> bytes:
    header = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 1)  # id 0, no flags, QD 1, AR 1 (the OPT)
    opt = b"\x00" + struct.pack("!HHIH", 41, UDP_SIZE, 0, len(options)) + options
    return header + qname + struct.pack("!HH", qtype, 1) + opt


def generate(n: int, *, seed: int, mmdb: Path) -> Iterator[Query]:
    """`n` queries, each with a client network no earlier query had."""
    rnd = random.Random(seed)
    v4 = PublicV4(rnd)
    v6 = TreeWalk(mmdb, rnd)
    resolvers = [rnd.randbytes(8) for _ in range(RESOLVERS)]
    www = qname_wire(SERVICE)
    apex = qname_wire(ZONE)
    tail = qname_wire(ZONE)
    for _ in range(n):
        if rnd.random() < V6_SHARE:
            network: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv6Network((v6.draw() << 80, 48))
        else:
            network = ipaddress.IPv4Network((v4.draw() << 8, 24))
        r = rnd.random()
        kind, qtype = next((k, t) for share, k, t in MIX if r < share)
        if kind.startswith("www"):
            qname = www
        elif kind == "NX":
            label = bytes(rnd.choice(NX_ALPHABET) for _ in range(12))
            qname = b"\x0c" + label + tail
        else:
            qname = apex
        options = ecs_option(network)
        cookie = None
        if rnd.random() < COOKIE_SHARE:
            cookie = resolvers[rnd.randrange(RESOLVERS)]
            options += struct.pack("!HH", OPT_COOKIE, 8) + cookie
        yield Query(kind, network, cookie, make_query(qname, qtype, options))


def write(parts: list[tuple[Path, int]], *, seed: int, mmdb: Path) -> None:
    """One stream cut into files: (path, count) in turn, so no network is in two of them."""
    queries = generate(sum(n for _, n in parts), seed=seed, mmdb=mmdb)
    for path, n in parts:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            buf = []
            for _, q in zip(range(n), queries, strict=False):
                buf.append(struct.pack("!H", len(q.wire)) + q.wire)
                if len(buf) >= 65536:
                    f.write(b"".join(buf))
                    buf.clear()
            f.write(b"".join(buf))
        tmp.replace(path)


def db_key(mmdb: Path) -> str:
    return hashlib.sha256(mmdb.read_bytes()).hexdigest()[:12]


def cached(directory: Path, counts: list[int], *, seed: int, mmdb: Path) -> list[Path]:
    """The files of one stream cut into `counts` queries each, written unless already there.

    Keyed by the counts, the seed and the database's content, so a re-run reuses them.
    """
    stem = f"stream-{'+'.join(map(str, counts))}-s{seed}-r{RESOLVERS}-{db_key(mmdb)}"
    paths = [directory / f"{stem}.{i}.bin" for i in range(len(counts))]
    if not all(p.exists() for p in paths):
        write(list(zip(paths, counts, strict=True)), seed=seed, mmdb=mmdb)
    return paths


def read(path: Path) -> Iterator[bytes]:
    """The messages of a dnsperf -B file."""
    data = path.read_bytes()
    i = 0
    while i + 2 <= len(data):
        (length,) = struct.unpack_from("!H", data, i)
        yield data[i + 2 : i + 2 + length]
        i += 2 + length


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", "--queries", type=int, default=3_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--geodb", type=Path, help="default: GeoLite2-City from maxminddb-geolite2")
    a = ap.parse_args(argv)
    write([(a.out, a.queries)], seed=a.seed, mmdb=a.geodb or geolite2_city())
    print(f"wrote {a.queries} queries to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
