"""DNS wire format of queries: a hand parser for the header, question and OPT, and reply framing."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
OPCODE_MASK = 0x7800

# RCODEs (RFC 1035, RFC 6891 for the extended BADVERS).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA, TYPE_OPT = 1, 2, 5, 6, 28, 41
TYPE_DS, TYPE_IXFR, TYPE_AXFR, TYPE_ANY = 43, 251, 252, 255
CLASS_IN = 1

OPTION_ECS = 8  # RFC 7871
OPTION_COOKIE = 10  # RFC 7873
ECS_FAMILY_BITS = {1: 32, 2: 128}

# The payload size we advertise and cap UDP replies at (DNS flag day 2020: 1232 avoids
# IP fragmentation on practically every path).
EDNS_PAYLOAD = 1232
MIN_UDP_PAYLOAD = 512


class WireError(Exception):
    """A query that cannot be answered normally."""


class Drop(WireError):
    """Not worth a reply: too short for a header, or a response (QR set) sent to us."""


class FormError(WireError):
    """Malformed but with a readable header: answer FORMERR."""


class NotImp(WireError):
    """An opcode other than QUERY: answer NOTIMP from the header alone (RFC 1035 §4.1.1)."""


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """The EDNS Client Subnet option of a query (RFC 7871 §6)."""

    family: int  # 1 IPv4, 2 IPv6
    source_prefix: int
    address: bytes  # exactly ceil(source_prefix / 8) bytes, as sent

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        bits = ECS_FAMILY_BITS[self.family]
        raw = self.address + bytes(bits // 8 - len(self.address))
        if self.family == 1:
            return ipaddress.IPv4Network((raw, self.source_prefix))
        return ipaddress.IPv6Network((raw, self.source_prefix))

    def option(self, scope: int) -> bytes:
        """The option for the reply: the query's family, source and address, our scope."""
        data = struct.pack("!HBB", self.family, self.source_prefix, scope) + self.address
        return struct.pack("!HH", OPTION_ECS, len(data)) + data


@dataclass(frozen=True, slots=True)
class Edns:
    payload: int
    version: int
    dnssec_ok: bool
    client_subnet: ClientSubnet | None
    cookies: tuple[bytes, ...] = ()  # the data of each COOKIE option, as sent (RFC 7873)


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int
    labels: tuple[bytes, ...]  # the question name's labels as sent, root label excluded
    qtype: int
    qclass: int
    question: bytes  # the question section's exact bytes (keeps 0x20 case randomization)
    edns: Edns | None

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11


