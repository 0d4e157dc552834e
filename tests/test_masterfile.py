"""The master-file reader reads what dnspython's zone reader reads, and words errors as it does."""

from __future__ import annotations

import random
from pathlib import Path

import dns.exception
import dns.name
import dns.zone
import pytest

from gslb.dns import masterfile

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
PLAIN_LINES = [2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20]  # where each record starts

Records = dict[tuple[str, int], tuple[int, set[str]]]


def _rrsets(records: list[masterfile.Record]) -> Records:
    """Records as RRsets: owner (lower case) and type -> TTL (the lowest, as a zone keeps it), rdata."""
    out: Records = {}
    for r in records:
        key = (r.name.to_text().lower(), r.rdata.rdtype)
        ttl, rdatas = out.get(key, (r.ttl, set()))
        out[key] = (min(ttl, r.ttl), rdatas | {r.rdata.to_text()})
    return out


def _dnspython(path: Path, monkeypatch: pytest.MonkeyPatch) -> Records:
    """dnspython's own reading of the file, through its public zone API ($INCLUDE from the file's directory)."""
    monkeypatch.chdir(path.parent)
    zone = dns.zone.from_file(str(path), ORIGIN, relativize=False, check_origin=False, allow_include=True)
    return {
        (name.to_text().lower(), rds.rdtype): (rds.ttl, {rd.to_text() for rd in rds})
        for name, node in zone.nodes.items()
        for rds in node
    }


def _ours(path: Path) -> tuple[list[masterfile.Record], list[str]]:
    records, problems = masterfile.read(path, ORIGIN)
    return records, [str(p) for p in problems]


def test_plain_file_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fast.test.zone"
    path.write_text(PLAIN)
    records, problems = _ours(path)
    assert problems == []
    assert len(records) == 16
    assert _rrsets(records) == _dnspython(path, monkeypatch)
    assert [r.line for r in records] == PLAIN_LINES
    assert all(r.file == str(path) for r in records)


def test_generated_zone_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    lines = ["$TTL 300", "@ SOA ns hostmaster 1 2 3 4 5", "@ NS ns", "ns A 127.0.0.1"]
    for i in range(2000):
        kind = rng.choice(["A", "AAAA", "TXT", "MX", "CNAME"])
        rdata = {
            "A": f"127.{i >> 8 & 255}.{i & 255}.1",
            "AAAA": f"2001:db8::{i:x}",
            "TXT": f'"t {i}"',
            "MX": f"{i % 50} mx{i}",
            "CNAME": f"c{i}.other.test.",
        }[kind]
        lines.append(f"h{i} {rng.choice(['', '60 ', 'IN ', '60 IN '])}{kind} {rdata}")
    path = tmp_path / "fast.test.zone"
    path.write_text("\n".join(lines) + "\n")
    records, problems = _ours(path)
    assert problems == []
    assert _rrsets(records) == _dnspython(path, monkeypatch)
    assert [r.line for r in records] == list(range(2, 2005))


BEYOND_PLAIN = {
    "escapes": 'esc TXT "a \\"quoted\\" word" "semi\\;colon" \\065bc\nesc\\.dot A 127.0.0.9\n'
    'sp\\032ace TXT ( "two"\n  "lines" )\n',
    "include": "$INCLUDE other.inc\n$INCLUDE other.inc sub2.fast.test.\nafter A 127.0.0.8\n",
    "generate": "$GENERATE 1-4 h$ A 127.0.1.$\n$GENERATE 0-30/10 r${1,3,d} 90 IN CNAME x${0,2,x}.other.test.\n"
    "$GENERATE 1-2 $$h$ TXT n$\n",
    "rfc3597": "u TYPE65534 \\# 4 0a000001\nv TYPE65535 \\# 0\n",
    "no-ttl": "NO-TTL",  # no $TTL: the SOA's MINIMUM, then the last TTL given (RFC 2308 §4)
    "types": "ds DS 60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118\n"
    "sshfp SSHFP 1 1 0123456789abcdef0123456789abcdef01234567\n"
    'naptr NAPTR 100 10 "u" "E2U+sip" "!^.*$!sip:x@example!" .\nv6 AAAA ::ffff:127.0.0.1\n',
    "idna": "bücher A 127.0.0.7\n",
    "origins": "$ORIGIN other.test.\nhidden.fast.test. A 127.0.0.6\n$ORIGIN fast.test.\n"
    "$ORIGIN deeper\nx A 127.0.0.5\n",
}


@pytest.mark.parametrize("case", sorted(BEYOND_PLAIN))
def test_the_rest_of_the_format_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    extra = BEYOND_PLAIN[case]
    (tmp_path / "other.inc").write_text("inc1 A 127.0.0.31\n  TXT included\n$TTL 5\ninc2 A 127.0.0.32\n")
    path = tmp_path / "fast.test.zone"
    path.write_text(
        PLAIN.replace("$TTL 300\n", "").replace("ns1 A", "ns1 600 A") if extra == "NO-TTL" else PLAIN + extra
    )
    records, problems = _ours(path)
    assert problems == []
    assert _rrsets(records) == _dnspython(path, monkeypatch)
    assert len(records) >= 16


def test_records_outside_the_zone_are_reported_where_dnspython_skips_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fast.test.zone"
    path.write_text(PLAIN + 'out.example.org. A 127.0.0.1\n  TXT "also outside"\n$ORIGIN example.org.\nx A 1.2.3.4\n')
    records, problems = _ours(path)
    assert _rrsets(records) == _dnspython(path, monkeypatch)
    assert problems == [
        f"{path}:21: outside the zone fast.test.: out.example.org. A 127.0.0.1",
        f'{path}:22: outside the zone fast.test.: TXT "also outside"',
        f"{path}:24: outside the zone fast.test.: x A 1.2.3.4",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "x CH TXT hi",
        "bad A 999.1.1.1",
        "bad AAAA 1:2",
        "mx MX mail 10",
        "srv SRV 1 2 port x",
        "nope FOO bar",
        'txt TXT "unterminated',
        "e A",
        "$TTL forever",
        "$NOPE x",
    ],
)
def test_errors_are_worded_as_dnspython_words_them(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "fast.test.zone"
    path.write_text(PLAIN + bad + "\n")
    records, problems = _ours(path)
    assert len(records) == 16  # the rest of the file is read
    with pytest.raises(dns.exception.SyntaxError) as raised:
        dns.zone.from_file(str(path), ORIGIN, relativize=False, check_origin=False)
    # dnspython says "file:line: detail" (its line may be the next one, where it noticed).
    detail = str(raised.value).split(": ", 1)[1].rstrip(".")
    assert problems == [f"{path}:21: {detail}: {bad}"]
