"""The fast master-file reader and dnspython's read the same records, or the fast one declines."""

from __future__ import annotations

import random
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.tokenizer
import dns.zonefile
import pytest

from gslb import masterfile, zones

ORIGIN = dns.name.from_text("fast.test.")

PLAIN = """$TTL 300
@   IN SOA ns1 hostmaster ( 2026112501 ; serial
        7200 1800 1209600 60 )
    IN NS ns1
    NS  ns2.other.test.
ns1 A 127.0.0.1
ns1 3600 IN AAAA ::1
www IN 60 A 127.0.0.2
MiXeD A 127.0.0.3
txt TXT "one" "two; three" "" unquoted
mx  MX 10 mail
    MX 20 mail.other.test.
alias CNAME www
ptr PTR www.fast.test.
_sip._tcp SRV 10 60 5060 www
@ CAA 0 issue "ca.example"
$ORIGIN sub.fast.test.
deep A 127.0.0.4
$TTL 1h
later A 127.0.0.5
"""

DECLINED = [
    'esc TXT "a \\"quoted\\" word"\n',  # escapes
    "$INCLUDE other.zone\n",
    "$GENERATE 1-3 h$ A 127.0.0.$\n",
    "u TYPE65534 \\# 4 0a000001\n",
    "x CH TXT hi\n",
    "NO-TTL",  # no $TTL at all: dnspython's RFC 2308 rules decide
    "out.example.org. A 127.0.0.1\n",  # outside the zone
    "ds DS 1 2 3 abcd\n",  # a type this reader leaves to dnspython
    "bad A 999.1.1.1\n",
]


def _dnspython(path: Path) -> list[tuple[str, int, str, int]]:
    collector = zones._Collector(ORIGIN)
    reader = dns.zonefile.Reader(dns.tokenizer.Tokenizer(path.read_text(), filename=str(path)),
                                 dns.rdataclass.IN, collector, allow_include=True)  # type: ignore[arg-type]
    collector.watch(reader)
    reader.read()
    return sorted((r.name.to_text(), r.ttl, r.rdata.to_text(), r.line) for r in collector.records)


def _fast(path: Path) -> list[tuple[str, int, str, int]] | None:
    records = masterfile.read(path, ORIGIN)
    if records is None:
        return None
    return sorted((r.name.to_text(), r.ttl, r.rdata.to_text(), r.line) for r in records)


def test_plain_file_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "fast.test.zone"
    path.write_text(PLAIN)
    fast = _fast(path)
    assert fast is not None
    assert fast == _dnspython(path)
    assert len(fast) == 16


def test_generated_zone_reads_the_same(tmp_path: Path) -> None:
    rng = random.Random(5)
    lines = ["$TTL 300", "@ SOA ns hostmaster 1 2 3 4 5", "@ NS ns", "ns A 127.0.0.1"]
    for i in range(2000):
        kind = rng.choice(["A", "AAAA", "TXT", "MX", "CNAME"])
        rdata = {"A": f"127.{i >> 8 & 255}.{i & 255}.1", "AAAA": f"2001:db8::{i:x}", "TXT": f'"t {i}"',
                 "MX": f"{i % 50} mx{i}", "CNAME": f"c{i}.other.test."}[kind]
        lines.append(f"h{i} {rng.choice(['', '60 ', 'IN ', '60 IN '])}{kind} {rdata}")
    path = tmp_path / "fast.test.zone"
    path.write_text("\n".join(lines) + "\n")
    fast = _fast(path)
    assert fast is not None and fast == _dnspython(path)


@pytest.mark.parametrize("extra", DECLINED)
def test_unusual_files_go_to_dnspython(tmp_path: Path, extra: str) -> None:
    path = tmp_path / "fast.test.zone"
    path.write_text(PLAIN.replace("$TTL 300\n", "") if extra == "NO-TTL" else PLAIN + extra)
    assert _fast(path) is None
