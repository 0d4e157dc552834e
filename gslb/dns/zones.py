"""RFC 1035 zone files -> an immutable zone set, and the authoritative lookup of RFC 1034 §4.3.2."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype

from gslb import inputs
from gslb.dns import masterfile
from gslb.dns.masterfile import Problem
from gslb.dns.wire import (
    NOERROR,
    NXDOMAIN,
    REFUSED,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_CNAME,
    TYPE_DS,
    TYPE_NS,
    TYPE_SOA,
)

log = logging.getLogger("gslb.zones")

Name = dns.name.Name
Rdataset = dns.rdataset.Rdataset

MAX_CNAME_CHAIN = 12  # loops and absurd chains end here, as in most servers
WILDCARD_WIRE = b"\x01*"  # the label "*" (RFC 4592), as it starts a wire-form name
# Types that may sit beside a CNAME (RFC 2181 §10.1, RFC 4035 §2.5).
CNAME_NEIGHBOURS = {TYPE_CNAME, dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.KEY}


class ZoneError(Exception):
    """One or more problems in the zone files, every one with file and line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    """A place in an answer that a service's decision fills (an A/AAAA owned by a service)."""

    owner: Name
    service: Name
    qtype: int


Section = list[tuple[Name, Rdataset]]


@dataclass(slots=True)
class Resolution:
    """The outcome of a lookup, before encoding."""

    rcode: int
    authoritative: bool
    zone: Zone | None = None  # where the lookup ended (a CNAME chain may cross zones)
    question_zone: Zone | None = None  # the zone of the question's name
    answer: list[tuple[Name, Rdataset] | ServiceAnswer] = field(default_factory=list)
    authority: Section = field(default_factory=list)
    additional: Section = field(default_factory=list)

    @property
    def service(self) -> ServiceAnswer | None:
        last = self.answer[-1] if self.answer else None
        return last if isinstance(last, ServiceAnswer) else None


class Zone:
    """One zone's data, immutable once built.

    Nodes are keyed by the owner's lower-case wire form (see wire_of): bytes hash once and
    compare fast, and ancestors are suffixes; `names` keeps each owner as the file spells it.
    """

    def __init__(self, origin: Name, path: str, nodes: dict[bytes, dict[int, Rdataset]], names: dict[bytes, Name]):
        self.origin = origin
        self.origin_wire = wire_of(origin)
        self.path = path
        self.nodes = nodes
        self.names = names
        self.soa = nodes[self.origin_wire][TYPE_SOA]
        soa = self.soa[0]
        # RFC 2308 §5: the negative TTL is the lesser of the SOA's TTL and its MINIMUM.
        self.negative_ttl = min(self.soa.ttl, soa.minimum)
        self.negative_soa = _with_ttl(self.soa, self.negative_ttl)
        # Valued as the zone file spells them: an owner name in an answer must not take the
        # case of whoever asked first (answers are cached).
        self.cuts = {w: names[w] for w, types in nodes.items() if TYPE_NS in types and w != self.origin_wire}
        # Every name that exists, empty non-terminals included (RFC 4592 §2.2.2).
        self.existing: set[bytes] = set()
        for wire in nodes:
            self.add_existing(wire)

    def add_existing(self, wire: bytes) -> None:
        while wire not in self.existing and len(wire) >= len(self.origin_wire):
            self.existing.add(wire)
            if wire == self.origin_wire:
                break
            wire = wire[wire[0] + 1 :]

    @property
    def record_count(self) -> int:
        return sum(len(rds) for types in self.nodes.values() for rds in types.values())


@dataclass(frozen=True, slots=True)
class ZoneIndex:
    """A zone's names in lower-case wire form, for the fast path's negative answers."""

    origin: bytes
    names: frozenset[bytes]  # every existing name: data, empty non-terminals, services
    wildcard_parents: frozenset[bytes]  # E where *.E exists
    cuts: frozenset[bytes]  # delegation points below the apex

    @classmethod
    def of(cls, zone: Zone) -> ZoneIndex:
        return cls(
            zone.origin_wire,
            frozenset(zone.existing),
            frozenset(wire[2:] for wire in zone.nodes if wire.startswith(WILDCARD_WIRE)),
            frozenset(zone.cuts),
        )


