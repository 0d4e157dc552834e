"""Each service's geo policy compiled: address ranges -> a ranking of data centers, merged.

A ranking (gslb.steering.policy.Ranking) is the order of preference before health. It is worked out
once per distinct location of the compiled geo table (gslb.geo.table), vectorized where the
policy is a distance sort, and then per block; neighbouring blocks with the same ranking are
merged into one range. A query is one bisect; health is applied to the ranking afterwards
(gslb.steering.policy.pick), so a health change re-picks from a handful of rankings and locates
nothing again. The merge is also the widest correct ECS scope (RFC 7871 §7.2.1): the largest
aligned network around the client's address inside its range gets one ranking throughout.
"""

from __future__ import annotations

import array
import bisect
import ipaddress
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from gslb.config.model import DataCenter, GeoRule, Service
from gslb.geo.places import EARTH_RADIUS_KM, MAPPED_BASE, MAPPED_MASK, Location
from gslb.geo.table import Blocks, GeoTable
from gslb.steering.policy import Ranking, rank
from gslb.steering.rules import GeoIndex, radians

__all__ = ["RankTable", "compile_service"]


class RankTable:
    """Sorted range starts per family and the ranking index of each range.

    The arrays are plain `array` objects (and a list for IPv6 starts in Python) so that
    the pure-Python fast path bisects them and the compiled loop reads their buffers.
    """

    __slots__ = (
        "_bounds4",
        "default_rank",
        "rankings",
        "ranks4",
        "ranks6",
        "single",
        "starts4",
        "starts6",
        "starts6_hi",
        "starts6_lo",
    )

    def __init__(
        self,
        rankings: list[Ranking],
        default_rank: int,
        v4: tuple[Sequence[int], Sequence[int]] = ((0,), (0,)),
        v6: tuple[Sequence[int], Sequence[int]] = ((0,), (0,)),
    ) -> None:
        self.rankings = rankings
        self.default_rank = default_rank
        self.single = len(rankings) == 1
        self.starts4 = array.array("I", v4[0])
        self._bounds4 = list(v4[0])  # bisect reads a list twice as fast as an array
        self.ranks4 = array.array("I", v4[1])
        self.starts6 = list(v6[0])
        self.starts6_hi = array.array("Q", (s >> 64 for s in self.starts6))
        self.starts6_lo = array.array("Q", (s & 0xFFFFFFFFFFFFFFFF for s in self.starts6))
        self.ranks6 = array.array("I", v6[1])

    @classmethod
    def fixed(cls, ranking: Ranking) -> RankTable:
        """One ranking for every client (failover, weighted, geo without rules)."""
        return cls([ranking], 0)

    def locate(self, version: int, value: int) -> tuple[int, int]:
        """The ranking index and ECS scope for address `value` of IP `version`."""
        if version == 6 and value & MAPPED_MASK == MAPPED_BASE:
            found, scope = self.locate(4, value & 0xFFFFFFFF)
            return found, 96 + scope
        if version == 4:
            starts: Sequence[int] = self._bounds4
            ranks = self.ranks4
            bits = 32
        else:
            starts = self.starts6
            ranks = self.ranks6
            bits = 128
        i = bisect.bisect_right(starts, value) - 1
        hi = starts[i + 1] - 1 if i + 1 < len(starts) else -1
        return ranks[i], bits - aligned(value, starts[i], hi, bits)


def aligned(value: int, lo: int, hi: int, bits: int) -> int:
    """log2 of the largest aligned block around `value` inside [lo, hi] (hi -1: to the end)."""
    k1 = bits if lo == 0 else (value ^ (lo - 1)).bit_length() - 1
    k2 = bits if hi < 0 else (value ^ (hi + 1)).bit_length() - 1
    return k1 if k1 < k2 else k2


# --------------------------------------------------------------------------- compiling


def _distances(locations: Sequence[Location], datacenters: Sequence[DataCenter]) -> npt.NDArray[np.float64]:
    """Great-circle km from every location (rows) to every data center (columns); inf where unknown.

    The same haversine as gslb.steering.policy's, vectorized.
    """
    lat = np.array([math.nan if loc.latitude is None else loc.latitude for loc in locations])
    lon = np.array([math.nan if loc.longitude is None else loc.longitude for loc in locations])
    phi1 = np.radians(lat)
    cos1, lam1 = np.cos(phi1), np.radians(lon)
    out = np.full((len(locations), len(datacenters)), np.inf)
    for j, dc in enumerate(datacenters):
        r = radians(dc)
        if r is None:
            continue
        a = np.sin((r[0] - phi1) * 0.5)
        b = np.sin((r[2] - lam1) * 0.5)
        h = a * a + cos1 * r[1] * b * b
        d = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0)))
        out[:, j] = np.where(np.isnan(d), np.inf, d)
    return out


