"""RFC 1035 master files, read in one pass: every record with the file and line it starts on,
and every syntax error of a file (each `file:line: message`), the rest of the file still read.

The whole format (`$ORIGIN`, `$TTL`, `$INCLUDE` relative to the zone file's directory,
`$GENERATE`, parentheses, comments, escapes, omitted owner/TTL/class, RFC 3597 `\\# len hex`),
with dnspython's public pieces doing what they do well: names with escapes or IDNA
(`dns.name.from_text`), the rdata of every type (`dns.rdata.from_text`), TTLs and ranges.
The common data (A, AAAA, TXT, CNAME, NS, PTR, MX without escapes) is built here directly, as
light objects that encode as dnspython's do: a 100k-record zone reads in about a second.
dnspython's defaulting rules are followed (RFC 2308 `$TTL`, else the last TTL, else the
SOA's MINIMUM); a test holds this reader to dnspython's records, file by file.  The text
itself (lines, tokens, entries, $GENERATE templates) is gslb.dns.mastertext's.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.exception
import dns.grange
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.ttl

from gslb import inputs
from gslb.dns.mastertext import entries, file_lines, ident, line_tokens, substitute, syntax_error

Name = dns.name.Name
IN = dns.rdataclass.IN

MAX_PROBLEMS_PER_FILE = 100  # listed; the rest of a garbage file is counted, not listed
MAX_INCLUDE_DEPTH = 20
MAX_GENERATED = 1_000_000  # records from one $GENERATE: a typo in a range must not exhaust memory

_NUMBER = re.compile(r"\d+$")
_IPV4 = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


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


class _Unusual(Exception):
    """Data a maker leaves to dnspython's parser (which then also words any error)."""


class _Outside(Exception):
    """A record whose owner is outside the zone: reported, and the entry skipped."""


@dataclass(slots=True)
class Record:
    name: Name
    ttl: int
    rdata: dns.rdata.Rdata | WireRdata | NameRdata
    file: str
    line: int


