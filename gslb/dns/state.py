"""What an answerer holds: the State of one snapshot and one health view, and its parts.

A State keeps the caches that live exactly as long as it does: static and negative replies
(handed on while the snapshot stays), the picks per (question, ranking), the *steered*
markers for questions a service answers, and the spill splits; `where` finds a client's
ranking in a service's table. Counters are what the query path counts.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gslb.config.model import Service
from gslb.dns.cookies import Cookies, shared
from gslb.dns.replies import Entry
from gslb.dns.rrl import RateLimiter
from gslb.dns.wire import TYPE_A, ClientSubnet, Query
from gslb.dns.zones import Resolution
from gslb.steering.ranks import RankTable
from gslb.steering.spill import NO_SPILL, SpillView, client_hash, client_network

if TYPE_CHECKING:
    from gslb.health.view import HealthView
    from gslb.snapshot import Snapshot


LATENCY_SAMPLE_MASK = 63  # time one query in 64: two clock reads cost a few % of a fast answer
LATENCY_BOUNDS = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3)
CACHE_LIMIT = 200_000  # entries per cache; cleared whole when full (cheap, and rare)
UNCACHED = object()  # marks an answer drawn afresh every time (weighted services)
_ADDRESSES: dict[str, tuple[int, int]] = {}


@dataclass
class Counters:
    """Plain counters the query path bumps; metrics read them (no locks on the hot path)."""

    general: int = 0
    dropped: int = 0
    formerr: int = 0
    servfail: int = 0
    truncated: int = 0
    refused: int = 0
    by_key: dict[tuple[bool, int, int], int] = field(default_factory=dict)  # (tcp, qtype, rcode)
    by_answer: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, first datacenter)
    # Query latency, one query in LATENCY_SAMPLE_MASK + 1 timed: bucket counts by upper bound.
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    ticks: int = 0  # every query handled
    rrl_limited: int = 0  # UDP replies over the rate limit (dropped or slipped; counted in log-only mode too)
    rrl_slipped: int = 0  # of those, sent as a minimal TC (or BADCOOKIE) reply

    @property
    def fast(self) -> int:
        """Queries answered from cached parts: every one not sent down the general path."""
        return self.ticks - self.general

    def observe(self, seconds: float) -> None:
        self.latency_buckets[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1


class Steered:
    """A question a service answers: what the zones resolved, and the service's ranking table."""

    __slots__ = ("family", "ranks", "resolution", "service")

    def __init__(self, resolution: Resolution, service: Service, ranks: RankTable):
        self.resolution = resolution
        self.service = service
        self.ranks = ranks
        answer = resolution.service
        assert answer is not None
        self.family = 4 if answer.qtype == TYPE_A else 6


class Split:
    """A ranking whose first choice spills a share of its clients (gslb.steering.spill).

    Which answer a client gets is decided per query by the hash of its network, and its ECS
    scope narrows to that network. Not an Entry: the compiled loop hands such queries to Python.
    """

    __slots__ = ("share", "spill", "stay")

    def __init__(self, stay: Entry, spill: Entry, share: float):
        self.stay = stay
        self.spill = spill
        self.share = share

    def choose(self, version: int, address: int, prefix: int | None) -> tuple[Entry, int]:
        """The entry for a client at `address` (an ECS source of `prefix` bits, or a resolver's
        address when None), and the prefix length of the network hashed."""
        bits, network = client_network(version, address, prefix)
        return (self.spill if client_hash(version, network, bits) < self.share else self.stay), bits


