"""Choosing a service's data centers for one client, from its location and health (pure)."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Final, Protocol

from gslb.config.model import DataCenter, GeoRule, Service
from gslb.geo.places import EARTH_RADIUS_KM, Location
from gslb.steering.rules import radians, rule_for

__all__ = [
    "SERVFAIL",
    "Candidate",
    "Decision",
    "Explanation",
    "HealthSource",
    "Ranking",
    "choose",
    "pick",
    "rank",
    "spilled",
]

SERVFAIL: Final = 2

_DIAMETER: Final = 2 * EARTH_RADIUS_KM
_sin, _cos, _asin, _sqrt, _radians = math.sin, math.cos, math.asin, math.sqrt, math.radians
_by_key = itemgetter(0)
_NOWHERE: Final = Location()


class HealthSource(Protocol):
    """What choose() needs of a health view (gslb.health.view.HealthView fits).

    ``is_up`` is asked of data center names and of VIPs (as text): a VIP an operator
    drained is down. A view may also have ``drains``: False promises that nothing is
    drained, and spares choose() asking about each VIP.
    """

    def is_up(self, name: str) -> bool: ...

    def status(self, name: str) -> object: ...  # with .reason (and .drained), or None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One data center as the policy saw it, for `gslb explain` and the status page."""

    name: str
    up: bool
    distance_km: float | None  # client → data center (great circle), where it was computed
    rank: int | None  # 1-based place in the policy's preference order (weighted: the draw)
    weight: float | None  # the weight, for the weighted policy
    note: str  # "chosen", "down: timeout", "not in the order", …


