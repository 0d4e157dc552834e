"""DNSSEC: RRSIGs made ahead for every authoritative RRset and service answer, minimal NSEC for denials.

A zone with keys (gslb.dns.keys) is signed when the snapshot is built: its DNSKEY joins the
apex; every authoritative RRset (not delegation NS, not glue; DS at a cut when there is one)
and every address set a service can answer is signed then, so that answers are encoded from
signatures already made. Denials use online minimal NSEC (gslb.dns.denial: RFC 4470's white
lies, nothing to walk); those depend on the name asked and are signed on first use and kept, bounded.
The signatures of a snapshot share one inception and expiration; `resign` makes a new set.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype

from gslb.dns import denial
from gslb.dns.keys import ZoneKey
from gslb.dns.wire import NXDOMAIN, TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_DS, TYPE_NS, TYPE_SOA
from gslb.dns.zones import Resolution, Section, Zone, ZoneSet, cut_above, wire_of

log = logging.getLogger("gslb.dnssec")

Name = dns.name.Name
Rdataset = dns.rdataset.Rdataset

TYPE_DNSKEY = 48
DNSKEY_TTL = 3600
ONLINE_LIMIT = 100_000  # signatures made on first use that a zone keeps; cleared whole when full


class Settings(Protocol):
    """What signing needs of the [dnssec] settings (gslb.config's DnssecSettings)."""

    @property
    def validity(self) -> int: ...
    @property
    def inception_offset(self) -> int: ...
    @property
    def refresh(self) -> int: ...
    @property
    def max_presigned(self) -> int: ...


class ServiceLike(Protocol):
    """What pre-signing needs of a service (gslb.config's Service)."""

    @property
    def datacenters(self) -> tuple[str, ...]: ...
    @property
    def answers(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def ttl_degraded(self) -> int: ...
    def fallback_addresses(self, family: int) -> tuple[str, ...]: ...


class DataCenterLike(Protocol):
    def addresses(self, family: int) -> tuple[str, ...]: ...


def address_rdataset(qtype: int, ttl: int, addresses: Iterable[str]) -> Rdataset:
    """The A or AAAA RRset of a service's answer."""
    rdtype = dns.rdatatype.RdataType(qtype)
    rdataset = dns.rdataset.Rdataset(dns.rdataclass.IN, rdtype)
    rdataset.update_ttl(ttl)
    for address in addresses:
        rdataset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, address))
    return rdataset


class ZoneSigner:
    """One zone's keys and the signatures made with them, for one inception and expiration."""

    def __init__(self, zone: Zone, keys: Sequence[ZoneKey], inception: int, expiration: int):
        self.zone = zone
        self.keys = tuple(keys)
        self.inception = inception
        self.expiration = expiration
        self.presigned: dict[tuple[bytes, int, int, frozenset[bytes]], Rdataset] = {}
        self.online: dict[tuple[bytes, int, int, frozenset[bytes]], Rdataset] = {}  # on first use, bounded
        # The zone's own RRsets signed ahead, by identity: found without encoding them for the key
        # (each entry keeps its RRset, so an id is never another's).
        self.by_identity: dict[tuple[int, Name], tuple[Rdataset, Rdataset]] = {}
        self.online_identity: dict[tuple[int, Name], tuple[Rdataset, Rdataset]] = {}  # with `online`
        # White-lie NSECs made, by the name whose subtree they cover (bounded as `online` is).
        self.covers: denial.Covers = {}

    @property
    def tags(self) -> tuple[int, ...]:
        return tuple(key.tag for key in self.keys)

    def rrsig(self, owner: Name, rdataset: Rdataset, online: bool = True, ahead: bool = False) -> Rdataset | None:
        """The RRSIG RRset covering (owner, rdataset); made now unless `online` is False (then None).

        `owner` is the name signed: for an answer synthesized from a wildcard, the wildcard.
        """
        known = self.by_identity.get((id(rdataset), owner)) or self.online_identity.get((id(rdataset), owner))
        if known is not None and known[0] is rdataset:
            return known[1]
        key = (wire_of(owner), rdataset.rdtype, rdataset.ttl, frozenset(_wire(rdata) for rdata in rdataset))
        found = self.presigned.get(key) or self.online.get(key)
        if found is not None:
            return found
        if not online and not ahead:
            return None
        made = self._sign(owner, rdataset)
        if ahead:
            self.presigned[key] = made
            self.by_identity[(id(rdataset), owner)] = (rdataset, made)
        else:
            if len(self.online) >= ONLINE_LIMIT:
                self.online.clear()
                self.online_identity.clear()
            self.online[key] = made
            self.online_identity[(id(rdataset), owner)] = (rdataset, made)
        return made

    def _sign(self, owner: Name, rdataset: Rdataset) -> Rdataset:
        rrsig = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, rdataset.rdtype)
        rrsig.update_ttl(rdataset.ttl)
        full = rdataset
        if not all(isinstance(rdata, dns.rdata.Rdata) for rdata in rdataset):
            # The zone reader's light record data (gslb.dns.masterfile) as dnspython's, which sign() needs.
            full = dns.rdataset.Rdataset(dns.rdataclass.IN, rdataset.rdtype, rdataset.covers)
            full.update_ttl(rdataset.ttl)
            for rdata in rdataset:
                wire = _wire(rdata)
                full.add(dns.rdata.from_wire(dns.rdataclass.IN, rdataset.rdtype, wire, 0, len(wire)))
        for key in self.keys:
            made = dns.dnssec.sign(
                (owner, full),
                key.private,
                self.zone.origin,
                key.dnskey,
                inception=self.inception,
                expiration=self.expiration,
            )
            rrsig.add(made)
        return rrsig