def read(path: Path, origin: Name) -> tuple[list[Record], list[Problem]]:
    """Every record of a master file and the files it includes, and every problem found.

    Each file is opened once; a bad entry (a line, or lines in parentheses) is reported and
    skipped, and reading goes on.  Included names are resolved against `path`'s directory
    (as named does, without chdir) and recorded with gslb.inputs.  A record outside the zone
    is reported, not kept.
    """
    reader = _Reader(origin, path.parent)
    inputs.read(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [Problem(str(path), 1, f"cannot read: {exc}")]
    reader.read_file(str(path), data, [os.path.realpath(path)])
    if reader.unlisted:
        reader.problems.append(Problem(str(path), 0, f"{reader.unlisted} more problems not listed"))
    return reader.records, reader.problems


@dataclass(slots=True)
class _State:
    """What an $INCLUDE changes and the end of the included file restores (as dnspython does)."""

    origin: Name
    last_ttl: int | None = None
    default_ttl: int | None = None
    default_from_soa: bool = False


class _Reader:
    def __init__(self, zone_origin: Name, base: Path):
        self.zone_origin = zone_origin
        self.base = base  # $INCLUDE names are relative to the zone file's directory, at any depth
        self.records: list[Record] = []
        self.problems: list[Problem] = []
        self.unlisted = 0
        self._names: dict[Name, dict[str, tuple[Name, bool]]] = {}  # per origin: text -> (name, inside)
        self._ttls: dict[str, int | None] = {}
        self._classes: dict[str, int | None] = {}
        self._types: dict[str, dns.rdatatype.RdataType] = {}
        self._use(_State(zone_origin))
        self.last: tuple[Name, bool] = (zone_origin, True)  # the owner a blank owner repeats

    def _use(self, state: _State) -> None:
        self.state = state
        self.names = self._names.setdefault(state.origin, {})
        self.origin_inside = state.origin.is_subdomain(self.zone_origin)

    def problem(self, file: str, line: int, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS_PER_FILE:
            self.problems.append(Problem(file, line, message))
        else:
            self.unlisted += 1

    def read_file(self, file: str, data: bytes, chain: list[str]) -> None:
        lines, not_utf8 = file_lines(data)
        for number in not_utf8:
            self.problem(file, number, "not valid UTF-8")
        for line, blank, entry in entries(lines):
            try:
                if isinstance(entry, dns.exception.DNSException):
                    raise entry
                if not blank and entry[0][0] == "$":
                    self.directive(entry, file, line, chain)
                else:
                    self.record(entry, blank, file, line)
            except _Outside:
                self.problem(file, line, f"outside the zone {self.zone_origin}: {lines[line - 1].strip()}")
            except (dns.exception.DNSException, ValueError) as exc:
                message = (str(exc) or "syntax error").rstrip(".")
                shown = lines[line - 1].strip()
                self.problem(file, line, f"{message}: {shown}" if shown else message)

    # -- names, TTLs, classes and types, each text looked at once -------------------------------

    def name(self, text: str) -> tuple[Name, bool]:
        """The name `text` means here, and whether it is inside the zone."""
        known = self.names.get(text)
        if known is None:
            known = self.names[text] = self._located(text)
        return known

    def _located(self, text: str) -> tuple[Name, bool]:
        if text[0] == '"':
            raise syntax_error("expecting an identifier")
        if text == "@":
            return self.state.origin, self.origin_inside
        name = _name(text, self.state.origin)
        relative = not text.endswith(".") and "\\" not in text
        return name, (relative and self.origin_inside) or name.is_subdomain(self.zone_origin)

    def _ttl(self, text: str) -> int | None:
        if text not in self._ttls:
            try:
                self._ttls[text] = dns.ttl.from_text(text)
            except dns.ttl.BadTTL:
                self._ttls[text] = None
        return self._ttls[text]

    def _class(self, text: str) -> int | None:
        """The class `text` names, None when it names none (the type comes next)."""
        if text not in self._classes:
            rdclass: int | None
            try:
                rdclass = dns.rdataclass.from_text(text)
            except dns.exception.SyntaxError:
                raise
            except Exception:
                rdclass = None
            self._classes[text] = rdclass
        rdclass = self._classes[text]
        if rdclass is not None and rdclass != IN:
            raise syntax_error("RR class is not zone's class")
        return rdclass

    def _type(self, text: str) -> dns.rdatatype.RdataType:
        rdtype = self._types.get(text)
        if rdtype is None:
            try:
                rdtype = self._types[text] = dns.rdatatype.from_text(text)
            except Exception:
                raise syntax_error(f"unknown rdatatype '{text}'") from None
        return rdtype

    def _implicit_ttl(self) -> int | None:
        # RFC 2308: $TTL; else the last TTL given (RFC 1035 §5.1), which also beats the SOA's MINIMUM.
        state = self.state
        if state.last_ttl is not None and (state.default_ttl is None or state.default_from_soa):
            return state.last_ttl
        return state.default_ttl

    def _ttl_class(self, tokens: list[str], pos: int) -> tuple[int | None, int]:
        """[TTL] [class] in either order from tokens[pos]: the TTL given (or None) and where the type is."""
        ttl = self._ttl(ident(tokens, pos))
        if ttl is not None:
            pos += 1
        if self._class(ident(tokens, pos)) is not None:
            pos += 1
            if ttl is None:
                ttl = self._ttl(ident(tokens, pos))
                if ttl is not None:
                    pos += 1
        if ttl is not None:
            self.state.last_ttl = ttl
        return ttl, pos

    # -- entries ---------------------------------------------------------------------------------

    def record(self, tokens: list[str], blank: bool, file: str, line: int) -> None:
        if not blank:
            self.last = self.name(tokens[0])
        name, inside = self.last
        if not inside:
            raise _Outside
        given, pos = self._ttl_class(tokens, 0 if blank else 1)
        ttl = given if given is not None else self._implicit_ttl()
        rdtype = self._type(ident(tokens, pos))
        rdata = self.rdata(rdtype, tokens[pos + 1 :])
        if self.state.default_ttl is None and isinstance(rdata, dns.rdtypes.ANY.SOA.SOA):
            # Without $TTL, the SOA's MINIMUM is the default (the pre-RFC 2308 rule dnspython keeps).
            self.state.default_ttl, self.state.default_from_soa = rdata.minimum, True
            ttl = ttl if ttl is not None else self._implicit_ttl()
        if ttl is None:
            raise syntax_error("Missing default TTL value")
        self.records.append(Record(name, ttl, rdata, file, line))

    def rdata(self, rdtype: dns.rdatatype.RdataType, args: list[str]) -> dns.rdata.Rdata | WireRdata | NameRdata:
        make = _MAKERS.get(rdtype)
        if make is not None:
            try:
                return make(self, args)
            except (_Unusual, dns.exception.DNSException, ValueError, OSError):
                pass  # dnspython's parser decides, and words any error
        try:
            return dns.rdata.from_text(IN, rdtype, " ".join(args), self.state.origin, False, self.zone_origin)
        except dns.exception.SyntaxError:
            raise
        except Exception as exc:  # any failure of a type's parser is a syntax error of the line
            raise syntax_error(f"caught exception {type(exc)}: {exc}") from None

    def directive(self, tokens: list[str], file: str, line: int, chain: list[str]) -> None:
        word, args = tokens[0].upper(), tokens[1:]
        if word == "$ORIGIN":
            if len(args) != 1:
                raise syntax_error("$ORIGIN takes one name")
            self._use(replace(self.state, origin=self._located(args[0])[0]))
        elif word == "$TTL":
            if len(args) != 1 or args[0][0] == '"':
                raise syntax_error("bad $TTL")
            self.state.default_ttl, self.state.default_from_soa = dns.ttl.from_text(args[0]), False
        elif word == "$INCLUDE":
            self.include(args, file, line, chain)
        elif word == "$GENERATE":
            self.generate(args, file, line)
        else:
            raise syntax_error(f"zone file directive '{word}' is not allowed")

    def include(self, args: list[str], file: str, line: int, chain: list[str]) -> None:
        """`$INCLUDE file [origin]`: the file read in place, with the state restored after it."""
        if not 1 <= len(args) <= 2:
            raise syntax_error("$INCLUDE takes a file name and an optional origin")
        name = args[0][1:-1] if args[0][0] == '"' else args[0]
        origin = self._located(args[1])[0] if len(args) == 2 else self.state.origin
        path = Path(name) if os.path.isabs(name) else self.base / name
        inputs.read(path)  # a missing one too: its appearing is a change
        real = os.path.realpath(path)
        if real in chain or len(chain) > MAX_INCLUDE_DEPTH:
            self.problem(file, line, f"$INCLUDE {name}: {path} includes itself")
            return
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.problem(file, line, f"$INCLUDE {name}: cannot read {path}: {exc.strerror}")
            return
        saved, last = self.state, self.last
        self._use(replace(saved, origin=origin))
        try:
            self.read_file(str(path), data, [*chain, real])
        finally:
            self._use(saved)
            self.last = last

    def generate(self, args: list[str], file: str, line: int) -> None:
        """`$GENERATE range lhs [ttl] [class] type rhs`, as BIND reads it."""
        try:
            start, stop, step = dns.grange.from_text(ident(args, 0))
        except Exception:
            raise syntax_error("bad $GENERATE range") from None
        if (stop - start) // step >= MAX_GENERATED:
            raise syntax_error(f"$GENERATE range of more than {MAX_GENERATED} records")
        lhs = ident(args, 1)
        given, pos = self._ttl_class(args, 2)
        ttl = given if given is not None else self._implicit_ttl()
        if ttl is None:
            raise syntax_error("Missing default TTL value")
        rdtype = self._type(ident(args, pos))
        if len(args) != pos + 2:
            raise syntax_error("$GENERATE takes one rhs (quote it if it has spaces)")
        rhs = args[pos + 1][1:-1] if args[pos + 1][0] == '"' else args[pos + 1]
        for counter in range(start, stop + 1, step):
            self.last = name, inside = self._located(substitute(lhs, counter))
            if not inside:
                raise _Outside
            rdata = self.rdata(rdtype, line_tokens(substitute(rhs, counter)))
            self.records.append(Record(name, ttl, rdata, file, line))


def _name(text: str, origin: Name) -> Name:
    if "\\" in text or not text.isascii():
        return dns.name.from_text(text, origin)  # escapes, IDNA
    tail: tuple[bytes, ...]
    if text.endswith("."):
        labels, tail = (text[:-1].split(".") if text != "." else []), (b"",)
    else:
        labels, tail = text.split("."), origin.labels
    if "" in labels:
        return dns.name.from_text(text, origin)  # raises EmptyLabel, as dnspython words it
    return Name([label.encode() for label in labels] + list(tail))


# -- the common types, built without dnspython's parser ------------------------------------------


def _one(args: list[str]) -> str:
    if len(args) != 1:
        raise _Unusual("one argument expected")
    return args[0]


def _a(reader: _Reader, args: list[str]) -> WireRdata:
    address = _one(args)
    if not _IPV4.match(address):
        raise _Unusual("A")
    return WireRdata(dns.rdatatype.A, socket.inet_pton(socket.AF_INET, address))


def _aaaa(reader: _Reader, args: list[str]) -> WireRdata:
    address = _one(args)
    if address.count(":") < 2 or "." in address or "%" in address:
        raise _Unusual("AAAA")  # embedded IPv4 and scopes: dnspython decides
    return WireRdata(dns.rdatatype.AAAA, socket.inet_pton(socket.AF_INET6, address))


def _txt(reader: _Reader, args: list[str]) -> WireRdata:
    out = []
    for arg in args:
        raw = arg[1:-1] if arg[0] == '"' else arg
        if len(raw) > 255 or "\\" in raw or not raw.isascii():
            raise _Unusual("TXT")
        out.append(bytes((len(raw),)) + raw.encode())
    if not out:
        raise _Unusual("no strings")
    return WireRdata(dns.rdatatype.TXT, b"".join(out))


def _target(reader: _Reader, text: str) -> Name:
    if text[0] == '"':
        raise _Unusual("quoted name")
    return reader.name(text)[0]


def _mx(reader: _Reader, args: list[str]) -> NameRdata:
    if len(args) != 2 or not _NUMBER.match(args[0]) or int(args[0]) > 65535:
        raise _Unusual("MX")
    return NameRdata(dns.rdatatype.MX, _target(reader, args[1]), int(args[0]))


_MAKERS: dict[int, Callable[[_Reader, list[str]], WireRdata | NameRdata]] = {
    dns.rdatatype.A: _a,
    dns.rdatatype.AAAA: _aaaa,
    dns.rdatatype.CNAME: lambda r, a: NameRdata(dns.rdatatype.CNAME, _target(r, _one(a))),
    dns.rdatatype.NS: lambda r, a: NameRdata(dns.rdatatype.NS, _target(r, _one(a))),
    dns.rdatatype.PTR: lambda r, a: NameRdata(dns.rdatatype.PTR, _target(r, _one(a))),
    dns.rdatatype.MX: _mx,
    dns.rdatatype.TXT: _txt,
}