def _nearest_orders(
    names: Sequence[str], datacenters: Mapping[str, DataCenter], locations: Sequence[Location], bias: bool
) -> tuple[list[tuple[str, ...]], npt.NDArray[np.int64]]:
    """The distinct orders of `names` nearest first over all locations, and each location's order.

    Without client coordinates the given order is kept (every key is inf, and the sort is stable).
    """
    if len(names) <= 1:
        return [tuple(names)], np.zeros(len(locations), np.int64)
    dcs = [datacenters[n] for n in names]
    keys = _distances(locations, dcs)
    if bias:
        keys = keys + np.array([dc.bias_km for dc in dcs])
    order = np.argsort(keys, axis=1, kind="stable")
    rows, inverse = np.unique(order, axis=0, return_inverse=True)
    return [tuple(names[j] for j in row) for row in rows.tolist()], np.asarray(inverse, np.int64).reshape(-1)


def _location_rankings(
    service: Service, datacenters: Mapping[str, DataCenter], locations: Sequence[Location]
) -> tuple[list[Ranking], npt.NDArray[np.int64]]:
    """The distinct rankings over all locations, and each location's index into them."""
    members = service.datacenters
    if service.policy == "nearest":
        orders, inverse = _nearest_orders(members, datacenters, locations, bias=True)
        return [Ranking(order) for order in orders], inverse
    # geo: the rule by subdivision, country or continent (cidr rules go by block, below),
    # worked out once per distinct place; then the rest of the members nearest first.
    rules: list[GeoRule | None] = []
    rule_index: dict[tuple[str | None, str | None, str | None], int] = {}
    by_rule: dict[int, int] = {}  # id(rule) -> index into rules
    place_rule = np.empty(len(locations), np.int64)
    geo_index = GeoIndex(service.map)
    for k, loc in enumerate(locations):
        place = (loc.country, loc.subdivision, loc.continent)
        found = rule_index.get(place)
        if found is None:
            rule = geo_index.find(loc)
            found = by_rule.get(id(rule))
            if found is None:
                found = by_rule[id(rule)] = len(rules)
                rules.append(rule)
            rule_index[place] = found
        place_rule[k] = found
    rankings: list[Ranking] = []
    loc_rank = np.empty(len(locations), np.int64)
    for r, rule in enumerate(rules):
        primary = rule.order if rule is not None else service.default
        rest = tuple(m for m in members if m not in primary)
        where = np.flatnonzero(place_rule == r)
        orders, inverse = _nearest_orders(rest, datacenters, [locations[k] for k in where.tolist()], bias=False)
        loc_rank[where] = inverse + len(rankings)
        rankings += [Ranking(tuple(primary), order, rule) for order in orders]
    return rankings, loc_rank


def compile_service(
    service: Service, datacenters: Mapping[str, DataCenter], table: GeoTable, default: Location
) -> RankTable:
    """The ranking table of one service over the compiled geo table."""
    if service.policy in ("failover", "weighted") or (
        service.policy == "geo" and not service.map and set(service.default) >= set(service.datacenters)
    ):
        return RankTable.fixed(rank(service, datacenters, default))
    rankings, loc_rank = _location_rankings(service, datacenters, table.locations)
    index: dict[Ranking, int] = {}
    for ranking in rankings:
        index.setdefault(ranking, len(index))
    # The distinct rankings are distinct already; setdefault keeps the first index of each.
    # The default location stands for unknown places; it may differ from table.locations[0]
    # only in the network it carries, which rankings do not read (cidr rules go by block).
    default_rank = index.setdefault(rank(service, datacenters, default), len(index))
    families = []
    for blocks in (table.v4, table.v6):
        block_rank = loc_rank[blocks.loc]
        _apply_cidr_rules(service, datacenters, table, blocks, block_rank, index)
        keep = np.ones(len(blocks), bool)
        keep[1:] = block_rank[1:] != block_rank[:-1]
        lo = blocks.lo[keep].tolist()
        if blocks.version == 6:
            starts = [h << 64 | low for h, low in zip(blocks.hi[keep].tolist(), lo, strict=True)]
        else:
            starts = lo
        families.append((starts, block_rank[keep].tolist()))
    ordered = sorted(index, key=index.__getitem__)
    return RankTable(ordered, default_rank, families[0], families[1])


def _apply_cidr_rules(
    service: Service,
    datacenters: Mapping[str, DataCenter],
    table: GeoTable,
    blocks: Blocks,
    block_rank: npt.NDArray[np.int64],
    index: dict[Ranking, int],
) -> None:
    """Blocks inside a `cidr:` rule take its order; the most specific rule wins (laid last)."""
    rules = [r for r in service.map if r.kind == "cidr"]
    if service.policy != "geo" or not rules:
        return
    members = service.datacenters
    for rule in sorted(rules, key=lambda r: ipaddress.ip_network(r.value).prefixlen):
        network = ipaddress.ip_network(rule.value)
        if network.version != blocks.version:
            continue
        start = int(network.network_address)
        first = blocks.find(start)
        last = blocks.find(start + network.num_addresses - 1)
        rest = tuple(m for m in members if m not in rule.order)
        memo: dict[int, int] = {}
        for i in range(first, last + 1):
            loc = int(blocks.loc[i])
            found = memo.get(loc)
            if found is None:
                order = _nearest_orders(rest, datacenters, [table.locations[loc]], bias=False)[0][0]
                ranking = Ranking(rule.order, order, rule)
                found = memo[loc] = index.setdefault(ranking, len(index))
            block_rank[i] = found
