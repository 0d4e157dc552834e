"""Where things are, as the policy reads the configuration: a location's geo map rule, a data center's angles."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable

from gslb.config.model import DataCenter, GeoRule, Service
from gslb.geo.places import Location

__all__ = ["GeoIndex", "matches", "radians", "rule_for"]


def matches(rule: GeoRule, location: Location) -> bool:
    """Whether ``location`` falls under ``rule`` (the definition GeoIndex.find keeps to)."""
    kind = rule.kind
    if kind == "continent":
        return location.continent == rule.value
    if kind == "country":
        return location.country == rule.value
    if kind == "subdivision":
        country, _, subdivision = rule.value.partition("-")
        return location.country == country and location.subdivision == subdivision
    # The client's geo network (database record or override) lies inside the rule's CIDR.
    net, network = location.network, ipaddress.ip_network(rule.value)
    return (
        net is not None
        and net.version == network.version
        and net.prefixlen >= network.prefixlen
        and int(net.network_address) & int(network.netmask) == int(network.network_address)
    )


class GeoIndex:
    """The rules of one geo map arranged for O(prefixes) lookup; build one per map for many lookups."""

    __slots__ = ("cidr", "continent", "country", "subdivision")

    def __init__(self, rules: Iterable[GeoRule]) -> None:
        self.cidr: list[tuple[int, int, int, int, GeoRule]] = []
        self.subdivision: dict[tuple[str, str], GeoRule] = {}
        self.country: dict[str, GeoRule] = {}
        self.continent: dict[str, GeoRule] = {}
        for rule in rules:
            if rule.kind == "cidr":
                net = ipaddress.ip_network(rule.value)
                self.cidr.append((net.version, net.prefixlen, int(net.netmask), int(net.network_address), rule))
            elif rule.kind == "subdivision":
                country, _, subdivision = rule.value.partition("-")
                self.subdivision.setdefault((country, subdivision), rule)
            elif rule.kind == "country":
                self.country.setdefault(rule.value, rule)
            else:
                self.continent.setdefault(rule.value, rule)
        # Longest prefix first, so the first hit is the most specific.
        self.cidr.sort(key=lambda c: -c[1])

    def find(self, location: Location) -> GeoRule | None:
        """The most specific rule for ``location``: cidr (longest first), subdivision, country, continent."""
        net = location.network
        if net is not None and self.cidr:
            version, prefixlen, address = net.version, net.prefixlen, int(net.network_address)
            for rv, rlen, mask, raddr, rule in self.cidr:
                if rv == version and prefixlen >= rlen and address & mask == raddr:
                    return rule
        country = location.country
        if country is not None:
            if self.subdivision and location.subdivision is not None:
                found = self.subdivision.get((country, location.subdivision))
                if found is not None:
                    return found
            found = self.country.get(country)
            if found is not None:
                return found
        if location.continent is not None:
            return self.continent.get(location.continent)
        return None


def rule_for(service: Service, location: Location) -> GeoRule | None:
    """The geo map rule of ``service`` that applies to ``location`` (most specific), or None."""
    return GeoIndex(service.map).find(location) if service.map else None


def radians(dc: DataCenter) -> tuple[float, float, float] | None:
    """(latitude, cos latitude, longitude) in radians for the distance sums; None without coordinates."""
    if dc.latitude is None or dc.longitude is None:
        return None
    phi = math.radians(dc.latitude)
    return phi, math.cos(phi), math.radians(dc.longitude)
