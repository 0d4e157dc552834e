"""Replies encoded once: the Entry a cache holds, and the encoders behind it.

An Entry is a reply without its first four bytes and its question: flags, counts and the
records after the question, encoded with name compression that depends only on the name's
length (so one NXDOMAIN serves every missing name of a length), plus its signed variant in a
signed zone. The answerer splices a query's ID, flags and question around it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype

from gslb.dns.dnssec import address_rdataset, signed_sections
from gslb.dns.rrl import kind_of
from gslb.dns.wire import AA, CD, FORMERR, OPCODE_MASK, QR, RD, REFUSED, SERVFAIL, TC, Query, opt_record
from gslb.dns.zones import Resolution, Section
from gslb.steering.policy import Decision

if TYPE_CHECKING:
    from gslb.snapshot import Snapshot


Name = dns.name.Name


@dataclass(frozen=True, slots=True)
class Entry:
    """The parts of a reply that do not depend on the query's ID, flags or case."""

    flags: int  # QR, AA, RCODE
    ancount: int
    nscount: int
    arcount: int  # without our OPT
    body: bytes  # every section after the question, encoded for a question at offset 12
    scoped: bool  # the answer depends on the client: return the ECS scope of its range (else 0)
    rcode: int
    service: str | None = None  # the service that decided, for logs and metrics
    datacenters: tuple[str, ...] = ()
    # Precomputed: the header's four counts, without and with our OPT.
    head: bytes = b""
    head_opt: bytes = b""
    # The header's flags for each combination of the query's RD and CD, which are copied
    # (RFC 1035 §4.1.1, RFC 6840 §5.9): index (RD | CD >> 3) of the query's flag bytes.
    flag_bytes: tuple[bytes, ...] = ()
    # Precomputed counter keys: (tcp, qtype, rcode) per transport, and (service, data center).
    udp_key: tuple[bool, int, int] = (False, 0, 0)
    tcp_key: tuple[bool, int, int] = (True, 0, 0)
    answer_key: tuple[str, str] | None = None
    rrl_kind: int = 0  # gslb.dns.rrl: answer, NXDOMAIN, error or referral
    # DNSSEC (gslb.dns.dnssec): `dnssec` when the zone is signed; then a query with DO gets
    # `signed`, the same reply with RRSIGs and NSEC proofs, or the general path while it is
    # None (a denial whose proof is signed for the name asked, on the first query with DO).
    dnssec: bool = False
    signed: Entry | None = None


def entry(
    flags: int,
    counts: tuple[int, int, int],
    body: bytes,
    scoped: bool,
    rcode: int,
    qtype: int,
    service: str | None = None,
    datacenters: tuple[str, ...] = (),
    dnssec: bool = False,
    signed: Entry | None = None,
) -> Entry:
    an, ns, ar = counts
    return Entry(
        flags,
        an,
        ns,
        ar,
        body,
        scoped,
        rcode,
        service,
        datacenters,
        flag_bytes=tuple(struct.pack("!H", flags | (RD if i & 1 else 0) | (CD if i & 2 else 0)) for i in range(4)),
        head=struct.pack("!HHHH", 1, an, ns, ar),
        head_opt=struct.pack("!HHHH", 1, an, ns, ar + 1),
        udp_key=(False, qtype, rcode),
        tcp_key=(True, qtype, rcode),
        answer_key=None if service is None else (service, datacenters[0] if datacenters else ""),
        rrl_kind=kind_of(struct.pack("!HH", 0, flags) + struct.pack("!HHHH", 1, an, ns, ar)),
        dnssec=dnssec,
        signed=signed,
    )


def flag_bytes(template: int, query_flags: int) -> bytes:
    return struct.pack("!H", template | (query_flags & (RD | CD)))


class _Writer:
    """Encodes records after a question at offset 12, with name compression (RFC 1035 §4.1.4)."""

    def __init__(self, question: bytes, qname: Name, zone_depth: int):
        self.out = io.BytesIO()
        self.out.write(bytes(12) + question)
        self.compress: dict[Name, int] = {}
        # Point only at the whole name and at the zone's origin and above: then what follows
        # the question depends on the name's length, not on its other labels, and one
        # NXDOMAIN serves every missing name of a length (see State.negative).
        offset = 12
        for i in range(len(qname) - 1):
            if i == 0 or len(qname) - i <= zone_depth:
                self.compress[Name(qname.labels[i:])] = offset
            offset += len(qname.labels[i]) + 1
        self.start = self.out.tell()

    def rrset(self, owner: Name, rdataset: dns.rdataset.Rdataset) -> int:
        # want_shuffle=False: answers are cached and the same bytes served again; a resolver
        # reorders anyway, and services do their own (weighted) drawing.
        return int(rdataset.to_wire(owner, self.out, self.compress, None, want_shuffle=False))

    def body(self) -> bytes:
        return self.out.getvalue()[self.start :]


