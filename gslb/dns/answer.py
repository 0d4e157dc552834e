"""bytes -> bytes | None: the answer to one DNS query, through a fast path or the general one.

The general path parses the whole query, resolves it against the zones and the services,
and encodes the reply. What it resolves is memoized as pre-encoded reply parts keyed by
(lower-case question) and, for answers that depend on the client, by the geo network
that decided. The fast path scans the header and question by hand, finds those parts,
and splices the query's ID, flags and exact question bytes in. Both paths assemble the
reply with the same rules, and a test holds them byte-identical.
"""

from __future__ import annotations

import bisect
import io
import ipaddress
import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype

from gslb.config.model import Service
from gslb.dns.cookies import BADCOOKIE, Cookies, length_ok, shared
from gslb.dns.dnssec import address_rdataset, signed_sections
from gslb.dns.rrl import ALLOW, SLIP, RateLimiter, kind_of
from gslb.dns.wire import (
    AA,
    BADVERS,
    CD,
    CLASS_IN,
    FORMERR,
    NOTIMP,
    NXDOMAIN,
    OPCODE_MASK,
    QR,
    RD,
    REFUSED,
    SERVFAIL,
    TC,
    TYPE_A,
    TYPE_AAAA,
    TYPE_AXFR,
    TYPE_IXFR,
    TYPE_OPT,
    ClientSubnet,
    Drop,
    Edns,
    FormError,
    NotImp,
    Query,
    opt_record,
    parse_query,
    udp_limit,
)
from gslb.dns.zones import Resolution, Section, wire_of
from gslb.steering.policy import Decision, pick, spilled
from gslb.steering.ranks import RankTable
from gslb.steering.spill import NO_SPILL, SpillView, client_hash, client_network

if TYPE_CHECKING:
    from gslb.health.view import HealthView
    from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.answer")

Name = dns.name.Name
LATENCY_SAMPLE_MASK = 63  # time one query in 64: two clock reads cost a few % of a fast answer
LATENCY_BOUNDS = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3)
CACHE_LIMIT = 200_000  # entries per cache; cleared whole when full (cheap, and rare)
PREPARE_LIMIT = 5_000  # answers picked ahead on a health change or reload
UNCACHED = object()  # marks an answer drawn afresh every time (weighted services)
_META_TYPES = range(128, 255)  # RFC 6895 §3.1: QTYPEs only; 255 (ANY) is answered


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