class Explanation:
    """Why a decision came out as it did, put into words only when someone asks.

    The DNS path never reads it, so choose() only records its working here; the reason
    line and the candidates are built on first access (by `gslb explain`, the status page).
    """

    __slots__ = (
        "_distances", "_value", "all_down", "chosen", "datacenters", "family", "fell_through",
        "health", "location", "ranked", "rule", "service", "spilled", "up",
    )  # fmt: skip

    def __init__(
        self,
        service: Service,
        datacenters: Mapping[str, DataCenter],
        location: Location,
        health: HealthSource,
        family: int,
        up: Mapping[str, bool],
        ranked: Sequence[str],
        chosen: Sequence[str],
        all_down: bool,
        rule: GeoRule | None = None,
        fell_through: bool = False,
        spilled: tuple[str, ...] = (),
    ) -> None:
        self.service = service
        self.datacenters = datacenters
        self.location = location
        self.health = health
        self.family = family
        self.up = up
        self.ranked = ranked  # the policy's preference order; other members are unranked
        self.chosen = chosen
        self._distances: Mapping[str, float] | None = None
        self.all_down = all_down
        self.rule = rule
        self.fell_through = fell_through
        self.spilled = spilled  # passed over for load (gslb.steering.spill), not for health
        self._value: tuple[str, tuple[Candidate, ...]] | None = None

    @property
    def distances(self) -> Mapping[str, float]:
        """Client to each member with coordinates (great circle, km), worked out on first use."""
        if self._distances is None:
            found: dict[str, float] = {}
            _nearest(self.service.datacenters, self.datacenters, self.location, found, bias=False)
            self._distances = found
        return self._distances

    @property
    def reason(self) -> str:
        return self._render()[0]

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return self._render()[1]

    def _render(self) -> tuple[str, tuple[Candidate, ...]]:
        if self._value is None:
            self._value = (self._reason(), self._candidates())
        return self._value

    def _down(self, name: str) -> str:
        status = self.health.status(name)
        if getattr(status, "drained", False):
            return "drained"
        if self.health.is_up(name):
            return f"every {_family_name(self.family)} VIP drained"
        return str(getattr(status, "reason", "") or "failing")

    def _km(self, name: str) -> str:
        d = self.distances.get(name)
        return name if d is None else f"{name} ({d:.0f} km)"

    def _missing(self) -> list[str]:
        return [n for n in self.chosen if not self.datacenters[n].addresses(self.family)]

    def _reason(self) -> str:
        service, chosen, family = self.service, self.chosen, _family_name(self.family)
        downs = "; ".join(f"{m} down: {self._down(m)}" for m in service.datacenters if not self.up[m])
        if self.all_down and service.all_down != "open":
            mode = service.all_down
            if mode == "fallback":
                text = "fallback " + (
                    ", ".join(service.fallback_addresses(self.family)) or f"(no {family} address: NODATA)"
                )
            else:
                text = "SERVFAIL" if mode == "servfail" else "NODATA"
            return f"all down (all_down = {mode}): {text}; {downs}"
        policy = service.policy
        if policy == "nearest":
            if self.location.latitude is None or self.location.longitude is None:
                head = "no client coordinates, member order"
            else:
                head = "nearest" if self.all_down else "nearest healthy"
            text = f"{head}: " + ", ".join(self._km(n) for n in chosen)
        elif policy == "geo":
            rule = self.rule
            label = f"geo rule {rule.text}" if rule is not None else "geo default"
            if self.fell_through:
                listed = rule.order if rule is not None else service.default
                text = f"{label}: {', '.join(listed)} down; nearest healthy of the rest: " + ", ".join(
                    self._km(n) for n in chosen
                )
            else:
                text = f"{label}: " + ", ".join(chosen)
        elif policy == "failover":
            text = "failover: " + ", ".join(chosen)
        else:
            weights = self.datacenters
            total = sum(weights[m].weight for m in service.datacenters if self.up[m] or self.all_down)
            text = "weighted draw: " + ", ".join(f"{n} (weight {weights[n].weight:g} of {total:g})" for n in chosen)
        if downs:
            text += "; " + downs
        if self.spilled:
            text += "; spilled past " + ", ".join(self.spilled) + " (load above target)"
        if self.all_down:
            text = "all down, answering as if up (all_down = open): " + text
        missing = self._missing()
        if missing:
            text += f"; no {family} VIP in {', '.join(missing)}"
            if len(missing) == len(chosen):
                text += " (NODATA)"
        return text

    def _candidates(self) -> tuple[Candidate, ...]:
        weighted = self.service.policy == "weighted"
        missing = self._missing()
        family = _family_name(self.family)
        out: list[Candidate] = []
        unranked = [m for m in self.service.datacenters if m not in self.ranked]
        ranks = [*enumerate(self.ranked, 1), *((None, m) for m in unranked)]
        for rank, name in ranks:
            if name in self.chosen:
                note = f"chosen, no {family} VIP" if name in missing else "chosen"
            elif not self.up[name]:
                note = f"down: {self._down(name)}"
            elif name in self.spilled:
                note = "spilled: load above target"
            elif rank is None and self.service.policy == "geo":
                note = "not in the order"
            else:
                note = ""
            weight = self.datacenters[name].weight if weighted else None
            out.append(Candidate(name, self.up[name], self.distances.get(name), rank, weight, note))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer for one service, one client location and one address family."""

    addresses: tuple[str, ...]  # of the requested family; empty → NODATA (or SERVFAIL)
    rcode: int  # 0, or SERVFAIL for all_down = "servfail"
    ttl: int  # ttl, or ttl_degraded while any member is down
    datacenters: tuple[str, ...]  # the chosen data centers, in order
    location_dependent: bool  # False → the same for every client (ECS scope 0)
    cacheable: bool  # False when the answer is drawn at random per query (weighted)
    all_down: bool
    explanation: Explanation = field(repr=False, compare=False)

    @property
    def reason(self) -> str:
        """One human line: "nearest healthy: eu (412 km); us down: timeout"."""
        return self.explanation.reason

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Every member, in the order the policy ranked them (unranked ones last)."""
        return self.explanation.candidates


def _family_name(family: int) -> str:
    return "IPv4" if family == 4 else "IPv6"


def _nearest(
    names: Sequence[str],
    datacenters: Mapping[str, DataCenter],
    location: Location,
    distances: dict[str, float],
    bias: bool,
) -> list[str]:
    """``names`` nearest first (plus bias_km when ``bias``); those without coordinates last.

    Fills ``distances`` with the great-circle distance of each data center with coordinates.
    Without client coordinates the order is kept as given.
    """
    lat, lon = location.latitude, location.longitude
    if lat is None or lon is None:
        return list(names)
    # gslb.geo.database.distance_km(), with each data center's trigonometry precomputed (a test
    # holds the two together).
    phi1 = _radians(lat)
    cos1, lam1 = _cos(phi1), _radians(lon)
    keyed: list[tuple[float, str]] = []
    for name in names:
        dc = datacenters[name]
        r = radians(dc)
        if r is None:
            keyed.append((math.inf, name))
            continue
        a = _sin((r[0] - phi1) * 0.5)
        b = _sin((r[2] - lam1) * 0.5)
        h = a * a + cos1 * r[1] * b * b
        d = _DIAMETER * _asin(_sqrt(h) if h < 1.0 else 1.0)
        distances[name] = d
        keyed.append((d + dc.bias_km if bias else d, name))
    keyed.sort(key=_by_key)  # stable: equal distances keep the given order
    return [name for _, name in keyed]