def _wire(rdata: dns.rdata.Rdata) -> bytes:
    out = io.BytesIO()
    rdata.to_wire(out)
    return out.getvalue()


@dataclass(slots=True)
class Signing:
    """Every signed zone's signer, made together; what `gslb check` and the re-signing timer read."""

    signers: dict[bytes, ZoneSigner]  # by zone origin, lower-case wire form
    inception: int
    expiration: int
    refresh: int  # re-sign when less than this is left
    presigned: int = 0  # signatures made ahead
    seconds: float = 0.0  # how long that took
    first_use: tuple[str, ...] = ()  # services with more address sets than max_presigned
    service_sets: dict[str, int] = field(default_factory=dict)  # address sets signed ahead, per service

    @property
    def due(self) -> float:
        """When the signatures must be made again (epoch seconds)."""
        return float(self.expiration - self.refresh)

    def signer(self, zone: Zone | None) -> ZoneSigner | None:
        return None if zone is None else self.signers.get(zone.origin_wire)


def sign(
    zones: ZoneSet,
    keys: Mapping[Name, Sequence[ZoneKey]],
    services: Mapping[Name, ServiceLike],
    datacenters: Mapping[str, DataCenterLike],
    settings: Settings,
    now: float | None = None,
) -> Signing | None:
    """Sign every zone that has keys; None when none has. Puts each DNSKEY RRset at its apex."""
    started = time.perf_counter()
    moment = int(time.time() if now is None else now)
    inception = moment - settings.inception_offset
    expiration = inception + settings.validity
    signers: dict[bytes, ZoneSigner] = {}
    for origin, zone in zones.zones.items():
        zone_keys = keys.get(origin)
        if not zone_keys:
            continue
        apex = zone.nodes[zone.origin_wire]
        if TYPE_DNSKEY not in apex:
            dnskeys = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.DNSKEY)
            dnskeys.update_ttl(DNSKEY_TTL)
            for key in zone_keys:
                dnskeys.add(key.dnskey)
            apex[TYPE_DNSKEY] = dnskeys
        signers[zone.origin_wire] = ZoneSigner(zone, zone_keys, inception, expiration)
    if not signers:
        return None
    signing = Signing(signers, inception, expiration, settings.refresh)
    for signer in signers.values():
        _presign_zone(signer)
    first_use = []
    for name, service in services.items():
        owner = signing.signer(zones.find_zone(name))
        if owner is None:
            continue
        sets, complete = _address_sets(service, datacenters, settings.max_presigned)
        for qtype, ttl, addresses in sets:
            owner.rrsig(name, address_rdataset(qtype, ttl, addresses), ahead=True)
        signing.service_sets[name.to_text().lower()] = len(sets)
        if not complete:
            first_use.append(name.to_text().lower())
    signing.first_use = tuple(first_use)
    signing.presigned = sum(len(s.presigned) for s in signers.values())
    signing.seconds = time.perf_counter() - started
    return signing


def resign(
    signing: Signing,
    zones: ZoneSet,
    services: Mapping[Name, ServiceLike],
    datacenters: Mapping[str, DataCenterLike],
    settings: Settings,
    now: float | None = None,
) -> Signing:
    """The same zones signed again, with new inception and expiration (the keys stay)."""
    keys = {signer.zone.origin: signer.keys for signer in signing.signers.values()}
    again = sign(zones, keys, services, datacenters, settings, now)
    assert again is not None
    return again


def _presign_zone(signer: ZoneSigner) -> None:
    zone = signer.zone
    for wire, types in zone.nodes.items():
        name = zone.names.get(wire, zone.origin if wire == zone.origin_wire else None)
        if name is None:
            continue
        cut = cut_above(zone, name, include_self=True)
        if cut is not None:
            # Delegation NS and glue are the child's, unsigned (RFC 4035 §2.2); DS is the parent's.
            if wire in zone.cuts:
                if TYPE_DS in types:
                    signer.rrsig(name, types[TYPE_DS], ahead=True)
                else:  # an insecure delegation proves its DS absent (RFC 4035 §3.1.4.1)
                    owner, nsec = denial.nodata_nsec(zone, name, types, None)
                    signer.rrsig(owner, nsec, ahead=True)
            continue
        for rdataset in types.values():
            signer.rrsig(name, rdataset, ahead=True)
    signer.rrsig(zone.origin, zone.negative_soa, ahead=True)