class State:
    """What one snapshot and one health view answer, with caches that live exactly as long.

    The caches of the snapshot (static answers, negative answers, which questions are
    steered) are handed from one State to the next while the snapshot stays: a health
    change only starts a new `picks`, the encoded answers per (question, ranking).
    """

    __slots__ = (
        "by_resolver",
        "cookies",
        "health",
        "index",
        "negative",
        "picks",
        "refused",
        "rrl",
        "snapshot",
        "spill",
        "static",
    )
    static: dict[bytes, Any]  # question key -> Entry | Steered | UNCACHED
    # NXDOMAIN by (zone origin, question name length, QTYPE): the same bytes for every
    # name of that length, since answers compress only against the zone's own suffix.
    negative: dict[tuple[bytes, int, bytes], Entry]
    refused: dict[bytes, Entry]  # names outside every zone, by QTYPE
    spill: SpillView

    def __init__(
        self, snapshot: Snapshot, health: HealthView, previous: State | None = None, spill: SpillView | None = None
    ):
        self.snapshot = snapshot
        # The spill shares in force: who of a loaded data center's clients go to their next choice.
        self.spill = spill if spill is not None else previous.spill if previous is not None else NO_SPILL
        self.by_resolver = snapshot.no_ecs == "resolver"
        self.health = health
        self.index = snapshot.index
        if previous is not None and previous.snapshot is snapshot:
            self.static, self.negative, self.refused = previous.static, previous.negative, previous.refused
        else:
            self.static, self.negative, self.refused = {}, {}, {}
        # (question key, ranking index) -> Entry, or UNCACHED for answers drawn per query
        self.picks: dict[tuple[bytes, int], Any] = {}
        # DNS Cookies and rate limiting, None when off ([cookies], [rrl]); the limiter's buckets
        # belong to the Answerer, handed from State to State (Answerer._limits).
        settings = snapshot.config.cookies
        self.cookies: Cookies | None = (
            None if settings is None else shared(settings.secrets, settings.large_answer_size)
        )
        self.rrl: RateLimiter | None = None


def where(ranks: RankTable, subnet: ClientSubnet | None, source: str | None, by_resolver: bool) -> tuple[int, int]:
    """The client's ranking index and ECS scope: from ECS, else the resolver's address, else the default.

    The one place that decides which address stands for the client; the server, `gslb explain`
    and the query log all come through here (the fast path inlines the same steps).
    """
    if subnet is not None:
        if subnet.source_prefix == 0:  # RFC 7871 §7.1.2: an answer that ignores the client
            return ranks.default_rank, 0
        return ranks.locate(*subnet_value(subnet))
    if not by_resolver or source is None:
        return ranks.default_rank, 0
    return ranks.locate(*address_value(source))


def subnet_value(subnet: ClientSubnet) -> tuple[int, int]:
    """(IP version, integer) of an ECS option's address, its missing octets zero."""
    size = 4 if subnet.family == 1 else 16
    return (4 if size == 4 else 6), int.from_bytes(subnet.address, "big") << ((size - len(subnet.address)) << 3)


def address_value(source: str) -> tuple[int, int]:
    """(IP version, integer) of an address literal; resolvers are few, so remembered."""
    found = _ADDRESSES.get(source)
    if found is None:
        address = ipaddress.ip_address(source.split("%")[0])
        found = (address.version, int(address))
        remember(_ADDRESSES, source, found)
    return found


def remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) > CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def question_key(query: Query) -> bytes:
    name = b"".join(bytes((len(label),)) + label for label in query.labels)
    return name.lower() + query.question[len(name) :]


def negative_entry(st: State, qname: bytes, qtype: bytes) -> Entry | None:
    """The cached NXDOMAIN or REFUSED for a name never asked before, if it is one.

    `qname` is lower-case wire form. Mirrors ZoneSet.lookup: the longest zone origin that is
    a suffix; nothing at or above the name that exists, delegates or has a wildcard.
    """
    offsets = []
    pos = 0
    while qname[pos]:
        offsets.append(pos)
        pos += qname[pos] + 1
    offsets.append(pos)
    index = st.snapshot.index
    depth = next((d for d, offset in enumerate(offsets) if qname[offset:] in index), None)
    if depth is None:
        refused: Entry | None = st.refused.get(qtype)
        return refused
    zone = index[qname[offsets[depth] :]]
    names = zone.names
    # Walk down from the origin's child to the name itself.
    for j in range(depth - 1, -1, -1):
        suffix = qname[offsets[j] :]
        if suffix in zone.cuts:
            return None  # a referral
        if suffix not in names:
            if qname[offsets[j + 1] :] in zone.wildcard_parents:
                return None  # synthesized from a wildcard
            negative: Entry | None = st.negative.get((zone.origin, len(qname), qtype))
            return negative
    return None  # it exists: the general path answers and caches it