def wire_of(name: Name) -> bytes:
    """A name's uncompressed wire form in lower case (ASCII letters only, RFC 4343)."""
    return b"".join(bytes((len(label),)) + label for label in name.labels).lower()


def _with_ttl(rdataset: Rdataset, ttl: int) -> Rdataset:
    copy: Rdataset = rdataset.copy()  # type: ignore[no-untyped-call]
    copy.ttl = ttl
    return copy


def _origin_for(path: Path) -> Name:
    stem = path.name[: -len(".zone")]
    return dns.name.from_text(stem if stem.endswith(".") else stem + ".")


def load_zone(path: Path, origin: Name | None = None) -> tuple[Zone | None, list[Problem]]:
    """Read and check one zone file; the zone is None when it has problems."""
    origin = origin or _origin_for(path)
    # One pass reads every record and finds every syntax error (in included files too), and
    # consistency is checked even when some lines had errors: every problem in one run.
    records, problems = masterfile.read(path, origin)
    if problems and not records:
        return None, problems  # nothing read (the file, or every line, is bad): "no SOA" would only mislead
    # Grouped by the owner object first (the fast reader hands out one object per owner
    # text): a dnspython Name hashes slowly, so each name is hashed once, not per record.
    groups: dict[int, tuple[Name, dict[int, Rdataset], dict[int, tuple[str, int]]]] = {}
    for rec in records:
        if rec.rdata.rdclass != dns.rdataclass.IN:
            problems.append(Problem(rec.file, rec.line, "only class IN is served"))
            continue
        group = groups.get(id(rec.name))
        if group is None:
            group = groups[id(rec.name)] = (rec.name, {}, {})
        _, types, lines = group
        rdtype = rec.rdata.rdtype
        rdataset = types.get(rdtype)
        if rdataset is None:
            rdataset = types[rdtype] = dns.rdataset.Rdataset(dns.rdataclass.IN, rdtype)  # type: ignore[arg-type]
            rdataset.ttl = rec.ttl
            lines[rdtype] = (rec.file, rec.line)
        elif rdataset.ttl != rec.ttl:
            # RFC 2181 §5.2: TTLs in an RRset must agree; like named, use the lowest.
            log.debug("%s:%d: TTL differs within the %s RRset", rec.file, rec.line, rec.name)
            rdataset.ttl = min(rdataset.ttl, rec.ttl)
        rdataset.add(rec.rdata)  # type: ignore[arg-type]  # the light rdata encode as dnspython's do
    nodes: dict[bytes, dict[int, Rdataset]] = {}
    names: dict[bytes, Name] = {}
    first_line: dict[bytes, dict[int, tuple[str, int]]] = {}
    for name, types, lines in groups.values():
        key = wire_of(name)
        known = nodes.get(key)
        if known is None:
            nodes[key] = types
            names[key] = name
            first_line[key] = lines
            continue
        for rdtype, rdataset in types.items():  # the same name spelled another way
            if rdtype in known:
                known[rdtype].update_ttl(rdataset.ttl)
                for rdata in rdataset:
                    known[rdtype].add(rdata)
            else:
                known[rdtype] = rdataset
                first_line[key].setdefault(rdtype, lines[rdtype])
    where = str(path)
    origin_wire = wire_of(origin)

    def line_of(name: Name, rdtype: int) -> tuple[str, int]:
        return first_line.get(wire_of(name), {}).get(rdtype, (where, 1))

    apex = nodes.get(origin_wire, {})
    if TYPE_SOA not in apex:
        problems.append(Problem(where, 1, f"no SOA record at the zone apex {origin}"))
    elif len(apex[TYPE_SOA]) != 1:
        problems.append(Problem(*line_of(origin, TYPE_SOA), "more than one SOA record at the apex"))
    if TYPE_NS not in apex:
        problems.append(Problem(where, 1, f"no NS records at the zone apex {origin}"))
    for key, types in nodes.items():
        name = names[key]
        if TYPE_CNAME in types:
            others = set(types) - CNAME_NEIGHBOURS
            if others:
                kinds = ", ".join(sorted(dns.rdatatype.to_text(dns.rdatatype.RdataType(t)) for t in others))
                problems.append(Problem(*line_of(name, TYPE_CNAME), f"{name} has a CNAME and other data ({kinds})"))
            if len(types[TYPE_CNAME]) > 1:
                problems.append(Problem(*line_of(name, TYPE_CNAME), f"{name} has more than one CNAME"))
            if key == origin_wire:
                problems.append(Problem(*line_of(name, TYPE_CNAME), "a CNAME at the zone apex"))
        if TYPE_SOA in types and key != origin_wire:
            problems.append(Problem(*line_of(name, TYPE_SOA), f"SOA record at {name}, below the apex"))
    if problems:
        return None, problems
    zone = Zone(origin, where, nodes, names)
    for key, types in nodes.items() if zone.cuts else ():
        name = names[key]
        cut = cut_above(zone, name, include_self=False)
        if cut is not None and not (set(types) <= {TYPE_A, TYPE_AAAA}):
            file, line = line_of(name, next(iter(types)))
            problems.append(Problem(file, line, f"{name} is below the delegation {cut} (occluded)"))
    if problems:
        return None, problems
    return zone, []