def _first_up(ranked: Sequence[str], up: Mapping[str, bool], k: int) -> list[str]:
    chosen: list[str] = []
    for name in ranked:
        if up[name]:
            chosen.append(name)
            if len(chosen) == k:
                break
    return chosen


def _draw(names: Sequence[str], datacenters: Mapping[str, DataCenter], k: int, rng: random.Random | None) -> list[str]:
    """``k`` of ``names`` drawn by weight without replacement (all of them, shuffled, if fewer)."""
    pool = list(names)
    weights = [datacenters[name].weight for name in pool]
    total = sum(weights)
    uniform = rng.random if rng is not None else random.random
    chosen: list[str] = []
    while pool and len(chosen) < k:
        x = uniform() * total
        last = len(pool) - 1
        i = 0
        for i, w in enumerate(weights):
            x -= w
            if x < 0 or i == last:
                break
        chosen.append(pool.pop(i))
        total -= weights.pop(i)
    return chosen


@dataclass(frozen=True, slots=True)
class Ranking:
    """A service's data centers in order of preference for one place, before health.

    ``primary`` is the order the policy prefers; ``rest`` (geo maps only) the other members,
    nearest first, which take over only when every data center of ``primary`` is down.
    This is what the compiled tables store per address range (gslb.steering.ranks).
    """

    primary: tuple[str, ...]
    rest: tuple[str, ...] = ()
    rule: GeoRule | None = None


def rank(service: Service, datacenters: Mapping[str, DataCenter], location: Location) -> Ranking:
    """The order of preference of ``service``'s data centers for a client at ``location``."""
    members = service.datacenters
    policy = service.policy
    distances: dict[str, float] = {}  # the explanation works its own out when asked
    if policy == "nearest":
        return Ranking(tuple(_nearest(members, datacenters, location, distances, bias=True)))
    if policy == "geo":
        rule = rule_for(service, location)
        primary = rule.order if rule is not None else service.default
        rest = _nearest([m for m in members if m not in primary], datacenters, location, distances, bias=False)
        return Ranking(tuple(primary), tuple(rest), rule)
    if policy == "failover":
        return Ranking(tuple(service.order))
    return Ranking(tuple(members))


def choose(
    service: Service,
    datacenters: Mapping[str, DataCenter],
    location: Location,
    health: HealthSource,
    family: int,
    rng: random.Random | None = None,
) -> Decision:
    """Decide the answer to an A (``family`` 4) or AAAA (6) query for ``service``.

    ``rank`` orders the members for the location, ``pick`` applies health to that order:
    the compiled tables store the first step per address range and call only the second.
    """
    return pick(service, datacenters, rank(service, datacenters, location), health, family, location, rng)


def spilled(
    service: Service,
    datacenters: Mapping[str, DataCenter],
    ranking: Ranking,
    health: HealthSource,
    family: int,
    decision: Decision,
    shares: Mapping[str, float],
    full: Collection[str] = (),
    location: Location | None = None,
) -> Decision | None:
    """The answer for the clients of `ranking` spilled from its first choice, or None if it spills none.

    `decision` is `pick`'s answer for the ranking; `shares` the share each data center spills,
    `full` those at their max (gslb.steering.spill). Spilled clients get the next choice past
    the first and past any data center at its max; past the first only when every other is at
    its max; not at all when no other member is up. A weighted draw never spills.
    """
    if not shares or not decision.cacheable or not decision.datacenters or decision.all_down:
        return None
    first = decision.datacenters[0]
    if shares.get(first, 0.0) <= 0:
        return None
    for avoid in ({first, *full}, {first}):
        other = pick(service, datacenters, ranking, health, family, location, avoid=avoid)
        if other.datacenters and other.datacenters[0] != first:
            return other
    return None