def read_name(wire: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """Labels of an uncompressed name at offset, and the offset after it.

    A query's question name is never compressed (nothing precedes it to point at), so a
    pointer there is a format error. Labels are octet strings (RFC 2181 §11): any byte,
    a dot or a NUL included, is valid.
    """
    labels: list[bytes] = []
    total = 1
    end = len(wire)
    while True:
        if offset >= end:
            raise FormError("name runs past the end of the message")
        length = wire[offset]
        if length == 0:
            return tuple(labels), offset + 1
        if length > 63:
            raise FormError("compressed or extended label in a query name")
        total += length + 1
        if total > 255:
            raise FormError("name longer than 255 octets")
        if offset + 1 + length > end:
            raise FormError("label runs past the end of the message")
        labels.append(wire[offset + 1 : offset + 1 + length])
        offset += 1 + length


def _parse_opt(wire: bytes, offset: int, end: int, ttl: int, payload: int) -> Edns:
    version = (ttl >> 16) & 0xFF
    dnssec_ok = bool(ttl & 0x8000)
    client_subnet = None
    cookies: tuple[bytes, ...] = ()
    pos = offset
    while pos < end:
        if pos + 4 > end:
            raise FormError("truncated EDNS option")
        code, length = struct.unpack_from("!HH", wire, pos)
        pos += 4
        if pos + length > end:
            raise FormError("EDNS option runs past its OPT record")
        if code == OPTION_ECS and version == 0:
            if client_subnet is not None:
                raise FormError("more than one Client Subnet option")
            client_subnet = _parse_ecs(wire[pos : pos + length])
        elif code == OPTION_COOKIE and version == 0:
            cookies = (*cookies, wire[pos : pos + length])  # judged where cookies are answered
        # Unknown options are ignored and never echoed (RFC 6891 §6.1.2).
        pos += length
    return Edns(max(payload, MIN_UDP_PAYLOAD), version, dnssec_ok, client_subnet, cookies)


def _parse_ecs(data: bytes) -> ClientSubnet:
    # RFC 7871 §7.1.1: a malformed option is a FORMERR.
    if len(data) < 4:
        raise FormError("Client Subnet option too short")
    family, source, scope = struct.unpack_from("!HBB", data)
    bits = ECS_FAMILY_BITS.get(family)
    if bits is None:
        raise FormError(f"Client Subnet family {family} unknown")
    if source > bits:
        raise FormError("Client Subnet source prefix longer than the address")
    if scope != 0:
        raise FormError("Client Subnet scope prefix must be 0 in a query")
    address = data[4:]
    if len(address) != (source + 7) // 8:
        raise FormError("Client Subnet address length does not match its prefix")
    if address and source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise FormError("Client Subnet address has bits set beyond its prefix")
    return ClientSubnet(family, source, address)


def parse_query(wire: bytes, *, empty: bool = False) -> Query:
    """Parse a query; raise Drop or FormError (with the header readable) when malformed.

    `empty`: a query without a question is parsed too (labels and question empty, QTYPE and
    QCLASS 0): with cookies on, it asks for a server cookie (RFC 7873 §5.4).
    """
    if len(wire) < 12:
        raise Drop("shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!6H", wire)
    if flags & QR:
        raise Drop("a response, not a query")
    if flags & OPCODE_MASK:
        # Decided before anything about the question: a NOTIFY or UPDATE may have none.
        raise NotImp(f"opcode {(flags & OPCODE_MASK) >> 11}")
    labels: tuple[bytes, ...] = ()
    if qdcount == 0 and empty:
        pos, qtype, qclass = 12, 0, 0
    elif qdcount != 1:
        raise FormError(f"{qdcount} questions")
    else:
        labels, pos = read_name(wire, 12)
        if pos + 4 > len(wire):
            raise FormError("question runs past the end of the message")
        qtype, qclass = struct.unpack_from("!HH", wire, pos)
        pos += 4
    question = wire[12:pos]
    if ancount or nscount:
        raise FormError("a query with answer or authority records")
    edns = None
    for _ in range(arcount):
        owner, pos = _skip_name(wire, pos)
        if pos + 10 > len(wire):
            raise FormError("additional record runs past the end of the message")
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", wire, pos)
        pos += 10
        if pos + rdlength > len(wire):
            raise FormError("record data runs past the end of the message")
        if rtype == TYPE_OPT:
            if edns is not None:
                raise FormError("more than one OPT record")  # RFC 6891 §6.1.1
            if owner != 0:
                raise FormError("OPT record owner is not the root")
            edns = _parse_opt(wire, pos, pos + rdlength, ttl, rclass)
        # Other additional records (TSIG, SIG(0)) are not supported and are ignored.
        pos += rdlength
    if pos != len(wire):
        raise FormError("trailing bytes after the message")
    return Query(qid, flags, labels, qtype, qclass, question, edns)


def _skip_name(wire: bytes, offset: int) -> tuple[int, int]:
    """Skip a possibly compressed name; return (its length in labels, offset after it)."""
    count = 0
    end = len(wire)
    while True:
        if offset >= end:
            raise FormError("name runs past the end of the message")
        length = wire[offset]
        if length == 0:
            return count, offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > end:
                raise FormError("truncated compression pointer")
            return count + 1, offset + 2
        if length > 63:
            raise FormError("extended label type")
        count += 1
        offset += 1 + length


def opt_record(edns: Edns | None, scope: int | None = None, extended_rcode: int = 0, cookie: bytes = b"") -> bytes:
    """Our OPT record for a reply to a query that carried `edns`.

    Version 0, our payload size, DO copied (RFC 3225), unknown flags cleared, the Client
    Subnet echoed with `scope` when the query had one (RFC 7871 §7.2.1), then `cookie`
    (our whole COOKIE option, RFC 7873 §5.2, or nothing).
    """
    ttl = (extended_rcode << 24) | (0x8000 if edns is not None and edns.dnssec_ok else 0)
    options = b""
    if edns is not None and edns.client_subnet is not None and scope is not None:
        options = edns.client_subnet.option(scope)
    options += cookie
    return b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, ttl, len(options)) + options


def udp_limit(edns: Edns | None) -> int:
    """The largest UDP reply the client accepts (RFC 1035 §4.2.1, RFC 6891 §6.2.5)."""
    if edns is None:
        return MIN_UDP_PAYLOAD
    return min(edns.payload, EDNS_PAYLOAD)
