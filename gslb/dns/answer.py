"""bytes -> bytes | None: the answer to one DNS query, through a fast path or the general one.

The general path parses the whole query, resolves it against the zones and the services,
and encodes the reply. What it resolves is memoized as pre-encoded reply parts keyed by
(lower-case question) and, for answers that depend on the client, by the geo network
that decided. The fast path scans the header and question by hand, finds those parts,
and splices the query's ID, flags and exact question bytes in. Both paths assemble the
reply with the same rules, and a test holds them byte-identical.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype

from gslb.dns.cookies import BADCOOKIE, length_ok
from gslb.dns.replies import Entry, encode, flag_bytes, formerr, header_reply, servfail, truncated
from gslb.dns.rrl import ALLOW, SLIP, RateLimiter, kind_of
from gslb.dns.state import (
    LATENCY_SAMPLE_MASK,
    UNCACHED,
    Counters,
    Split,
    State,
    Steered,
    address_value,
    negative_entry,
    question_key,
    remember,
    subnet_value,
    where,
)
from gslb.dns.wire import (
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
    TYPE_A,
    TYPE_AAAA,
    TYPE_AXFR,
    TYPE_IXFR,
    TYPE_OPT,
    Drop,
    Edns,
    FormError,
    NotImp,
    Query,
    opt_record,
    parse_query,
    udp_limit,
)
from gslb.dns.zones import Resolution, wire_of
from gslb.steering.policy import Decision, pick, spilled
from gslb.steering.spill import SpillView

if TYPE_CHECKING:
    from gslb.health.view import HealthView
    from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.answer")

Name = dns.name.Name
PREPARE_LIMIT = 5_000  # answers picked ahead on a health change or reload
_META_TYPES = range(128, 255)  # RFC 6895 §3.1: QTYPEs only; 255 (ANY) is answered


OPT_PLAIN = opt_record(None)
OPT_DO = opt_record(Edns(1232, 0, True, None))


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
            reply = servfail(wire)
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
            entry = negative_entry(st, key[: i - 11], key[-4:-2])
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
                rank, scope = ranks.locate(*address_value(source))
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
                    entry = entry.choose(*address_value(source), None)[0]
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
            reply = formerr(wire) if query is None or not query.question else header_reply(query, FORMERR, aa=False)
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
            return header_reply(query, BADVERS & 0xF, aa=False, extended_rcode=BADVERS >> 4), None, BADVERS
        if query.qtype == TYPE_OPT or (query.qtype in _META_TYPES and query.qtype not in (TYPE_AXFR, TYPE_IXFR)):
            self.counters.formerr += 1
            return header_reply(query, FORMERR, aa=False, cookie=cookie), None, FORMERR
        if query.qclass != CLASS_IN or query.qtype in (TYPE_AXFR, TYPE_IXFR):
            # Zone transfers are not offered; other classes are not served.
            self.counters.refused += 1
            return header_reply(query, REFUSED, aa=False, cookie=cookie), None, REFUSED
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
        entry = encode(resolution, None, query.question, st.snapshot, online=True)
        remember(st.static, question_key(query), entry)
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
        key = question_key(query)
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
                entry = encode(resolution, None, query.question, st.snapshot, online=_dnssec_ok(query))
                remember(st.static, key, entry)
                qtype = key[-4:-2]
                if resolution.rcode == REFUSED:
                    st.refused[qtype] = entry
                elif resolution.rcode == NXDOMAIN and not resolution.answer and resolution.zone is not None:
                    origin = resolution.zone.origin_wire
                    # Shared by every name of the length: never with a proof signed for one of them.
                    st.negative[(origin, len(key) - 4, qtype)] = replace(entry, signed=None)
                return entry, 0
            steered = self._steered(st, resolution)
            remember(st.static, key, steered)
        rank, scope = where(steered.ranks, query.edns.client_subnet if query.edns else None, source, st.by_resolver)
        picked = st.picks.get((key, rank))
        if not isinstance(picked, Entry | Split):
            picked = self._pick(st, key, steered, rank, query.question)
        if isinstance(picked, Split):
            subnet = query.edns.client_subnet if query.edns else None
            if subnet is not None:
                version, value = subnet_value(subnet)
                entry, bits = picked.choose(version, value, subnet.source_prefix)
                return entry, max(scope, bits)
            return picked.choose(*address_value(source), None)[0] if source is not None else picked.stay, 0
        return picked, scope if picked.scoped else 0

    def _pick(self, st: State, key: bytes, steered: Steered, rank: int, question: bytes) -> Entry | Split:
        """Decide and encode one ranking's answer; keep it, or mark it drawn per query (weighted).

        When the first choice spills a share of its clients, keep both answers (a Split).
        """
        decision = self.decide(st, steered, rank)
        entry = encode(steered.resolution, decision, question, st.snapshot, online=True)
        away = self._spilled(st, steered, rank, decision)
        if away is not None:
            split = Split(
                entry,
                encode(steered.resolution, away, question, st.snapshot, online=True),
                st.spill.share(decision.datacenters[0]),
            )
            remember(st.picks, (key, rank), split)
            return split
        remember(st.picks, (key, rank), entry if decision.cacheable else UNCACHED)
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
        wire_flags = flag_bytes(entry.flags, query.flags)
        edns = query.edns
        if edns is None:
            head, opt = entry.head, b""
        else:
            head, opt = entry.head_opt, opt_record(edns, scope if edns.client_subnet else None, cookie=cookie)
        reply = b"".join((struct.pack("!H", query.id), wire_flags, head, query.question, entry.body, opt))
        if not tcp and (len(reply) > udp_limit(edns) or 0 < tc_size < len(reply)):
            self.counters.truncated += 1
            return truncated(query, entry, udp_limit(edns), opt)
        return reply


def _dnssec_ok(query: Query) -> bool:
    return query.edns is not None and query.edns.dnssec_ok


def _ecs_valid(ecs: bytes) -> bool:
    """RFC 7871 §7.1.1's checks on ECS option data, for the fast path."""
    if len(ecs) < 4 or ecs[0] or ecs[1] not in (1, 2) or ecs[3]:
        return False
    source = ecs[2]
    if source > (32 if ecs[1] == 1 else 128) or len(ecs) - 4 != (source + 7) // 8:
        return False
    return not (source % 8 and ecs[-1] & (0xFF >> (source % 8)))
