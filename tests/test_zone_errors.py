"""Every syntax error of a zone file, found in one read of each file, each at its own file:line."""

from __future__ import annotations

import builtins
import io
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import dns.name
import pytest

from gslb.dns import masterfile, zones
from gslb.inputs import recording
from tests.conftest import EXAMPLE_ZONES

ORIGIN = dns.name.from_text("err.test.")
HEAD = "$ORIGIN err.test.\n$TTL 60\n@ SOA ns hostmaster ( 1 7200\n    1800 1209600 300 )\n  NS ns\nns A 127.0.0.1\n"


class Reads:
    """Counts the files opened (every way Python opens one goes through io.open) and the reader's runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.opened: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        real_open, real_read = io.open, masterfile.read

        def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, os.PathLike)):
                self.opened[os.fspath(file)] += 1
            return real_open(file, *args, **kwargs)

        def counting_read(path: Path, origin: Any) -> Any:
            self.runs[str(path)] += 1
            return real_read(path, origin)

        monkeypatch.setattr(io, "open", counting_open)
        monkeypatch.setattr(builtins, "open", counting_open)
        monkeypatch.setattr(masterfile, "read", counting_read)


def _load(directory: Path) -> list[str]:
    with pytest.raises(zones.ZoneError) as raised:
        zones.load_zones(directory)
    lines = str(raised.value).splitlines()
    assert lines == [str(p) for p in raised.value.problems]
    return lines


def test_every_error_of_a_file_in_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = tmp_path / "err.test.zone"
    zone.write_text(
        HEAD  # 1-6
        + "a A 999.1.2.3\n"  # 7: a bad address
        "ok1 A 127.0.0.2\n"
        "b AAAA not-an-address ; comment\n"  # 9
        "mx MX ( 10 ; preference\n"  # 10: a record over three lines, bad on its last
        "   mail\n"
        "   extra )\n"
        "ok2 A 127.0.0.3\n"
        "c FOO bar\n"  # 14: an unknown type
        "$GENERATE 1-3 g$ A 127.0.0.$\n"  # fine
        "$GENERATE 1-3 h$ A 127.0.0.${0,3,q}\n"  # 16: a bad modifier
        "d CH A 127.0.0.1\n"  # 17: another class
        "e A 127.0.0.4\n"
        "e CNAME ok1\n"  # 19: CNAME and other data, found after the syntax errors
    )
    reads = Reads(monkeypatch)
    problems = _load(tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{zone}:{line}" for line in (7, 9, 10, 14, 16, 17, 19)]
    assert problems[0] == f"{zone}:7: Text input is malformed: a A 999.1.2.3"
    assert problems[1] == f"{zone}:9: Text input is malformed: b AAAA not-an-address ; comment"
    assert problems[2] == f'{zone}:10: expected EOL or EOF, got 3 "extra": mx MX ( 10 ; preference'
    assert problems[3] == f"{zone}:14: unknown rdatatype 'FOO': c FOO bar"
    assert problems[4].endswith("invalid $GENERATE modifier: $GENERATE 1-3 h$ A 127.0.0.${0,3,q}")
    assert problems[5] == f"{zone}:17: RR class is not zone's class: d CH A 127.0.0.1"
    assert problems[6] == f"{zone}:19: e.err.test. has a CNAME and other data (A)"
    assert reads.runs == {str(zone): 1}
    assert reads.opened[str(zone)] == 1


def test_records_around_the_errors_are_all_read(tmp_path: Path) -> None:
    zone = tmp_path / "err.test.zone"
    zone.write_text(HEAD + 'a A 999.1.2.3\nok1 A 127.0.0.2\n$GENERATE 1-3 g$ A 127.0.0.$\nb A\nok2 TXT "x"\n')
    records, problems = masterfile.read(zone, ORIGIN)
    assert [(p.line, p.message) for p in problems] == [
        (7, "Text input is malformed: a A 999.1.2.3"),
        (10, "expecting an identifier: b A"),
    ]
    names = [r.name.to_text() for r in records]
    assert names == [
        "err.test.",
        "err.test.",
        "ns.err.test.",
        "ok1.err.test.",
        "g1.err.test.",
        "g2.err.test.",
        "g3.err.test.",
        "ok2.err.test.",
    ]
    assert [r.line for r in records] == [3, 5, 6, 8, 9, 9, 9, 11]


def test_an_error_in_an_included_file_is_at_that_files_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "hosts").mkdir()
    inner = tmp_path / "hosts" / "inner.inc"
    inner.write_text("i1 A 127.0.0.41\n\ni2 A 127.0.0.300\n")  # 3: bad
    hosts = tmp_path / "hosts" / "hosts.inc"
    hosts.write_text("h1 A 127.0.0.21\nh2 A 999.0.0.1\n$INCLUDE hosts/inner.inc\nh3 AAAA ::zz\n")  # 2 and 4: bad
    zone = tmp_path / "err.test.zone"
    zone.write_text(HEAD + "$INCLUDE hosts/hosts.inc\nafter A 127.0.0.5\nafter2 A 1.2.3\n")  # 9: bad, after it
    reads = Reads(monkeypatch)
    with recording() as recorder:
        problems = _load(tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == [f"{hosts}:2", f"{inner}:3", f"{hosts}:4", f"{zone}:9"]
    assert problems[1] == f"{inner}:3: Text input is malformed: i2 A 127.0.0.300"
    assert reads.runs == {str(zone): 1}
    assert {name: reads.opened[str(name)] for name in (zone, hosts, inner)} == {zone: 1, hosts: 1, inner: 1}
    assert {zone, hosts, inner} <= set(recorder.inputs().files)


def test_included_files_are_read_with_their_own_lines(tmp_path: Path) -> None:
    (tmp_path / "hosts.inc").write_text('; hosts\n\nh1 A 127.0.0.21\n  TXT "first host"\n')
    zone = tmp_path / "err.test.zone"
    zone.write_text(HEAD + "$INCLUDE hosts.inc\nafter A 127.0.0.5\n")
    records, problems = masterfile.read(zone, ORIGIN)
    assert problems == []
    where = [(Path(r.file).name, r.line, r.name.to_text()) for r in records[3:]]
    assert where == [
        ("hosts.inc", 3, "h1.err.test."),
        ("hosts.inc", 4, "h1.err.test."),
        ("err.test.zone", 8, "after.err.test."),
    ]


def test_an_include_cycle_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "a.inc").write_text("a A 127.0.0.1\n$INCLUDE b.inc\n")
    (tmp_path / "b.inc").write_text("b A 127.0.0.2\n$INCLUDE a.inc\n")
    zone = tmp_path / "err.test.zone"
    zone.write_text(HEAD + "$INCLUDE a.inc\n")
    problems = _load(tmp_path)
    assert problems == [f"{tmp_path / 'b.inc'}:2: $INCLUDE a.inc: {tmp_path / 'a.inc'} includes itself"]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("x ( A\n 127.0.0.1\n", 7, "unbalanced parentheses: x ( A"),
        ("x A 127.0.0.1 )\ny A 127.0.0.2\n", 7, "unbalanced parentheses: x A 127.0.0.1 )"),
        ('x TXT "no end\ny A 127.0.0.2\n', 7, 'newline in quoted string: x TXT "no end'),
        ("x TXT a\\\ny A 127.0.0.2\n", 7, "Text input ended unexpectedly: x TXT a\\"),
        ("bad..name A 127.0.0.1\n", 7, "A DNS label is empty: bad..name A 127.0.0.1"),
        (
            "$GENERATE 1-5000000 g$ A 127.0.0.1\n",
            7,
            "$GENERATE range of more than 1000000 records: $GENERATE 1-5000000 g$ A 127.0.0.1",
        ),
        ("$INCLUDE\n", 7, "$INCLUDE takes a file name and an optional origin: $INCLUDE"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, text: str, line: int, message: str) -> None:
    zone = tmp_path / "err.test.zone"
    zone.write_text(HEAD + text)
    records, problems = masterfile.read(zone, ORIGIN)
    assert [(p.line, p.message) for p in problems][:1] == [(line, message)]
    assert len(records) >= 3  # the head is read whatever follows


def test_a_line_that_is_not_utf8_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    zone = tmp_path / "err.test.zone"
    zone.write_bytes(HEAD.encode() + b'x TXT "caf\xe9"\ny A 127.0.0.2\n')
    records, problems = masterfile.read(zone, ORIGIN)
    assert [str(p) for p in problems] == [f"{zone}:7: not valid UTF-8"]
    assert records[-1].name.to_text() == "y.err.test."


def test_a_garbage_file_lists_a_bounded_number_of_problems(tmp_path: Path) -> None:
    zone = tmp_path / "err.test.zone"
    zone.write_text(HEAD + "".join(f"x{i} A {i}\n" for i in range(1000)))
    _, problems = masterfile.read(zone, ORIGIN)
    assert len(problems) == masterfile.MAX_PROBLEMS_PER_FILE + 1
    assert [p.line for p in problems[:3]] == [7, 8, 9]
    assert str(problems[-1]) == f"{zone}:0: {1000 - masterfile.MAX_PROBLEMS_PER_FILE} more problems not listed"


def test_a_missing_zone_file_is_one_problem(tmp_path: Path) -> None:
    records, problems = masterfile.read(tmp_path / "none.zone", ORIGIN)
    assert records == [] and len(problems) == 1
    assert problems[0].line == 1 and problems[0].message.startswith("cannot read: ")


def test_mangled_zone_files_give_problems_never_exceptions(tmp_path: Path) -> None:
    """Random edits of the example zone (quotes, escapes, parentheses, directives): every outcome is
    records and problems at lines of the file, never an exception out of the reader."""
    base = (EXAMPLE_ZONES / "example.com.zone").read_bytes() + b"$GENERATE 1-3 g$ A 10.0.0.$\n$INCLUDE h.inc\n"
    (tmp_path / "h.inc").write_bytes(b"h1 A 127.0.0.1\n")
    zone = tmp_path / "example.com.zone"
    alphabet = b' \t\n()";\\$@.{}0123456789aAxX#-/,\xff'
    rng = random.Random(7)
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.choice(alphabet)
            else:
                data.insert(at, rng.choice(alphabet))
        zone.write_bytes(bytes(data))
        _, problems = zones.load_zone(zone)
        lines = data.count(b"\n") + 1
        assert all(0 <= p.line <= lines for p in problems if p.file == str(zone)), problems
