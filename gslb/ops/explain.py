"""Why a name answers what it does for a client: location, candidates, answer, TTL, ECS scope."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import dns.name
import dns.rcode
import dns.rdatatype
import geoip2.database
import geoip2.errors
import geoip2.models

from gslb.dns.state import where
from gslb.dns.wire import ClientSubnet
from gslb.dns.zones import ServiceAnswer
from gslb.geo.places import IPAddress
from gslb.health.view import HealthView
from gslb.snapshot import Snapshot
from gslb.steering.policy import Candidate, Decision, pick, spilled
from gslb.steering.spill import SpillView, client_hash, client_network


def database_record(path: Path, address: IPAddress) -> dict[str, Any] | None:
    """What the geo database itself says of `address` (through geoip2's models), or None.

    The slow path's second opinion: the record and network as MaxMind's reader sees them,
    before gslb's overrides, special blocks, merging and default, with the accuracy radius.
    """
    try:
        with geoip2.database.Reader(str(path)) as reader:
            kind = reader.metadata().database_type
            city = "City" in kind
            if not city and "Country" not in kind:
                return None
            found = reader.city(address) if city else reader.country(address)
    except (geoip2.errors.AddressNotFoundError, ValueError, TypeError, OSError):
        return None
    out: dict[str, Any] = {
        "network": str(found.traits.network) if found.traits.network else None,
        "country": found.country.iso_code,
        "registered_country": found.registered_country.iso_code,
        "continent": found.continent.code,
    }
    if isinstance(found, geoip2.models.City):
        out.update(
            city=found.city.name,
            subdivision=found.subdivisions.most_specific.iso_code,
            accuracy_radius_km=found.location.accuracy_radius,
            time_zone=found.location.time_zone,
        )
    return out


def explain_query(
    snapshot: Snapshot,
    name: str,
    qtype: str,
    client: str | None,
    subnet: str | None,
    health: HealthView | None = None,
    spill: SpillView | None = None,
) -> dict[str, Any]:
    """Everything an operator needs to see why `name` answers what it does for a client.

    `health` is the live view when a server asks; the CLI reads the last saved verdicts.
    """

    qname = dns.name.from_text(name)
    rdtype = dns.rdatatype.from_text(qtype)
    ecs: ClientSubnet | None = None
    if subnet is not None:
        network = ipaddress.ip_network(subnet, strict=False)
        location = snapshot.locate_network(network) if network.prefixlen else snapshot.locate(None)
        how = f"EDNS Client Subnet {network}"
        ecs = ClientSubnet(
            1 if network.version == 4 else 2,
            network.prefixlen,
            network.network_address.packed[: (network.prefixlen + 7) // 8],
        )
        looked_up: IPAddress | None = network.network_address if network.prefixlen else None
    elif client is not None and snapshot.no_ecs == "resolver":
        looked_up = ipaddress.ip_address(client)
        location = snapshot.locate(looked_up)
        how = f"resolver address {client}"
    else:
        looked_up = None
        location = snapshot.locate(None)
        how = "no address given: the configured default location"
    out: dict[str, Any] = {
        "name": qname.to_text(),
        "qtype": qtype,
        "located_by": how,
        "location": {
            "country": location.country,
            "continent": location.continent,
            "subdivision": location.subdivision,
            "city": location.city,
            "latitude": location.latitude,
            "longitude": location.longitude,
            "network": str(location.network) if location.network else None,
            "source": location.source,
        },
        "database_record": None if looked_up is None else database_record(snapshot.geo.path, looked_up),
    }
    resolution = snapshot.zones.lookup(qname, rdtype)
    service = resolution.service
    if service is None:
        out["kind"] = "static"
        out["rcode"] = dns.rcode.to_text(dns.rcode.Rcode(resolution.rcode))
        out["answer"] = [
            f"{owner} {rds.ttl} {dns.rdatatype.to_text(rds.rdtype)} {rd}"
            for item in resolution.answer
            if not isinstance(item, ServiceAnswer)
            for owner, rds in [item]
            for rd in rds
        ]
        out["ecs_scope"] = 0
        out["why"] = "static zone data: the same answer for every client (ECS scope 0)"
        return out
    svc = snapshot.services[service.service]
    health = health if health is not None else HealthView()
    # The same steps as the server's: the client's range in the compiled table, its ranking,
    # health applied to it, and the scope of the range.
    ranks = snapshot.ranks[service.service]
    rank, scope = where(ranks, ecs, client, snapshot.no_ecs == "resolver")
    decision = pick(
        svc,
        snapshot.config.datacenters,
        ranks.rankings[rank],
        health,
        4 if service.qtype == dns.rdatatype.A else 6,
        location,
    )
    out["kind"] = "service"
    out["service"] = {"name": svc.name, "policy": svc.policy, "answers": svc.answers, "all_down": svc.all_down}
    out["candidates"] = [_candidate(c) for c in decision.candidates]
    out["answer"] = list(decision.addresses)
    out["rcode"] = "SERVFAIL" if decision.rcode == 2 else "NOERROR"
    out["datacenters"] = list(decision.datacenters)
    out["ttl"] = decision.ttl
    out["ecs_scope"] = scope if decision.location_dependent else 0
    out["why"] = decision.reason
    if spill is not None:
        family = 4 if service.qtype == dns.rdatatype.A else 6
        ranking = ranks.rankings[rank]
        away = spilled(svc, snapshot.config.datacenters, ranking, health, family, decision, spill.shares, spill.full)
        if away is not None:
            _spill(out, spill, decision, away, subnet, client)
    return out


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "name": c.name,
        "up": c.up,
        "distance_km": None if c.distance_km is None else round(c.distance_km),
        "rank": c.rank,
        "weight": c.weight,
        "note": c.note,
    }


def _spill(
    out: dict[str, Any],
    spill: SpillView,
    decision: Decision,
    away: Decision,
    subnet: str | None,
    client: str | None,
) -> None:
    """Say whether this client is among the first choice's spilled ones, as the server decides it."""
    first = decision.datacenters[0]
    share = spill.share(first)
    hashed: tuple[int, int, int | None] | None = None
    if subnet is not None:
        network = ipaddress.ip_network(subnet, strict=False)
        hashed = (network.version, int(network.network_address), network.prefixlen)
    elif client is not None:
        address = ipaddress.ip_address(client)
        hashed = (address.version, int(address), None)
    if hashed is None:
        out["spill"] = {"from": first, "share": share, "spilled": False, "why": "no client address: not spilled"}
        return
    version, value, prefix = hashed
    bits, network_value = client_network(version, value, prefix)
    mark = client_hash(version, network_value, bits)
    moved = mark < share
    text = f"{(ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address)(network_value)}/{bits}"
    because = spill.why.get(first) or "load above target"
    out["spill"] = {
        "from": first,
        "to": list(away.datacenters),
        "share": share,
        "client_network": text,
        "hash": round(mark, 4),
        "spilled": moved,
        "why": (
            f"{first} spills {share:.0%} of its clients ({because}); {text} hashes to {mark:.3f}, "
            + (
                f"below {share:.3f}: spilled to {', '.join(away.datacenters)}"
                if moved
                else f"not below {share:.3f}: stays"
            )
        ),
    }
    if subnet is not None:
        out["ecs_scope"] = max(out["ecs_scope"], bits)  # narrowed to the hashed network
    if moved:
        out["answer"] = list(away.addresses)
        out["datacenters"] = list(away.datacenters)
        out["ttl"] = away.ttl
        out["candidates"] = [_candidate(c) for c in away.candidates]
        out["why"] = away.reason
