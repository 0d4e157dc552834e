"""Response rate limiting: a token bucket per (client network, kind of reply), for UDP replies only.

An open authoritative server is a reflection amplifier: a spoofed source gets replies it
never asked for. Each client network (/24 for IPv4, /56 for IPv6 by default) has one
bucket per kind of reply — answer (NODATA included), NXDOMAIN, error, referral — refilled
at `rate` replies a second and holding at most `rate * window`. A reply finding its bucket
empty is limited: dropped, except every `slip`-th one, which goes out as a minimal
truncated reply so a real client behind the address retries over TCP (where nothing is
limited). Exempt networks, and clients that return a valid server cookie, are never
limited. With several worker processes on one socket each holds the buckets of its own
share of the traffic, so each allows `rate / workers`.
"""

from __future__ import annotations

import ipaddress
import logging
from time import monotonic

from gslb.config.model import RrlSettings

log = logging.getLogger("gslb.rrl")

ANSWER, NXDOMAIN_KIND, ERROR, REFERRAL = 0, 1, 2, 3
KINDS = ("answer", "nxdomain", "error", "referral")
ALLOW, DROP, SLIP = 0, 1, 2
BUCKET_LIMIT = 200_000  # buckets per process; past it, full ones are forgotten
LOG_INTERVAL = 10.0  # seconds between log lines about limiting
_EXEMPT = -1


class RateLimiter:
    """The buckets of one process; `check(source, kind)` says ALLOW, DROP or SLIP."""

    __slots__ = (
        "bases",
        "buckets",
        "capacity",
        "exempt",
        "log_only",
        "logged",
        "rate",
        "settings",
        "shift4",
        "shift6",
        "slip",
        "slips",
        "would_limit",
    )

    def __init__(self, settings: RrlSettings, processes: int = 1):
        self.settings = settings
        share = max(processes, 1)
        self.rate = settings.rate / share
        self.capacity = max(self.rate * settings.window, 1.0)
        self.slip = settings.slip
        self.log_only = settings.log_only
        self.exempt = settings.exempt
        self.shift4 = 32 - settings.ipv4_prefix
        self.shift6 = 128 - settings.ipv6_prefix
        self.bases: dict[str, int] = {}  # address literal -> its network's key (times 4), or _EXEMPT
        self.buckets: dict[int, list[float]] = {}  # network key | kind -> [tokens, when last filled]
        self.slips = 0  # limited replies since the last slipped one
        self.would_limit = 0  # since the last log line
        self.logged = 0.0

    def check(self, source: str, kind: int) -> int:
        base = self.bases.get(source)
        if base is None:
            base = self._base(source)
        if base < 0:
            return ALLOW
        key = base | kind
        now = monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            self._new(key, now)
            return ALLOW
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0 if tokens < self.capacity else self.capacity - 1.0
            return ALLOW
        bucket[0] = tokens
        return self._limited(source, now)

    def _limited(self, source: str, now: float) -> int:
        self.would_limit += 1
        if now - self.logged >= LOG_INTERVAL:
            log.warning(
                "rate limit%s: %d replies over %d/s to one network and kind since the last report (latest client %s)",
                " (log only)" if self.log_only else "",
                self.would_limit,
                self.settings.rate,
                source,
            )
            self.logged = now
            self.would_limit = 0
        if self.log_only:
            return ALLOW
        if self.slip:
            self.slips += 1
            if self.slips >= self.slip:
                self.slips = 0
                return SLIP
        return DROP

    def _new(self, key: int, now: float) -> None:
        buckets = self.buckets
        if len(buckets) >= BUCKET_LIMIT:
            # Forget the buckets that have refilled (they would start full anyway); if
            # spoofed sources keep them all busy, start over.
            rate, capacity = self.rate, self.capacity
            for old in [k for k, (tokens, when) in buckets.items() if tokens + (now - when) * rate >= capacity]:
                del buckets[old]
            if len(buckets) >= BUCKET_LIMIT // 2:
                buckets.clear()
        buckets[key] = [self.capacity - 1.0, now]

    def _base(self, source: str) -> int:
        address = ipaddress.ip_address(source.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.exempt):
            base = _EXEMPT
        elif address.version == 4:
            base = (int(address) >> self.shift4) << 2
        else:
            base = ((int(address) >> self.shift6) | 1 << 128) << 2  # apart from every IPv4 network
        if len(self.bases) >= BUCKET_LIMIT:
            self.bases.clear()
        self.bases[source] = base
        return base


def kind_of(reply: bytes) -> int:
    """The kind of a reply from its header: NXDOMAIN, another error, a referral, or an answer."""
    rcode = reply[3] & 0x0F
    if rcode == 3:
        return NXDOMAIN_KIND
    if rcode:
        return ERROR
    # NOERROR without answers, with authority records and AA clear: a delegation.
    if not reply[2] & 0x04 and reply[6:8] == b"\x00\x00" and reply[8:10] != b"\x00\x00":
        return REFERRAL
    return ANSWER