def cut_above(zone: Zone, name: Name, include_self: bool) -> Name | None:
    """The highest delegation point between the apex and `name`."""
    if not zone.cuts:
        return None
    wire = wire_of(name)
    suffixes = []  # the name's ancestors below the apex, deepest first
    while len(wire) > len(zone.origin_wire):
        suffixes.append(wire)
        wire = wire[wire[0] + 1 :]
    if not include_self:
        suffixes = suffixes[1:]
    for candidate in reversed(suffixes):  # the highest cut wins
        cut = zone.cuts.get(candidate)
        if cut is not None:
            return cut
    return None


@dataclass(frozen=True, slots=True)
class ZoneSet:
    """Every served zone, looked up by the longest matching origin."""

    zones: Mapping[Name, Zone]
    services: frozenset[Name] = frozenset()

    def find_zone(self, name: Name) -> Zone | None:
        labels = name.labels
        for i in range(len(labels)):
            zone = self.zones.get(Name(labels[i:]))
            if zone is not None:
                return zone
        return None

    def with_services(self, services: Iterable[Name]) -> ZoneSet:
        """The same zones with service names: they and their ancestors exist (no NXDOMAIN)."""
        names = frozenset(services)
        for name in names:
            zone = self.find_zone(name)
            if zone is not None:
                zone.add_existing(wire_of(name))
        return ZoneSet(self.zones, names)

    def index(self) -> dict[bytes, ZoneIndex]:
        """Per zone origin (lower-case wire form), the names the fast path needs to answer
        NXDOMAIN without a full lookup."""
        return {zone.origin_wire: ZoneIndex.of(zone) for zone in self.zones.values()}

    def lookup(self, qname: Name, qtype: int) -> Resolution:
        zone = self.find_zone(qname)
        if zone is None:
            return Resolution(REFUSED, authoritative=False)
        result = Resolution(NOERROR, authoritative=True, zone=zone, question_zone=zone)
        seen: set[Name] = set()
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            target = self._lookup_in(zone, name, qtype, result)
            if target is None or target in seen:
                return result
            seen.add(name)
            # RFC 1034 §4.3.2 step 3.a: restart at the CNAME target, if we serve it.
            next_zone = self.find_zone(target)
            if next_zone is None:
                return result
            zone = next_zone
            result.zone = zone
            name = target
        return result

    def _lookup_in(self, zone: Zone, name: Name, qtype: int, result: Resolution) -> Name | None:
        """Add the answer for `name` in `zone` to `result`; return a CNAME target to follow."""
        cut = cut_above(zone, name, include_self=True)
        if cut is not None and not (cut == name and qtype == TYPE_DS):
            # A referral (RFC 1034 §4.3.2 step 3.b); DS at the cut is the parent's (RFC 4035 §3.1.4.1).
            if result.answer:
                return None  # a CNAME into a delegation: the resolver follows it itself
            result.authoritative = False
            ns = zone.nodes[wire_of(cut)][TYPE_NS]
            result.authority.append((cut, ns))
            result.additional.extend(self._glue(zone, ns))
            return None
        types = zone.nodes.get(wire_of(name))
        owner = name
        if types is None and name not in self.services:
            if wire_of(name) in zone.existing:
                types = {}  # an empty non-terminal: NODATA (RFC 4592 §2.2.2)
            else:
                types = self._wildcard(zone, name)
                if types is None:
                    result.rcode = NXDOMAIN
                    result.authority.append((zone.origin, zone.negative_soa))
                    return None
        if name in self.services:
            if qtype in (TYPE_A, TYPE_AAAA, TYPE_ANY):
                result.answer.append(ServiceAnswer(owner, name, TYPE_A if qtype == TYPE_ANY else qtype))
                return None
            types = types or {}
        assert types is not None
        if qtype == TYPE_ANY and types:
            # RFC 8482 §4.1: answer ANY with one RRset rather than all of them.
            rdtype = TYPE_CNAME if TYPE_CNAME in types else next(iter(types))
            result.answer.append((owner, types[rdtype]))
            return None
        rdataset = types.get(qtype)
        if rdataset is not None:
            result.answer.append((owner, rdataset))
            return None
        cname = types.get(TYPE_CNAME)
        if cname is not None:
            result.answer.append((owner, cname))
            return cname[0].target  # type: ignore[no-any-return]
        result.authority.append((zone.origin, zone.negative_soa))
        return None

    def _wildcard(self, zone: Zone, name: Name) -> dict[int, Rdataset] | None:
        """The wildcard's data synthesized for `name`, if its closest encloser has one (RFC 4592 §3.3.1)."""
        encloser = name.parent()
        while wire_of(encloser) not in zone.existing:
            if encloser == zone.origin or len(encloser) <= len(zone.origin):
                return None
            encloser = encloser.parent()
        return zone.nodes.get(WILDCARD_WIRE + wire_of(encloser))

    def _glue(self, zone: Zone, ns: Rdataset) -> Section:
        glue: Section = []
        for rdata in ns:
            target: Name = rdata.target
            target_zone = self.find_zone(target)
            if target_zone is None:
                continue
            types = target_zone.nodes.get(wire_of(target), {})
            for rdtype in (TYPE_A, TYPE_AAAA):
                if rdtype in types:
                    glue.append((target, types[rdtype]))
        return glue

    @property
    def record_count(self) -> int:
        return sum(zone.record_count for zone in self.zones.values())


def load_zones(directory: Path) -> ZoneSet:
    """Every `*.zone` file in `directory`; raises ZoneError with every problem found."""
    zones: dict[Name, Zone] = {}
    problems: list[Problem] = []
    inputs.listed(directory, "*.zone")
    paths = sorted(directory.glob("*.zone"))
    if not directory.is_dir():
        raise ZoneError([Problem(str(directory), 0, "not a directory")])
    for path in paths:
        zone, found = load_zone(path)
        problems.extend(found)
        if zone is None:
            continue
        if zone.origin in zones:
            problems.append(Problem(str(path), 1, f"zone {zone.origin} is also in {zones[zone.origin].path}"))
            continue
        zones[zone.origin] = zone
    if problems:
        raise ZoneError(problems)
    return ZoneSet(zones)


def static_addresses(zones: ZoneSet, name: Name) -> set[int]:
    """The static types at `name` that a service there would clash with."""
    zone = zones.find_zone(name)
    if zone is None:
        return set()
    types = zone.nodes.get(wire_of(name), {})
    return {t for t in types if t in (TYPE_A, TYPE_AAAA, TYPE_CNAME)}