def _address_sets(
    service: ServiceLike, datacenters: Mapping[str, DataCenterLike], most: int
) -> tuple[list[tuple[int, int, tuple[str, ...]]], bool]:
    """The (qtype, TTL, addresses) a service can answer, at most `most`; and whether that is all.

    Any choice of up to `answers` members, in each family, with the TTL for all up and the
    degraded one, and the fallback addresses. A set's RRSIG covers its records in canonical
    order, so the order a weighted draw answers them in needs no signature of its own.
    (A drained VIP makes a set not listed here: it is signed on first use.)
    """
    members = service.datacenters
    ttls = sorted({service.ttl, service.ttl_degraded})

    def candidates() -> Iterator[tuple[str, ...]]:
        for family in (4, 6):
            yield service.fallback_addresses(family)
        for size in range(1, min(service.answers, len(members)) + 1):
            for combination in itertools.combinations(members, size):
                for family in (4, 6):
                    yield tuple(a for dc in combination for a in datacenters[dc].addresses(family))

    seen: set[tuple[int, int, frozenset[str]]] = set()
    out: list[tuple[int, int, tuple[str, ...]]] = []
    for addresses in candidates():
        qtype = TYPE_AAAA if addresses and ":" in addresses[0] else TYPE_A
        for ttl in ttls if addresses else ():
            key = (qtype, ttl, frozenset(addresses))
            if key in seen:
                continue
            if len(out) == most:
                return out, False
            seen.add(key)
            out.append((qtype, ttl, addresses))
    return out, True


# -- signed answers ---------------------------------------------------------------------------


def signed_sections(
    signing: Signing,
    zones: ZoneSet,
    resolution: Resolution,
    answer: Section,
    authority: Section,
    qname: Name,
    qtype: int,
    online: bool,
) -> tuple[Section, Section] | None:
    """The answer and authority sections with RRSIGs and the NSEC proofs they need.

    None when `online` is False and a signature would have to be made now: the caller then
    signs only for a query that asks for DNSSEC (DO).
    """
    signed_answer: Section = []
    signed_authority: Section = []
    proofs: list[tuple[Zone, Name, Rdataset]] = []
    for owner, rdataset in answer:
        signed_answer.append((owner, rdataset))
        zone = zones.find_zone(owner)
        signer = signing.signer(zone)
        if signer is None or zone is None:
            continue
        source = denial.source(zone, owner)
        rrsig = signer.rrsig(source, rdataset, online)
        if rrsig is None:
            return None
        signed_answer.append((owner, rrsig))
        if source is not owner:  # synthesized from a wildcard: prove no closer name (RFC 4035 §3.1.3.3)
            proofs.append((zone, *denial.cover(zone, owner, signer.covers)))
    for owner, rdataset in authority:
        signed_authority.append((owner, rdataset))
        zone = resolution.zone if rdataset.rdtype == TYPE_NS else zones.find_zone(owner)
        signer = signing.signer(zone)
        if signer is None or zone is None:
            continue
        if rdataset.rdtype == TYPE_NS and owner != zone.origin:  # a referral: DS or its absence, signed
            types = zone.nodes[wire_of(owner)]
            ds = types.get(TYPE_DS)
            if ds is not None:
                proofs.append((zone, owner, ds))
            else:
                proofs.append((zone, *denial.nodata_nsec(zone, owner, types, None)))
            continue
        rrsig = signer.rrsig(owner, rdataset, online)
        if rrsig is None:
            return None
        signed_authority.append((owner, rrsig))
    if resolution.rcode == NXDOMAIN or any(rdataset.rdtype == TYPE_SOA for _, rdataset in authority):
        final = qname
        if answer and answer[-1][1].rdtype == TYPE_CNAME and answer[-1][1].rdtype != qtype:
            final = answer[-1][1][0].target
        zone = zones.find_zone(final)
        signer = signing.signer(zone)
        if signer is not None and zone is not None:
            proved = denial.denial(zone, signer.covers, zones, final, qtype, resolution.rcode)
            proofs.extend((zone, *proof) for proof in proved)
    seen: set[tuple[bytes, int]] = set()
    for zone, owner, rdataset in proofs:
        key = (wire_of(owner), rdataset.rdtype)
        if key in seen:
            continue
        seen.add(key)
        signer = signing.signer(zone)
        assert signer is not None
        rrsig = signer.rrsig(owner, rdataset, online)
        if rrsig is None:
            return None
        signed_authority.extend(((owner, rdataset), (owner, rrsig)))
    return signed_answer, signed_authority