def pick(
    service: Service,
    datacenters: Mapping[str, DataCenter],
    ranking: Ranking,
    health: HealthSource,
    family: int,
    location: Location | None = None,
    rng: random.Random | None = None,
    avoid: Collection[str] = (),
) -> Decision:
    """Apply health to a ranking: the answer for every client the ranking stands for.

    nearest   members ranked by great-circle distance + bias_km from the client; without
              client coordinates in member order (the caller substitutes the default
              location first, so that is rare).
    geo       the order of the most specific matching map rule, else ``default``; the first
              ``answers`` healthy data centers *of that order*.  Only when all of them are
              down do the other members take over, nearest first.
    failover  the order (``order``, else ``datacenters``); the first ``answers`` healthy.
    weighted  ``answers`` of the healthy members drawn by weight without replacement, per
              query (``cacheable`` is False unless every healthy member is answered).

    The answer is the chosen data centers' VIPs of the requested family.  The choice does not
    depend on the family: a chosen data center without a VIP of that family adds nothing (all
    of them: NODATA), so a dual-stack client is never sent to one site over IPv4 and to
    another over IPv6.  The one exception is an operator's: a VIP that ``health`` reports
    down (drained) is never answered, and a data center whose VIPs of the family are all
    drained counts as down for that family (rather than answering NODATA).  When every
    member is down, ``all_down`` decides: "open" applies the policy as if all were up,
    "fallback" answers the fallback addresses, "nodata" nothing, "servfail" SERVFAIL.
    While any member is down the TTL is ``ttl_degraded``.

    ``location_dependent`` is False when no other client could get another answer now: one
    healthy member, failover, weighted, a geo map without rules, every all-down mode but open.
    ``location`` only feeds the explanation.

    ``avoid``: data centers these clients are spilled away from (their load is above target,
    gslb.steering.spill), passed over like down ones unless no other member is up; they do
    not shorten the TTL.
    """
    where = location if location is not None else _NOWHERE
    members = service.datacenters
    is_up = health.is_up
    # The VIPs to answer, drained ones left out; None: nothing is drained (the common case).
    vips: dict[str, tuple[str, ...]] | None = None
    if getattr(health, "drains", True):
        up: dict[str, bool] = {}
        vips = {}
        for name in members:
            vips[name] = serving = tuple(filter(is_up, datacenters[name].addresses(family)))
            up[name] = is_up(name) and (bool(serving) or not datacenters[name].addresses(family))
    else:
        up = {name: is_up(name) for name in members}
    n_up = sum(up.values())
    all_down = n_up == 0
    ttl = service.ttl if n_up == len(members) else service.ttl_degraded

    if all_down and service.all_down != "open":
        mode = service.all_down
        explanation = Explanation(service, datacenters, where, health, family, up, (), (), True)
        return Decision(
            service.fallback_addresses(family) if mode == "fallback" else (),
            SERVFAIL if mode == "servfail" else 0,
            ttl,
            (),
            False,
            True,
            True,
            explanation,
        )

    # With every member down ("open"), apply the policy as if all were up.
    alive = dict.fromkeys(members, True) if all_down else up
    n_alive = len(members) if all_down else n_up
    spilled: tuple[str, ...] = ()
    if avoid:
        rest = {name: ok and name not in avoid for name, ok in alive.items()}
        if any(rest.values()):
            spilled = tuple(name for name in members if name in avoid and alive[name])
            alive = rest
    policy = service.policy
    answers = service.answers
    fell_through = False
    cacheable = True
    ranked: Sequence[str] = ranking.primary
    if policy == "nearest":
        chosen = _first_up(ranked, alive, answers)
        varies = n_alive > 1
    elif policy == "geo":
        chosen = _first_up(ranked, alive, answers)
        if not chosen:
            # Every data center the order names is down: rather than fail, the other
            # members take over, nearest first.
            fell_through = True
            chosen = _first_up(ranking.rest, alive, answers)
            ranked = [*ranked, *ranking.rest]
        # Without map rules every client gets the default order, wherever it is.
        varies = n_alive > 1 and (bool(service.map) or fell_through)
    elif policy == "failover":
        chosen = _first_up(ranked, alive, answers)
        varies = False
    else:  # weighted
        healthy = members if n_alive == len(members) else [m for m in members if alive[m]]
        chosen = _draw(healthy, datacenters, answers, rng)
        # When every healthy member is answered the set is fixed; only its order is random.
        cacheable = len(chosen) == len(healthy)
        ranked = chosen
        varies = False

    if vips is not None:
        # A data center with every VIP drained is chosen only when all are down
        # (all_down = "open"): answer its VIPs then rather than nothing.
        addresses = tuple(a for name in chosen for a in vips[name] or datacenters[name].addresses(family))
    elif len(chosen) == 1:
        addresses = datacenters[chosen[0]].addresses(family)
    else:
        addresses = tuple(a for name in chosen for a in datacenters[name].addresses(family))
    explanation = Explanation(
        service, datacenters, where, health, family, up, ranked, chosen, all_down, ranking.rule,
        fell_through, spilled,
    )  # fmt: skip
    return Decision(addresses, 0, ttl, tuple(chosen), varies, cacheable, all_down, explanation)
