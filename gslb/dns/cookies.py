"""DNS Cookies (RFC 7873): server cookies in the interoperable format of RFC 9018, with SipHash-2-4.

A server cookie is Version (1) | Reserved (3, zero) | Timestamp (4, seconds, serial
arithmetic) | Hash (8), where Hash = SipHash-2-4(Client Cookie | Version | Reserved |
Timestamp | Client IP, secret). Every instance configured with the same secret makes and
checks the same cookies (anycast, several NS). A secret file may list older or newer secrets
after the first: they are accepted when checking, the first makes the cookies (RFC 9018 §4.4,
rollover without breaking clients).

The result for one (client address, COOKIE option bytes) is remembered until it would
change, so a resolver that reuses its cookie costs a dict lookup, not a hash; the compiled
UDP loop shares that dict and does the same in C (hashing what it has not seen).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import time
from collections.abc import Callable

log = logging.getLogger("gslb.cookies")

OPTION_COOKIE = 10
BADCOOKIE = 23  # RFC 7873 §8: an extended RCODE (header 7, OPT extended RCODE 1)
VERSION = 1
LIFETIME = 3600  # RFC 9018 §4.3: a server cookie older than an hour is no longer valid
SKEW = 300  # and one stamped more than five minutes ahead neither (clock skew between instances)
ECHO = 1800  # a valid cookie younger than half an hour is echoed instead of made anew (§4.3)
REMEMBER = 300  # seconds a cookie made for a (client, option) is reused
CACHE_LIMIT = 100_000

# A secret for this process when none is configured: made at import, before the supervisor
# forks its workers, so every worker of one server makes and accepts the same cookies.
PROCESS_SECRET = os.urandom(16)

clock: Callable[[], float] = time.time  # tests pin it

_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, message: bytes) -> bytes:
    """SipHash-2-4 of `message` under a 16-byte `key`: 8 bytes, little-endian as the reference emits."""
    if len(key) != 16:
        raise ValueError("SipHash takes a 16-byte key")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    length = len(message)
    tail = length & 7
    # The last block: the leftover bytes and the message length's low byte in the top one.
    padded = message + bytes(7 - tail) + bytes((length & 0xFF,))
    for (m,) in struct.iter_unpack("<Q", padded):
        v3 ^= m
        for _ in range(2):  # c = 2 compression rounds
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(4):  # d = 4 finalization rounds
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return struct.pack("<Q", v0 ^ v1 ^ v2 ^ v3)


def length_ok(length: int) -> bool:
    """RFC 7873 §5.2.2: a client cookie alone (8), or with a server cookie of 8 to 32 bytes."""
    return length == 8 or 16 <= length <= 40


def _age(now: int, stamp: int) -> int:
    """Seconds from `stamp` to `now`, both 32-bit serial numbers (RFC 1982): negative if ahead."""
    delta = (now - stamp) & 0xFFFFFFFF
    return delta - (1 << 32) if delta & 0x80000000 else delta


def _address(source: str) -> bytes:
    return ipaddress.ip_address(source.split("%")[0]).packed


class Cookies:
    """Makes and checks server cookies with one set of secrets; the first one makes them.

    `answer(source, data)` gives the COOKIE option for the reply (code and length included)
    and whether the query's server cookie was valid. `tc_size`: with
    `large_answers_need_cookie`, UDP replies larger than this to a query without a valid
    server cookie are truncated (TC) so the client comes back over TCP; 0: off.
    """

    __slots__ = ("cache", "secrets", "tc_size")

    def __init__(self, secrets: tuple[bytes, ...], tc_size: int = 0):
        if not secrets or any(len(secret) != 16 for secret in secrets):
            raise ValueError("cookie secrets are 16 bytes each, at least one")
        self.secrets = secrets
        self.tc_size = tc_size
        # (source, option data) -> (reply option, valid, until): the answer while clock() < until.
        # The compiled UDP loop (gslb/dns/_fastudp.c) answers from it too, and fills it on a miss with
        # what _work_out gives (its own SipHash), the source as recvfrom gives it and int(clock())
        # read once a batch: keep this shape, and _work_out and the constants above in step with it.
        self.cache: dict[tuple[str, bytes], tuple[bytes, bool, int]] = {}

    def answer(self, source: str, data: bytes) -> tuple[bytes, bool]:
        """Our COOKIE option for a query from `source` with COOKIE option `data` (its length checked)."""
        now = int(clock())
        key = (source, data)
        found = self.cache.get(key)
        if found is not None and now < found[2]:
            return found[0], found[1]
        option, valid, until = self._work_out(source, data, now)
        if len(self.cache) >= CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = (option, valid, until)
        return option, valid

    def _work_out(self, source: str, data: bytes, now: int) -> tuple[bytes, bool, int]:
        address = _address(source)
        client = data[:8]
        until = now + REMEMBER
        if len(data) == 24 and data[8] == VERSION:
            stamp = int.from_bytes(data[12:16], "big")
            age = _age(now & 0xFFFFFFFF, stamp)
            # The reserved bytes are hashed as sent (RFC 9018 §4.2), so a cookie another
            # implementation made with them set still checks.
            message = data[:16] + address
            made_with = next((i for i, s in enumerate(self.secrets) if siphash24(s, message) == data[16:]), None)
            if made_with is not None and -SKEW <= age <= LIFETIME:
                if made_with == 0 and age < ECHO:
                    return _option(data), True, min(until, now + ECHO - age)
                return self._fresh(client, address, now), True, min(until, now + LIFETIME - age + 1)
            if made_with is not None and age < -SKEW:  # from an instance whose clock runs ahead
                until = min(until, now - SKEW - age)
        return self._fresh(client, address, now), False, until

    def make(self, client: bytes, address: bytes, now: int) -> bytes:
        """The 16-byte server cookie for a client cookie and address, stamped `now`."""
        head = struct.pack("!B3xI", VERSION, now & 0xFFFFFFFF)
        return head + siphash24(self.secrets[0], client + head + address)

    def _fresh(self, client: bytes, address: bytes, now: int) -> bytes:
        return _option(client + self.make(client, address, now))


def _option(data: bytes) -> bytes:
    return struct.pack("!HH", OPTION_COOKIE, len(data)) + data


_SHARED: dict[tuple[tuple[bytes, ...], int], Cookies] = {}


def shared(secrets: tuple[bytes, ...] | None, tc_size: int) -> Cookies:
    """The Cookies for these settings, one per process: a reload with the same secrets keeps its cache.

    No secrets: the process's own random one, with a warning that its cookies are not
    accepted by other instances, nor by this one after a restart.
    """
    if secrets is None:
        secrets = (PROCESS_SECRET,)
    key = (secrets, tc_size)
    found = _SHARED.get(key)
    if found is None:
        if secrets == (PROCESS_SECRET,):
            log.warning(
                "DNS cookies: no [cookies] secret_file, using a random secret: server cookies "
                "do not validate across instances or restarts"
            )
        _SHARED.clear()  # only the latest settings are in use
        found = _SHARED[key] = Cookies(secrets, tc_size)
    return found
