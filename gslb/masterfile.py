"""A fast reader for the plain majority of master files; anything unusual goes to dnspython.

dnspython's zone reader costs about 100 µs a record here, 10 s for a 100k-record zone. Most
large zones are generated and plain: one record a line, common types, no escapes. This reader
handles exactly that (plus parentheses, comments, $ORIGIN and $TTL) and builds the same
dnspython rdata objects; on anything else it returns None, and the caller reads the file with
dnspython, which then also words any error. A test holds the two readers to the same records.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.ttl

Name = dns.name.Name
IN = dns.rdataclass.IN

# A token: a quoted string without escapes, a parenthesis, a comment, or a plain word.
_TOKEN = re.compile(r'"[^"\\]*"|[()]|;.*|[^\s;()"]+')
_NUMBER = re.compile(r"\d+$")


class WireRdata:
    """Record data kept as its wire form: addresses and text, which hold no names to compress.

    Stands in for a dnspython Rdata where a zone is built and answers are encoded (to_wire,
    to_text, equality), at a fraction of the cost: a 100k-record zone loads several times faster.
    """

    __slots__ = ("rdtype", "wire")
    rdclass = IN

    def __init__(self, rdtype: int, wire: bytes):
        self.rdtype = rdtype
        self.wire = wire

    def to_wire(self, file: Any = None, compress: Any = None, origin: Any = None, canonicalize: bool = False) -> None:
        file.write(self.wire)

    def to_rdata(self) -> dns.rdata.Rdata:
        return dns.rdata.from_wire(IN, dns.rdatatype.RdataType(self.rdtype), self.wire, 0, len(self.wire))

    def to_text(self, origin: Any = None, relativize: bool = True, **kw: Any) -> str:
        return self.to_rdata().to_text()

    def __str__(self) -> str:
        return self.to_text()

    def __getattr__(self, name: str) -> Any:
        # .address, .strings: as the dnspython rdata would have them
        return getattr(self.to_rdata(), name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, WireRdata):
            return self.rdtype == other.rdtype and self.wire == other.wire
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.rdtype, self.wire))


class NameRdata:
    """CNAME, NS, PTR and MX data: a name (compressed in answers, RFC 3597 §4), with an MX
    preference. Equal and hashed by the name in lower case, as dnspython's rdata are, without
    encoding it first."""

    __slots__ = ("_key", "preference", "rdtype", "target")
    rdclass = IN

    def __init__(self, rdtype: int, target: Name, preference: int | None = None):
        self.rdtype = rdtype
        self.target = target
        self.preference = preference
        self._key = (rdtype, preference, tuple(label.lower() for label in target.labels))

    @property
    def exchange(self) -> Name:  # MX's name for it
        return self.target

    def to_wire(self, file: Any = None, compress: Any = None, origin: Any = None, canonicalize: bool = False) -> None:
        if self.preference is not None:
            file.write(self.preference.to_bytes(2, "big"))
        self.target.to_wire(file, compress, origin, canonicalize)

    def to_text(self, origin: Any = None, relativize: bool = True, **kw: Any) -> str:
        target = self.target.choose_relativity(origin, relativize).to_text()
        return target if self.preference is None else f"{self.preference} {target}"

    def __str__(self) -> str:
        return self.to_text()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NameRdata):
            return self._key == other._key
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key)


_IPV4 = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")


def _a(reader: _Reader, args: list[str]) -> WireRdata:
    address = _one(args)
    if not _IPV4.match(address):
        raise _Unusual("A")  # dnspython words the error
    return WireRdata(dns.rdatatype.A, socket.inet_pton(socket.AF_INET, address))


def _aaaa(reader: _Reader, args: list[str]) -> WireRdata:
    address = _one(args)
    if address.count(":") < 2 or "." in address or "%" in address:
        raise _Unusual("AAAA")  # embedded IPv4 and scopes: dnspython decides
    try:
        return WireRdata(dns.rdatatype.AAAA, socket.inet_pton(socket.AF_INET6, address))
    except OSError:
        raise _Unusual("AAAA") from None


def _txt(reader: _Reader, args: list[str]) -> WireRdata:
    return WireRdata(dns.rdatatype.TXT, b"".join(bytes((len(s),)) + s for s in _strings(args)))


class _Unusual(Exception):
    """Something this reader leaves to dnspython."""


@dataclass(slots=True)
class Record:
    name: Name
    ttl: int
    rdata: dns.rdata.Rdata | WireRdata | NameRdata
    file: str
    line: int


def read(path: Path, origin: Name) -> list[Record] | None:
    """Every record of a plain master file, or None to have dnspython read it."""
    try:
        text = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError):
        return None
    upper = text.upper()
    if "\\" in text or "$INCLUDE" in upper or "$GENERATE" in upper:
        return None
    try:
        return _Reader(str(path), origin).read(text)
    except (_Unusual, dns.exception.DNSException, ValueError, IndexError):
        return None


class _Reader:
    def __init__(self, file: str, origin: Name):
        self.file = file
        self.zone_origin = origin
        self.origin = origin
        self.default_ttl: int | None = None
        self.last_owner: Name | None = None
        self.names: dict[str, Name] = {}  # for the current origin

    def name(self, text: str) -> Name:
        key = text
        name = self.names.get(key)
        if name is None:
            if text == "@":
                name = self.origin
            elif text.endswith("."):
                labels = text[:-1].split(".") if text != "." else []
                name = Name([label.encode() for label in labels] + [b""])
            else:
                name = Name([label.encode() for label in text.split(".")] + list(self.origin.labels))
            if any(not label for label in name.labels[:-1]):
                raise _Unusual("empty label")
            self.names[key] = name
        return name

    def outside(self, owner: Name, text: str) -> bool:
        # A relative name is inside the current origin, which was checked when set.
        return text.endswith(".") and not owner.is_subdomain(self.zone_origin)

    def read(self, text: str) -> list[Record]:
        records: list[Record] = []
        pending: list[str] = []  # tokens of a record spanning parentheses
        pending_line = 0
        pending_blank = False
        depth = 0
        for number, line in enumerate(text.split("\n"), 1):
            tokens = [t for t in _TOKEN.findall(line) if not t.startswith(";")]
            if not pending:
                if not tokens:
                    continue
                pending_line = number
                pending_blank = line[:1] in (" ", "\t")
            for token in tokens:
                if token == "(":
                    depth += 1
                elif token == ")":
                    depth -= 1
                    if depth < 0:
                        raise _Unusual("unbalanced parentheses")
                else:
                    pending.append(token)
            if depth == 0 and pending:
                record = self.record(pending, pending_blank, pending_line)
                if record is not None:
                    records.append(record)
                pending = []
        if depth or pending:
            raise _Unusual("unterminated record")
        return records

    def record(self, tokens: list[str], blank: bool, line: int) -> Record | None:
        first = tokens[0]
        if first.startswith("$"):
            directive = first.upper()
            if directive == "$ORIGIN" and len(tokens) == 2:
                self.origin = self.name(tokens[1])
                self.names = {}  # relative names now mean something else
                if not self.origin.is_subdomain(self.zone_origin):
                    raise _Unusual("$ORIGIN outside the zone")
                return None
            if directive == "$TTL" and len(tokens) == 2:
                self.default_ttl = dns.ttl.from_text(tokens[1])
                return None
            raise _Unusual(directive)
        pos = 0
        if blank:
            owner = self.last_owner
            if owner is None:
                raise _Unusual("no owner yet")
        else:
            owner = self.name(first)
            pos = 1
        self.last_owner = owner
        ttl = None
        for _ in range(2):  # TTL and class, in either order
            token = tokens[pos].upper()
            if token == "IN":
                pos += 1
            elif ttl is None and token[:1].isdigit():
                ttl = dns.ttl.from_text(token)
                pos += 1
        if ttl is None:
            if self.default_ttl is None:
                raise _Unusual("no TTL")  # dnspython knows the RFC 2308 fallbacks
            ttl = self.default_ttl
        rdtype = dns.rdatatype.from_text(tokens[pos])
        if self.outside(owner, first if not blank else "@"):
            raise _Unusual("outside the origin")  # dnspython skips these; the caller reports
        make = _MAKERS.get(rdtype)
        args = tokens[pos + 1 :]
        if make is not None:
            rdata = make(self, args)
        elif rdtype in (dns.rdatatype.SOA, dns.rdatatype.SRV, dns.rdatatype.CAA):
            rdata = dns.rdata.from_text(IN, rdtype, " ".join(args), origin=self.origin, relativize=False)
        else:
            raise _Unusual(dns.rdatatype.to_text(rdtype))
        return Record(owner, ttl, rdata, self.file, line)


def _one(args: list[str]) -> str:
    if len(args) != 1:
        raise _Unusual("one argument expected")
    return args[0]


def _strings(args: list[str]) -> tuple[bytes, ...]:
    out = []
    for arg in args:
        raw = arg[1:-1] if arg.startswith('"') else arg
        if len(raw) > 255:
            raise _Unusual("string too long")
        out.append(raw.encode())
    if not out:
        raise _Unusual("no strings")
    return tuple(out)


def _mx(reader: _Reader, args: list[str]) -> NameRdata:
    if len(args) != 2 or not _NUMBER.match(args[0]) or int(args[0]) > 65535:
        raise _Unusual("MX")
    return NameRdata(dns.rdatatype.MX, reader.name(args[1]), int(args[0]))


_MAKERS: dict[int, Callable[[_Reader, list[str]], dns.rdata.Rdata | WireRdata | NameRdata]] = {
    dns.rdatatype.A: _a,
    dns.rdatatype.AAAA: _aaaa,
    dns.rdatatype.CNAME: lambda r, a: NameRdata(dns.rdatatype.CNAME, r.name(_one(a))),
    dns.rdatatype.NS: lambda r, a: NameRdata(dns.rdatatype.NS, r.name(_one(a))),
    dns.rdatatype.PTR: lambda r, a: NameRdata(dns.rdatatype.PTR, r.name(_one(a))),
    dns.rdatatype.MX: _mx,
    dns.rdatatype.TXT: _txt,
}