def _entry(
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


OPT_PLAIN = opt_record(None)
OPT_DO = opt_record(Edns(1232, 0, True, None))
_ECS_HEAD = struct.Struct("!HHIH")


class Answerer:
    """Answers queries from the current snapshot and health view."""

    def __init__(
        self,
        snapshot: Snapshot,
        health: HealthView,
        *,
        query_log: Callable[..., None] | None = None,
        processes: int = 1,
    ):
        self.counters = Counters()
        self.query_log = query_log
        self.processes = processes  # answering processes sharing the sockets: each limits rates to its share
        self.state = self._limits(State(snapshot, health), None)  # answers are picked as first asked

    # -- what the rest of the program changes -------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot) -> None:
        self.state = self._prepare(self._limits(State(snapshot, self.state.health, spill=self.state.spill), self.state))

    def set_health(self, health: HealthView) -> None:
        # A new verdict re-picks the steered answers before the new state serves; static
        # and negative answers stay, and nothing is located again.
        self.state = self._prepare(self._limits(State(self.state.snapshot, health, self.state), self.state))

    def set_spill(self, spill: SpillView) -> None:
        """New spill shares: re-pick the steered answers (as a health change does)."""
        st = self.state
        self.state = self._prepare(self._limits(State(st.snapshot, st.health, st, spill), st))

    def _limits(self, st: State, previous: State | None) -> State:
        """Give `st` the rate limiter: the previous one (its buckets) while the settings stay."""
        settings = st.snapshot.config.rrl
        if settings is not None:
            old = previous.rrl if previous is not None else None
            st.rrl = old if old is not None and old.settings == settings else RateLimiter(settings, self.processes)
        return st

    def _prepare(self, st: State) -> State:
        """Pick every ranking's answer of the steered questions known, before `st` serves.

        Then no query pays for encoding after a health change or a reload. A new snapshot
        starts with each service's own A and AAAA; names that reach a service through a
        CNAME join once asked. Past PREPARE_LIMIT answers the first query of a ranking picks.
        """
        static = st.static
        if not static:
            zones = st.snapshot.zones
            for name in st.snapshot.services:
                for qtype in (TYPE_A, TYPE_AAAA):
                    resolution = zones.lookup(name, qtype)
                    if resolution.service is not None:
                        key = wire_of(name) + struct.pack("!HH", qtype, CLASS_IN)
                        static[key] = self._steered(st, resolution)
        budget = PREPARE_LIMIT
        for key, found in list(static.items()):
            if type(found) is not Steered:
                continue
            for rank in range(len(found.ranks.rankings)):
                self._pick(st, key, found, rank, key)  # the key is a question in lower case
                budget -= 1
                if budget <= 0:
                    return st
        return st

    @staticmethod
    def _steered(st: State, resolution: Resolution) -> Steered:
        answer = resolution.service
        assert answer is not None
        snapshot = st.snapshot
        return Steered(resolution, snapshot.services[answer.service], snapshot.ranks[answer.service])

    # -- the query path ----------------------------------------------------------------------

    def handle(self, wire: bytes, source: str | None, tcp: bool = False) -> bytes | None:
        """The reply to one query from `source` (an address literal), or None to send nothing."""
        counters = self.counters
        counters.ticks += 1
        sample = not counters.ticks & LATENCY_SAMPLE_MASK
        if sample:
            started = time.perf_counter()
        try:
            reply = self._fast(wire, source, tcp)
            if reply is None:
                counters.general += 1
                reply, entry, rcode = self._general(wire, source, tcp)
                if reply is not None:
                    self._count(reply, entry, rcode, tcp)
            elif not reply:  # rate limited: nothing is sent
                reply = None
        except Exception:
            log.exception("unexpected error answering a query from %s", source)
            counters.servfail += 1
            reply = _servfail(wire)
        if sample:
            counters.observe(time.perf_counter() - started)
        if self.query_log is not None:  # off by default: this test is all it costs then
            self.query_log(wire, source, tcp, reply)
        return reply

    def _count(self, reply: bytes, entry: Entry | None, rcode: int, tcp: bool) -> None:
        """Count a general-path reply by transport, QTYPE and RCODE (the fast path counts inline)."""
        qtype = 0
        if reply[5]:  # a question was echoed: its QTYPE follows the name
            i = 12
            while reply[i]:
                i += reply[i] + 1
            qtype = reply[i + 1] << 8 | reply[i + 2]
        key = (tcp, qtype, rcode)
        by_key = self.counters.by_key
        by_key[key] = by_key.get(key, 0) + 1
        if entry is not None and entry.answer_key is not None:
            by_answer = self.counters.by_answer
            by_answer[entry.answer_key] = by_answer.get(entry.answer_key, 0) + 1

    def _fast(self, wire: bytes, source: str | None, tcp: bool) -> bytes | None:
        """The common query, from cached parts; None sends it down the general path."""
        n = len(wire)
        # QR clear, opcode QUERY, one question, no answer or authority records.
        if n < 17 or wire[2] & 0xF8 or wire[4:10] != b"\x00\x01\x00\x00\x00\x00" or wire[10]:
            return None
        i = 12
        while True:
            length = wire[i]
            if length == 0:
                break
            if length > 63:
                return None
            i += length + 1
            if i >= n:
                return None
        # RFC 1035 §3.1: a name is at most 255 octets (i - 11 here); the general path FORMERRs.
        if i > 266:
            return None
        qend = i + 5
        if qend > n or wire[qend - 2 : qend] != b"\x00\x01":
            return None
        key = wire[12:i].lower() + wire[i:qend]
        st = self.state
        entry = st.static.get(key)
        if entry is None:
            entry = _negative(st, key[: i - 11], key[-4:-2])
            if entry is None:
                return None
        elif entry is UNCACHED:
            return None
        arcount = wire[11]
        ecs = None
        cookie = None
        do = 0
        if arcount == 0:
            if qend != n:
                return None
            limit = 512
        else:
            # One OPT: root owner, type 41, version 0, filling the rest of the message.
            if arcount != 1 or n < qend + 11 or wire[qend : qend + 3] != b"\x00\x00\x29" or wire[qend + 6]:
                return None
            rdlen = wire[qend + 9] << 8 | wire[qend + 10]
            if qend + 11 + rdlen != n:
                return None
            limit = min(max(wire[qend + 3] << 8 | wire[qend + 4], 512), 1232)
            do = wire[qend + 7] & 0x80
            # Options: ECS at most once; COOKIE at most once (used when cookies are on);
            # padding, NSID and unknown ones are ignored (RFC 6891 §6.1.2), as the general path does.
            pos = qend + 11
            while pos < n:
                end = pos + 4 + (wire[pos + 2] << 8 | wire[pos + 3]) if pos + 4 <= n else n + 1
                if end > n:
                    return None
                code = wire[pos : pos + 2]
                if code == b"\x00\x08":
                    if ecs is not None:
                        return None
                    ecs = wire[pos + 4 : end]
                elif code == b"\x00\x0a":
                    if cookie is not None and st.cookies is not None:
                        return None
                    cookie = wire[pos + 4 : end]
                pos = end
        if ecs is not None and not _ecs_valid(ecs):
            return None
        scope = 0
        if type(entry) is Steered:
            ranks = entry.ranks
            if ecs is not None:
                if ecs[2] == 0:  # RFC 7871 §7.1.2: /0 asks for an answer that ignores the client
                    rank = ranks.default_rank
                else:
                    size = 4 if ecs[1] == 1 else 16
                    rank, scope = ranks.locate(
                        4 if size == 4 else 6, int.from_bytes(ecs[4:], "big") << ((size + 4 - len(ecs)) << 3)
                    )
            elif not st.by_resolver:
                rank = ranks.default_rank
            elif source is None:
                return None
            else:
                rank, scope = ranks.locate(*_address_value(source))
            entry = st.picks.get((key, rank))
            if type(entry) is not Entry:
                if type(entry) is not Split:
                    return None
                if ecs is not None:
                    size = 4 if ecs[1] == 1 else 16
                    value = int.from_bytes(ecs[4:], "big") << ((size + 4 - len(ecs)) << 3)
                    entry, bits = entry.choose(4 if size == 4 else 6, value, ecs[2])
                    scope = max(scope, bits)
                elif source is None:
                    return None
                else:
                    entry = entry.choose(*_address_value(source), None)[0]
            elif not entry.scoped:
                scope = 0
        if do and entry.dnssec:  # RFC 4035 §3.1.1: RRSIGs and proofs only when the query sets DO
            entry = entry.signed
            if entry is None:
                return None
        # RFC 7873 §5.2: our COOKIE option (the client's cookie and a server cookie) when on.
        cookies = st.cookies
        answer_cookie = b""
        valid = False
        if cookie is not None and cookies is not None:
            if source is None or not length_ok(len(cookie)):
                return None
            answer_cookie, valid = cookies.answer(source, cookie)
        if ecs is not None:
            option = ecs[:3] + bytes((scope,)) + ecs[4:]
            opt = b"".join(
                (
                    b"\x00\x00\x29\x04\xd0\x00\x00",
                    b"\x80\x00" if do else b"\x00\x00",
                    struct.pack("!HHH", len(option) + 4 + len(answer_cookie), 8, len(option)),
                    option,
                    answer_cookie,
                )
            )
        elif answer_cookie:
            opt = b"".join(
                (
                    b"\x00\x00\x29\x04\xd0\x00\x00",
                    b"\x80\x00" if do else b"\x00\x00",
                    struct.pack("!H", len(answer_cookie)),
                    answer_cookie,
                )
            )
        elif arcount:
            opt = OPT_DO if do else OPT_PLAIN
        else:
            opt = b""
        head = entry.head_opt if arcount else entry.head
        flags = entry.flag_bytes[(wire[2] & 0x01) | (wire[3] & 0x10) >> 3]
        reply = b"".join((wire[:2], flags, head, wire[12:qend], entry.body, opt))
        if not tcp:
            if len(reply) > limit:
                return None
            if cookies is not None and cookies.tc_size and not valid and len(reply) > cookies.tc_size:
                return None  # a large answer without a valid server cookie: the general path sends TC
            if st.rrl is not None and not valid and source is not None:
                verdict = st.rrl.check(source, entry.rrl_kind)
                if verdict != ALLOW:
                    return self._limited(verdict, reply, qend, opt, answer_cookie)
        counters = self.counters
        try:
            counters.by_key[entry.tcp_key if tcp else entry.udp_key] += 1
        except KeyError:
            counters.by_key[entry.tcp_key if tcp else entry.udp_key] = 1
        if entry.answer_key is not None:
            try:
                counters.by_answer[entry.answer_key] += 1
            except KeyError:
                counters.by_answer[entry.answer_key] = 1
        return reply

    def _general(self, wire: bytes, source: str | None, tcp: bool) -> tuple[bytes | None, Entry | None, int]:
        st = self.state
        query: Query | None = None
        cookie = b""  # our COOKIE option for the reply, when the query had one and cookies are on
        valid = False  # the query returned a valid server cookie of ours
        try:
            query = parse_query(wire, empty=st.cookies is not None)
            edns = query.edns
            if st.cookies is not None and edns is not None and edns.cookies and source is not None:
                if len(edns.cookies) > 1 or not length_ok(len(edns.cookies[0])):
                    # RFC 7873 §5.2.2: a COOKIE option of a length no cookie has is malformed.
                    raise FormError(f"COOKIE option of {len(edns.cookies[0])} bytes, or more than one")
                cookie, valid = st.cookies.answer(source, edns.cookies[0])
            reply, entry, rcode = self._respond(st, wire, query, source, tcp, cookie, valid)
        except Drop:
            self.counters.dropped += 1
            return None, None, 0
        except NotImp:
            # RFC 1035 §4.1.1 / RFC 6895 §2.2: NOTIMP with the opcode and RD echoed, nothing
            # else, whatever the sections hold (as BIND, Knot and gdnsd answer).
            qid, flags = struct.unpack_from("!HH", wire)
            reply = struct.pack("!HHHHHH", qid, QR | (flags & (OPCODE_MASK | RD)) | NOTIMP, 0, 0, 0, 0)
            entry, rcode = None, NOTIMP
        except FormError as exc:
            log.debug("FORMERR to %s: %s", source, exc)
            self.counters.formerr += 1
            reply = _formerr(wire) if query is None or not query.question else _header_reply(query, FORMERR, aa=False)
            entry, rcode = None, FORMERR
        if st.rrl is not None and not tcp and not valid and source is not None and reply is not None:
            verdict = st.rrl.check(source, kind_of(reply))
            if verdict != ALLOW:
                qend = 12 + len(query.question) if query is not None and reply[5] else 12
                opt = b""
                if query is not None and query.edns is not None and reply[11]:
                    subnet = query.edns.client_subnet
                    opt = opt_record(query.edns, None if subnet is None else 0, cookie=cookie)
                return self._limited(verdict, reply, qend, opt, cookie) or None, entry, rcode
        return reply, entry, rcode

    def _respond(
        self, st: State, wire: bytes, query: Query, source: str | None, tcp: bool, cookie: bytes, valid: bool
    ) -> tuple[bytes, Entry | None, int]:
        """The general path's reply to a parsed query, with our COOKIE option `cookie` when not empty."""
        edns = query.edns
        if not query.question:
            if not cookie:
                raise FormError("0 questions")
            assert edns is not None
            # RFC 7873 §5.4: a query for our server cookie. BADCOOKIE if it sent one we do not accept.
            rcode = BADCOOKIE if len(edns.cookies[0]) > 8 and not valid else 0
            flags = QR | (query.flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
            opt = opt_record(edns, extended_rcode=rcode >> 4, cookie=cookie)
            return struct.pack("!HHHHHH", query.id, flags, 0, 0, 0, 1) + opt, None, rcode
        if edns is not None and edns.version > 0:
            # RFC 6891 §6.1.3: BADVERS, with the highest version we do (0).
            return _header_reply(query, BADVERS & 0xF, aa=False, extended_rcode=BADVERS >> 4), None, BADVERS
        if query.qtype == TYPE_OPT or (query.qtype in _META_TYPES and query.qtype not in (TYPE_AXFR, TYPE_IXFR)):
            self.counters.formerr += 1
            return _header_reply(query, FORMERR, aa=False, cookie=cookie), None, FORMERR
        if query.qclass != CLASS_IN or query.qtype in (TYPE_AXFR, TYPE_IXFR):
            # Zone transfers are not offered; other classes are not served.
            self.counters.refused += 1
            return _header_reply(query, REFUSED, aa=False, cookie=cookie), None, REFUSED
        entry, scope = self._resolve(st, query, source)
        if entry.dnssec and _dnssec_ok(query):
            entry = entry.signed or self._signed(st, query)
        cookies = st.cookies
        tc_size = cookies.tc_size if cookies is not None and not valid else 0
        return self._assemble(query, entry, scope, tcp, cookie, tc_size), entry, entry.rcode

    def _signed(self, st: State, query: Query) -> Entry:
        """The signed reply to a static question whose proof is made for its name (NXDOMAIN, a
        wildcard): signed now, and kept in place of the unsigned entry (not the shared negative one)."""
        resolution = st.snapshot.zones.lookup(Name((*query.labels, b"")), query.qtype)
        entry = _encode(resolution, None, query.question, st.snapshot, online=True)
        _remember(st.static, _question_key(query), entry)
        assert entry.signed is not None
        return entry.signed

    def _limited(self, verdict: int, reply: bytes, qend: int, opt: bytes, cookie: bytes) -> bytes:
        """A reply over the rate limit: b"" (send nothing) or, for a SLIP, a minimal one.

        The slipped reply has no records and TC set, so a real client behind a limited
        network retries over TCP, which is never limited; one that does cookies gets
        BADCOOKIE with our cookie instead (RFC 7873 §5.2.3) and comes back with it, exempt.
        """
        counters = self.counters
        counters.rrl_limited += 1
        if verdict != SLIP:
            return b""
        counters.rrl_slipped += 1
        if cookie:
            flags = bytes((reply[2] & ~0x04 & 0xFF, (reply[3] & 0xF0) | (BADCOOKIE & 0xF)))
            opt = opt[:5] + bytes((BADCOOKIE >> 4,)) + opt[6:]
        else:
            flags = bytes((reply[2] | 0x02, reply[3]))  # TC
        counts = b"\x00\x00\x00\x00\x00\x01" if opt else b"\x00\x00\x00\x00\x00\x00"
        return b"".join((reply[:2], flags, reply[4:6], counts, reply[12:qend], opt))

    def _resolve(self, st: State, query: Query, source: str | None) -> tuple[Entry, int]:
        """The entry answering the question and the ECS scope to return; cache what can be reused."""
        key = _question_key(query)
        found = st.static.get(key)
        if type(found) is Entry:
            return found, 0
        if type(found) is Steered:
            steered = found
        else:
            qname = Name((*query.labels, b""))
            resolution = st.snapshot.zones.lookup(qname, query.qtype)
            answer = resolution.service
            if answer is None:
                # With DO, its proof is signed now (a denial's, for the name): once, not in _signed again.
                entry = _encode(resolution, None, query.question, st.snapshot, online=_dnssec_ok(query))
                _remember(st.static, key, entry)
                qtype = key[-4:-2]
                if resolution.rcode == REFUSED:
                    st.refused[qtype] = entry
                elif resolution.rcode == NXDOMAIN and not resolution.answer and resolution.zone is not None:
                    origin = resolution.zone.origin_wire
                    # Shared by every name of the length: never with a proof signed for one of them.
                    st.negative[(origin, len(key) - 4, qtype)] = replace(entry, signed=None)
                return entry, 0
            steered = self._steered(st, resolution)
            _remember(st.static, key, steered)
        rank, scope = where(steered.ranks, query.edns.client_subnet if query.edns else None, source, st.by_resolver)
        picked = st.picks.get((key, rank))
        if not isinstance(picked, Entry | Split):
            picked = self._pick(st, key, steered, rank, query.question)
        if isinstance(picked, Split):
            subnet = query.edns.client_subnet if query.edns else None
            if subnet is not None:
                version, value = _subnet_value(subnet)
                entry, bits = picked.choose(version, value, subnet.source_prefix)
                return entry, max(scope, bits)
            return picked.choose(*_address_value(source), None)[0] if source is not None else picked.stay, 0
        return picked, scope if picked.scoped else 0

    def _pick(self, st: State, key: bytes, steered: Steered, rank: int, question: bytes) -> Entry | Split:
        """Decide and encode one ranking's answer; keep it, or mark it drawn per query (weighted).

        When the first choice spills a share of its clients, keep both answers (a Split).
        """
        decision = self.decide(st, steered, rank)
        entry = _encode(steered.resolution, decision, question, st.snapshot, online=True)
        away = self._spilled(st, steered, rank, decision)
        if away is not None:
            split = Split(
                entry,
                _encode(steered.resolution, away, question, st.snapshot, online=True),
                st.spill.share(decision.datacenters[0]),
            )
            _remember(st.picks, (key, rank), split)
            return split
        _remember(st.picks, (key, rank), entry if decision.cacheable else UNCACHED)
        return entry

    def _spilled(self, st: State, steered: Steered, rank: int, decision: Decision) -> Decision | None:
        """The answer for the clients of a ranking spilled from its first choice (None: it spills none)."""
        spill = st.spill
        if not spill.shares:
            return None
        ranking, datacenters = steered.ranks.rankings[rank], st.snapshot.config.datacenters
        return spilled(
            steered.service, datacenters, ranking, st.health, steered.family, decision, spill.shares, spill.full
        )

    def decide(self, st: State, steered: Steered, rank: int) -> Decision:
        """The service's answer for one ranking under the current health view."""
        return pick(
            steered.service, st.snapshot.config.datacenters, steered.ranks.rankings[rank], st.health, steered.family
        )

    def _assemble(
        self, query: Query, entry: Entry, scope: int, tcp: bool, cookie: bytes = b"", tc_size: int = 0
    ) -> bytes:
        """The reply bytes; the fast path builds the very same, inline.

        `tc_size` > 0: a UDP reply larger than that is truncated too (large answers need a
        valid server cookie, [cookies] large_answers_need_cookie).
        """
        wire_flags = _flag_bytes(entry.flags, query.flags)
        edns = query.edns
        if edns is None:
            head, opt = entry.head, b""
        else:
            head, opt = entry.head_opt, opt_record(edns, scope if edns.client_subnet else None, cookie=cookie)
        reply = b"".join((struct.pack("!H", query.id), wire_flags, head, query.question, entry.body, opt))
        if not tcp and (len(reply) > udp_limit(edns) or 0 < tc_size < len(reply)):
            self.counters.truncated += 1
            return _truncated(query, entry, udp_limit(edns), opt)
        return reply


def where(ranks: RankTable, subnet: ClientSubnet | None, source: str | None, by_resolver: bool) -> tuple[int, int]:
    """The client's ranking index and ECS scope: from ECS, else the resolver's address, else the default.

    The one place that decides which address stands for the client; the server, `gslb explain`
    and the query log all come through here (the fast path inlines the same steps).
    """
    if subnet is not None:
        if subnet.source_prefix == 0:  # RFC 7871 §7.1.2: an answer that ignores the client
            return ranks.default_rank, 0
        return ranks.locate(*_subnet_value(subnet))
    if not by_resolver or source is None:
        return ranks.default_rank, 0
    return ranks.locate(*_address_value(source))


def _subnet_value(subnet: ClientSubnet) -> tuple[int, int]:
    """(IP version, integer) of an ECS option's address, its missing octets zero."""
    size = 4 if subnet.family == 1 else 16
    return (4 if size == 4 else 6), int.from_bytes(subnet.address, "big") << ((size - len(subnet.address)) << 3)


_ADDRESSES: dict[str, tuple[int, int]] = {}


def _address_value(source: str) -> tuple[int, int]:
    """(IP version, integer) of an address literal; resolvers are few, so remembered."""
    found = _ADDRESSES.get(source)
    if found is None:
        address = ipaddress.ip_address(source.split("%")[0])
        found = (address.version, int(address))
        _remember(_ADDRESSES, source, found)
    return found


def _flag_bytes(template: int, query_flags: int) -> bytes:
    return struct.pack("!H", template | (query_flags & (RD | CD)))


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) > CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def _dnssec_ok(query: Query) -> bool:
    return query.edns is not None and query.edns.dnssec_ok


def _question_key(query: Query) -> bytes:
    name = b"".join(bytes((len(label),)) + label for label in query.labels)
    return name.lower() + query.question[len(name) :]


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


def _encode(
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
        return _entry(QR | REFUSED, (0, 0, 0), b"", False, REFUSED, qtype)
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
            return _entry(QR | SERVFAIL, (0, 0, 0), b"", scoped, SERVFAIL, qtype, service_name, datacenters)
        answer = answer[:-1]
        if decision.addresses:
            answer = [*answer, (service.owner, address_rdataset(service.qtype, decision.ttl, decision.addresses))]
        else:
            # NODATA for the family (e.g. AAAA where the data center has no IPv6 VIP).
            zone = resolution.zone
            assert zone is not None
            authority = [*authority, (zone.origin, zone.negative_soa)]
    records: Section = answer  # type: ignore[assignment]  # the service's place is filled above
    counts, body = _write(question, qname, depth, records, authority, resolution.additional)
    flags = QR | (AA if resolution.authoritative else 0) | rcode
    signing = snapshot.signing if snapshot is not None else None
    if signing is None or signing.signer(resolution.question_zone) is signing.signer(resolution.zone) is None:
        return _entry(flags, counts, body, scoped, rcode, qtype, service_name, datacenters)
    signed: Entry | None = None
    assert snapshot is not None
    sections = signed_sections(signing, snapshot.zones, resolution, records, authority, qname, qtype, online)
    if sections is not None:
        signed_counts, signed_body = _write(question, qname, depth, *sections, resolution.additional)
        signed = _entry(flags, signed_counts, signed_body, scoped, rcode, qtype, service_name, datacenters)
    return _entry(flags, counts, body, scoped, rcode, qtype, service_name, datacenters, True, signed)


def _write(
    question: bytes, qname: Name, depth: int, answer: Section, authority: Section, additional: Section
) -> tuple[tuple[int, int, int], bytes]:
    """The three sections' record counts and bytes, after `question`."""
    writer = _Writer(question, qname, depth)
    an = sum(writer.rrset(owner, rds) for owner, rds in answer)
    ns = sum(writer.rrset(owner, rds) for owner, rds in authority)
    ar = sum(writer.rrset(owner, rds) for owner, rds in additional)
    return (an, ns, ar), writer.body()


def _truncated(query: Query, entry: Entry, limit: int, opt: bytes) -> bytes:
    """A reply that does not fit: TC and no records (RFC 2181 §9), so the client retries over TCP."""
    counts = struct.pack("!HHHH", 1, 0, 0, 1 if opt else 0)
    flags = _flag_bytes(entry.flags | TC, query.flags)
    return b"".join((struct.pack("!H", query.id), flags, counts, query.question, opt))


def _header_reply(query: Query, rcode: int, *, aa: bool, extended_rcode: int = 0, cookie: bytes = b"") -> bytes:
    """A reply with the question echoed and no records: NOTIMP, BADVERS, FORMERR, REFUSED."""
    flags = QR | (query.flags & (OPCODE_MASK | RD | CD)) | (AA if aa else 0) | rcode
    opt = b"" if query.edns is None else opt_record(query.edns, extended_rcode=extended_rcode, cookie=cookie)
    counts = struct.pack("!HHHH", 1, 0, 0, 1 if opt else 0)
    return b"".join((struct.pack("!HH", query.id, flags), counts, query.question, opt))


def _formerr(wire: bytes) -> bytes:
    """FORMERR with the header only: the rest of the query could not be trusted."""
    qid, flags = struct.unpack_from("!HH", wire)
    return struct.pack("!HHHHHH", qid, QR | (flags & (OPCODE_MASK | RD | CD)) | FORMERR, 0, 0, 0, 0)


def _servfail(wire: bytes) -> bytes | None:
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    qid, flags = struct.unpack_from("!HH", wire)
    return struct.pack("!HHHHHH", qid, QR | (flags & (OPCODE_MASK | RD | CD)) | SERVFAIL, 0, 0, 0, 0)


def _negative(st: State, qname: bytes, qtype: bytes) -> Entry | None:
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


def _ecs_valid(ecs: bytes) -> bool:
    """RFC 7871 §7.1.1's checks on ECS option data, for the fast path."""
    if len(ecs) < 4 or ecs[0] or ecs[1] not in (1, 2) or ecs[3]:
        return False
    source = ecs[2]
    if source > (32 if ecs[1] == 1 else 128) or len(ecs) - 4 != (source + 7) // 8:
        return False
    return not (source % 8 and ecs[-1] & (0xFF >> (source % 8)))
