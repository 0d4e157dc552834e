"""Denial of existence by online minimal NSEC, the "white lies" of RFC 4470: nothing to walk.

An NXDOMAIN gets an NSEC whose range holds only the missing name's subtree (from just before
it to just after it in canonical order, RFC 4034 §6.1: names no zone has) and one covering the
wildcard at the closest encloser; NODATA an NSEC at the name listing its types, next `\\000.name`.
Pure: records for gslb.dns.dnssec to sign.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.NSEC
import dns.rdtypes.util

from gslb.dns.wire import NXDOMAIN, TYPE_A, TYPE_AAAA
from gslb.dns.zones import WILDCARD_WIRE, Zone, ZoneSet, wire_of

Name = dns.name.Name
Rdataset = dns.rdataset.Rdataset
Covers = dict[bytes, tuple[Name, Rdataset]]  # white lies made, by the subtree they cover

TYPE_RRSIG, TYPE_NSEC = 46, 47
COVER_LIMIT = 100_000  # white lies a zone keeps; cleared whole when full
_PROOF_TYPES = (TYPE_RRSIG, TYPE_NSEC)  # every NSEC here is signed, so its bitmap names both
_WINDOWS: dict[frozenset[int], Any] = {}  # an NSEC type bitmap's windows, by the types: a few kinds in all


def source(zone: Zone, owner: Name) -> Name:
    """The name an answer RRset is signed under: its owner, or the wildcard it was synthesized from."""
    wire = wire_of(owner)
    if wire in zone.existing:  # a name that exists is never synthesized (RFC 4592 §2.2.3)
        return owner
    wildcard = WILDCARD_WIRE + encloser(zone, wire)
    return zone.names.get(wildcard, owner)


def encloser(zone: Zone, wire: bytes) -> bytes:
    """The closest encloser of a name (RFC 4592 §3.3.1): its longest ancestor that exists."""
    while wire not in zone.existing:
        wire = wire[wire[0] + 1 :]
    return wire


def denial(
    zone: Zone, covers: Covers, zones: ZoneSet, name: Name, qtype: int, rcode: int
) -> list[tuple[Name, Rdataset]]:
    """The NSEC records proving `name` has no `qtype` (NODATA) or does not exist (NXDOMAIN)."""
    wire = wire_of(name)
    if rcode == NXDOMAIN:
        # RFC 4035 §3.1.3.2: no such name, and no wildcard at the closest encloser that could make it.
        closest = encloser(zone, wire)
        wildcard = Name((b"*", *labels(closest)))
        return [cover(zone, name, covers), cover(zone, wildcard, covers)]
    if wire in zone.existing:  # named in lower case: a cached answer must not keep the asker's case
        types = zone.nodes.get(wire, {})
        return [nodata_nsec(zone, Name(labels(wire)), types, qtype if name in zones.services else None)]
    # NODATA from a wildcard (RFC 4035 §3.1.3.4): the name does not exist, and the wildcard has no qtype.
    closest = encloser(zone, wire)
    wild = WILDCARD_WIRE + closest
    wildcard = zone.names.get(wild, Name((b"*", *labels(closest))))
    return [cover(zone, name, covers), nodata_nsec(zone, wildcard, zone.nodes.get(wild, {}), None)]


def labels(wire: bytes) -> tuple[bytes, ...]:
    """A wire-form name's labels, the root's included (for dns.name.Name)."""
    out = []
    while wire[0]:
        out.append(wire[1 : 1 + wire[0]])
        wire = wire[wire[0] + 1 :]
    return (*out, b"")


def _nsec(zone: Zone, next_name: Name, types: Iterable[int]) -> Rdataset:
    present = frozenset((*types, *_PROOF_TYPES))
    windows = _WINDOWS.get(present)
    if windows is None:
        rdtypes = sorted(dns.rdatatype.RdataType(t) for t in present)
        windows = _WINDOWS[present] = dns.rdtypes.util.Bitmap.from_rdtypes(rdtypes).windows
    rdata = dns.rdtypes.ANY.NSEC.NSEC(  # type: ignore[no-untyped-call]
        dns.rdataclass.IN, dns.rdatatype.NSEC, next_name, windows
    )
    # RFC 9077: an NSEC's TTL is the lesser of the SOA's TTL and its MINIMUM, as for the negative answer.
    rdataset = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC)
    rdataset.update_ttl(zone.negative_ttl)
    rdataset.add(rdata)
    return rdataset


def nodata_nsec(
    zone: Zone, name: Name, types: Mapping[int, Rdataset], service_qtype: int | None
) -> tuple[Name, Rdataset]:
    """An NSEC at an existing name listing its types; it covers nothing but the name (next: `\\000.name`).

    At a service name the address types it answers are listed too, less the one denied.
    """
    present = set(types)
    if service_qtype is not None:
        present |= {TYPE_A, TYPE_AAAA}
        present.discard(service_qtype)
    return name, _nsec(zone, Name((b"\x00", *name.labels)), present)


def cover(zone: Zone, name: Name, covers: Covers) -> tuple[Name, Rdataset]:
    """An NSEC covering `name` and all below it, and nothing that exists (RFC 4470 §3).

    Its range is from just before the closest encloser's child on the way to `name` to just
    after that child's subtree, so a validator finds the true closest encloser from it
    (the longest name both ends share with `name`). Kept in `covers`, by that child.
    """
    wire = wire_of(name)
    closest = encloser(zone, wire)
    while wire[wire[0] + 1 :] != closest:
        wire = wire[wire[0] + 1 :]
    found = covers.get(wire)
    if found is not None:
        return found
    parent = labels(closest)
    child = name.labels[-len(parent) - 1].lower()
    limit = min(63, 254 - len(closest))  # the longest label here that keeps the name in 255 octets
    owner = Name(parent) if child == b"\x00" else Name((_before(child, limit), *parent))
    next_name = Name((_after(child, limit), *parent))
    types = zone.nodes.get(closest, {}) if owner == Name(parent) else {}
    if len(covers) >= COVER_LIMIT:
        covers.clear()
    made = covers[wire] = (owner, _nsec(zone, next_name, types))
    return made


def _after(label: bytes, size: int) -> bytes:
    """The first label after `label` and every name below it in canonical order."""
    if len(label) < size:
        return label + b"\x00"
    # No room to grow: step the last octet up (past the upper-case letters, which sort as lower case).
    stem = label.rstrip(b"\xff")
    if not stem:
        return label  # 63 octets of 0xFF: nothing follows; the range then ends at the name itself
    last = stem[-1] + 1
    if 0x41 <= last <= 0x5A:
        last = 0x5B
    return stem[:-1] + bytes((last,))


def _before(label: bytes, size: int) -> bytes:
    """A label just before `label` in canonical order (RFC 4034 §6.1), filled up with 0xFF."""
    last = label[-1]
    if last == 0:
        return label[:-1] or b"\x00"
    last -= 1
    if 0x41 <= last <= 0x5A:  # an upper-case letter sorts as lower case: step below them all
        last = 0x40
    stem = label[:-1] + bytes((last,))
    return stem + b"\xff" * max(0, size - len(stem))