def encode(
    resolution: Resolution,
    decision: Decision | None,
    question: bytes,
    snapshot: Snapshot | None = None,
    online: bool = False,
) -> Entry:
    """Encode a resolution (and a service's decision) into a cacheable entry.

    In a signed zone of `snapshot` the entry carries its signed variant too, unless that needs a
    signature not made yet and `online` is False (see gslb.dns.dnssec.signed_sections).
    """
    rcode = resolution.rcode
    qtype = question[-4] << 8 | question[-3]
    if rcode == REFUSED:
        return entry(QR | REFUSED, (0, 0, 0), b"", False, REFUSED, qtype)
    labels = []
    pos = 0
    while question[pos]:
        labels.append(question[pos + 1 : pos + 1 + question[pos]])
        pos += question[pos] + 1
    assert resolution.question_zone is not None
    qname = Name((*labels, b""))
    depth = len(resolution.question_zone.origin)
    answer = resolution.answer
    authority = resolution.authority
    scoped = False
    service_name: str | None = None
    datacenters: tuple[str, ...] = ()
    if decision is not None:
        service = resolution.service
        assert service is not None
        service_name = service.service.to_text().lower()  # as configured, whatever the query's case
        datacenters = decision.datacenters
        scoped = decision.location_dependent
        if decision.rcode == SERVFAIL:
            return entry(QR | SERVFAIL, (0, 0, 0), b"", scoped, SERVFAIL, qtype, service_name, datacenters)
        answer = answer[:-1]
        if decision.addresses:
            answer = [*answer, (service.owner, address_rdataset(service.qtype, decision.ttl, decision.addresses))]
        else:
            # NODATA for the family (e.g. AAAA where the data center has no IPv6 VIP).
            zone = resolution.zone
            assert zone is not None
            authority = [*authority, (zone.origin, zone.negative_soa)]
    records: Section = answer  # type: ignore[assignment]  # the service's place is filled above
    counts, body = write(question, qname, depth, records, authority, resolution.additional)
    flags = QR | (AA if resolution.authoritative else 0) | rcode
    signing = snapshot.signing if snapshot is not None else None
    if signing is None or signing.signer(resolution.question_zone) is signing.signer(resolution.zone) is None:
        return entry(flags, counts, body, scoped, rcode, qtype, service_name, datacenters)
    signed: Entry | None = None
    assert snapshot is not None
    sections = signed_sections(signing, snapshot.zones, resolution, records, authority, qname, qtype, online)
    if sections is not None:
        signed_counts, signed_body = write(question, qname, depth, *sections, resolution.additional)
        signed = entry(flags, signed_counts, signed_body, scoped, rcode, qtype, service_name, datacenters)
    return entry(flags, counts, body, scoped, rcode, qtype, service_name, datacenters, True, signed)


def write(
    question: bytes, qname: Name, depth: int, answer: Section, authority: Section, additional: Section
) -> tuple[tuple[int, int, int], bytes]:
    """The three sections' record counts and bytes, after `question`."""
    writer = _Writer(question, qname, depth)
    an = sum(writer.rrset(owner, rds) for owner, rds in answer)
    ns = sum(writer.rrset(owner, rds) for owner, rds in authority)
    ar = sum(writer.rrset(owner, rds) for owner, rds in additional)
    return (an, ns, ar), writer.body()


def truncated(query: Query, entry: Entry, limit: int, opt: bytes) -> bytes:
    """A reply that does not fit: TC and no records (RFC 2181 §9), so the client retries over TCP."""
    counts = struct.pack("!HHHH", 1, 0, 0, 1 if opt else 0)
    flags = flag_bytes(entry.flags | TC, query.flags)
    return b"".join((struct.pack("!H", query.id), flags, counts, query.question, opt))


def header_reply(query: Query, rcode: int, *, aa: bool, extended_rcode: int = 0, cookie: bytes = b"") -> bytes:
    """A reply with the question echoed and no records: NOTIMP, BADVERS, FORMERR, REFUSED."""
    flags = QR | (query.flags & (OPCODE_MASK | RD | CD)) | (AA if aa else 0) | rcode
    opt = b"" if query.edns is None else opt_record(query.edns, extended_rcode=extended_rcode, cookie=cookie)
    counts = struct.pack("!HHHH", 1, 0, 0, 1 if opt else 0)
    return b"".join((struct.pack("!HH", query.id, flags), counts, query.question, opt))


def formerr(wire: bytes) -> bytes:
    """FORMERR with the header only: the rest of the query could not be trusted."""
    qid, flags = struct.unpack_from("!HH", wire)
    return struct.pack("!HHHHHH", qid, QR | (flags & (OPCODE_MASK | RD | CD)) | FORMERR, 0, 0, 0, 0)


def servfail(wire: bytes) -> bytes | None:
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    qid, flags = struct.unpack_from("!HH", wire)
    return struct.pack("!HHHHHH", qid, QR | (flags & (OPCODE_MASK | RD | CD)) | SERVFAIL, 0, 0, 0, 0)
