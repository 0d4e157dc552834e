"""Response rate limiting: the token buckets, the query path, and a flood against a real server."""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import struct
import threading
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.config.load import loads
from gslb.config.model import ConfigError, RrlSettings
from gslb.dns import cookies as cookie_module
from gslb.dns import rrl
from gslb.dns.answer import Answerer
from gslb.dns.cookies import Cookies
from gslb.dns.rrl import ALLOW, ANSWER, DROP, ERROR, NXDOMAIN_KIND, REFERRAL, SLIP, RateLimiter, kind_of
from gslb.health.view import HealthView
from gslb.snapshot import Snapshot, Sources, build
from tests.conftest import EXAMPLE_ZONES, Server

SECRET = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(rrl, "monotonic", clock)
    return clock


def test_a_bucket_gives_rate_times_window_then_rate_a_second(clock: Clock) -> None:
    limiter = RateLimiter(RrlSettings(rate=10, window=2, slip=0))
    assert [limiter.check("192.0.2.1", ANSWER) for _ in range(21)] == [ALLOW] * 20 + [DROP]
    clock.now += 0.5  # half a second: five more
    assert [limiter.check("192.0.2.1", ANSWER) for _ in range(6)] == [ALLOW] * 5 + [DROP]
    clock.now += 100  # a long rest refills to the window, no further
    assert sum(limiter.check("192.0.2.1", ANSWER) == ALLOW for _ in range(40)) == 20


def test_networks_kinds_and_exemptions(clock: Clock) -> None:
    limiter = RateLimiter(RrlSettings(rate=1, slip=0, exempt=(ipaddress.ip_network("198.51.100.0/24"),)))
    assert limiter.check("192.0.2.1", ANSWER) == ALLOW
    assert limiter.check("192.0.2.200", ANSWER) == DROP  # the same /24
    assert limiter.check("192.0.3.1", ANSWER) == ALLOW  # another one
    for kind in (NXDOMAIN_KIND, ERROR, REFERRAL):  # each kind has its own bucket
        assert limiter.check("192.0.2.1", kind) == ALLOW
        assert limiter.check("192.0.2.1", kind) == DROP
    assert limiter.check("2001:db8:0:ff::1", ANSWER) == ALLOW
    assert limiter.check("2001:db8:0:ff:1::2", ANSWER) == DROP  # the same /56
    assert limiter.check("2001:db8:0:100::1", ANSWER) == ALLOW
    assert limiter.check("::ffff:192.0.2.9", ANSWER) == DROP  # IPv4-mapped: the IPv4 network
    assert all(limiter.check("198.51.100.7", ANSWER) == ALLOW for _ in range(100))


def test_slip_every_nth_and_log_only(clock: Clock) -> None:
    limiter = RateLimiter(RrlSettings(rate=1, slip=3))
    assert [limiter.check("192.0.2.1", ANSWER) for _ in range(7)] == [ALLOW, DROP, DROP, SLIP, DROP, DROP, SLIP]
    quiet = RateLimiter(RrlSettings(rate=1, log_only=True))
    assert all(quiet.check("192.0.2.1", ANSWER) == ALLOW for _ in range(10))
    # Nothing limited; the first would-be limit is logged at once, the rest counted for the next line.
    assert quiet.logged == clock.now and quiet.would_limit == 8


def test_workers_share_the_rate(clock: Clock) -> None:
    limiter = RateLimiter(RrlSettings(rate=40, slip=0), processes=4)
    assert sum(limiter.check("192.0.2.1", ANSWER) == ALLOW for _ in range(100)) == 10


def test_full_buckets_are_forgotten_first(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rrl, "BUCKET_LIMIT", 100)
    limiter = RateLimiter(RrlSettings(rate=1, slip=0, ipv4_prefix=32))
    for i in range(60):
        limiter.check(f"10.0.0.{i}", ANSWER)
    clock.now += 10  # those have refilled
    limiter.check("10.0.1.1", ANSWER)
    limiter.check("10.0.1.1", ANSWER)  # now limited: an empty bucket is kept
    for i in range(60):
        limiter.check(f"10.0.2.{i}", ANSWER)
    assert len(limiter.buckets) <= 100
    assert limiter.check("10.0.1.1", ANSWER) == DROP


@pytest.mark.parametrize(
    ("flags", "counts", "kind"),
    [
        (0x8400, (1, 1, 0, 0), ANSWER),
        (0x8400, (1, 0, 1, 0), ANSWER),  # NODATA: an answer
        (0x8403, (1, 0, 1, 0), NXDOMAIN_KIND),
        (0x8005, (1, 0, 0, 0), ERROR),
        (0x8001, (0, 0, 0, 0), ERROR),
        (0x8000, (1, 0, 2, 1), REFERRAL),
    ],
)
def test_kind_of_a_reply(flags: int, counts: tuple[int, int, int, int], kind: int) -> None:
    assert kind_of(struct.pack("!HH4H", 1, flags, *counts)) == kind


def test_config_of_rrl(tmp_path: Path) -> None:
    config = loads(
        '[rrl]\nrate = 5\nwindow = 2\nslip = 0\nexempt = ["10.0.0.0/8", "2001:db8::/32"]\n'
        "log_only = true\nipv6_prefix = 48\n"
    )
    assert config.rrl == RrlSettings(
        5, 2.0, 0, (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")), True, 24, 48
    )
    assert loads("").rrl is None and loads("[rrl]\nenabled = false\n").rrl is None
    assert loads("[rrl]\n").rrl == RrlSettings()
    text = '[geo]\nno_ecs = "resolver"\n[rrl]\nrate = 0\nslip = "2"\nexempt = ["10.0.0.1/8"]\nwindow = 0.5\nrates = 1\n'
    with pytest.raises(ConfigError) as info:
        loads(text, tmp_path / "gslb.toml")
    where = tmp_path / "gslb.toml"
    assert str(info.value).splitlines() == [
        f"{where}:4: rrl.rate: must be between 1 and 1000000, got 0",
        f"{where}:5: rrl.slip: expected an integer, got a string",
        f"{where}:6: rrl.exempt[0]: '10.0.0.1/8' has host bits set; did you mean '10.0.0.0/8'?",
        f"{where}:7: rrl.window: must be between 1 and 3600, got 0.5",
        f"{where}:8: rrl.rates: unknown key; did you mean 'rate'?",
    ]


# -- the query path -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    directory = tmp_path_factory.mktemp("rrl")
    (directory / "cookie.key").write_text(SECRET.hex() + "\n")
    config = directory / "gslb.toml"
    config.write_text(
        (EXAMPLE_ZONES / "gslb.toml").read_text()
        + '\n[cookies]\nsecret_file = "cookie.key"\n\n[rrl]\nrate = 3\nslip = 2\n'
    )
    return build(Sources(EXAMPLE_ZONES, config=config))


def _wire(name: str, cookie: bytes | None = None, qid: int = 1) -> bytes:
    options = [] if cookie is None else [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, cookie)]
    message = dns.message.make_query(name, "A", use_edns=0, options=options)
    message.id = qid
    return message.to_wire()


def test_udp_is_limited_tcp_never(clock: Clock, snapshot: Snapshot) -> None:
    answerer = Answerer(snapshot, HealthView())
    replies = [answerer.handle(_wire("static.example.com.", qid=i), "192.0.2.1") for i in range(9)]
    assert all(r is not None and dns.message.from_wire(r).answer for r in replies[:3])
    assert [r is None for r in replies[3:]] == [True, False, True, False, True, False]  # slip = 2
    for slipped in replies[4::2]:
        assert slipped is not None
        message = dns.message.from_wire(slipped)
        assert message.flags & dns.flags.TC and not message.answer and message.rcode() == dns.rcode.NOERROR
        assert message.question[0].name.to_text() == "static.example.com." and message.edns == 0
    assert answerer.counters.rrl_limited == 6 and answerer.counters.rrl_slipped == 3
    # NXDOMAIN has a bucket of its own, and TCP is never limited.
    assert answerer.handle(_wire("nope.example.com."), "192.0.2.1") is not None
    assert all(answerer.handle(_wire("static.example.com."), "192.0.2.1", True) is not None for _ in range(20))
    # The general path limits as the fast path does: a name it answers (CNAME chain, first asked).
    assert answerer.handle(_wire("alias.example.com."), "192.0.2.1") is None


def test_a_valid_server_cookie_is_exempt_and_a_client_cookie_slips_badcookie(
    clock: Clock, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cookie_module, "clock", lambda: 1_700_000_000)
    answerer = Answerer(snapshot, HealthView())
    replies = [answerer.handle(_wire("static.example.com.", b"clientck"), "192.0.2.9") for _ in range(5)]
    slipped = replies[4]
    assert replies[3] is None and slipped is not None
    message = dns.message.from_wire(slipped)
    # RFC 7873 §5.2.3: a client that does cookies is told BADCOOKIE, with our cookie to come back with.
    assert message.rcode() == dns.rcode.BADCOOKIE and not message.flags & dns.flags.TC and not message.answer
    cookie = next(o for o in message.options if isinstance(o, dns.edns.CookieOption))
    valid = b"clientck" + Cookies((SECRET,)).make(b"clientck", ipaddress.ip_address("192.0.2.9").packed, 1_700_000_000)
    assert cookie.client + cookie.server == valid
    # With it the client is not limited at all, on either path.
    for _ in range(20):
        reply = answerer.handle(_wire("static.example.com.", valid), "192.0.2.9")
        assert reply is not None and dns.message.from_wire(reply).answer


# -- a flood against a real server -------------------------------------------------------------------


def _flooder(port: int, seconds: float, per_second: int, out: dict[str, int], done: threading.Event) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.5", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setblocking(False)
    wire = _wire("static.example.com.")
    sent = full = truncated = 0
    start = time.monotonic()
    end = start + seconds
    tick = 0.01
    while True:
        now = time.monotonic()
        if now >= end + 1.0:  # a second to collect the last replies
            break
        if now < end:
            due = min(int((now - start) * per_second) + 1, int(seconds * per_second))
            while sent < due:
                sock.sendto(struct.pack("!H", sent & 0xFFFF) + wire[2:], ("127.0.0.1", port))
                sent += 1
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                break
            if reply[2] & 0x02:
                truncated += 1
            else:
                full += 1
        time.sleep(tick)
    sock.close()
    out.update(sent=sent, full=full, truncated=truncated)
    done.set()


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}_total (\S+)$", text, re.M)
    assert found, text
    return float(found.group(1))


def test_a_flood_from_one_address_is_limited_and_another_gets_every_answer(
    start_server: type[Server], tmp_path: Path
) -> None:
    config = tmp_path / "gslb.toml"
    rate, seconds, slip = 50, 3.0, 2
    config.write_text(
        (EXAMPLE_ZONES / "gslb.toml").read_text() + f"\n[rrl]\nrate = {rate}\nslip = {slip}\nipv4_prefix = 32\n"
    )
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--config",
        str(config),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
    )
    out: dict[str, int] = {}
    done = threading.Event()
    flood = threading.Thread(target=_flooder, args=(server.port, seconds, 5000, out, done), daemon=True)
    flood.start()
    # Meanwhile a second address asks ten times a second and gets every answer.
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.6", 0))
    other.settimeout(2)
    answered = 0
    asked = int(seconds * 10)
    for i in range(asked):
        other.sendto(_wire("static.example.com.", qid=i), ("127.0.0.1", server.port))
        reply = dns.message.from_wire(other.recv(4096))
        assert reply.id == i and reply.answer and not reply.flags & dns.flags.TC
        answered += 1
        time.sleep(0.1)
    other.close()
    assert done.wait(seconds + 10)
    assert answered == asked
    assert out["sent"] >= 0.98 * seconds * 5000, out
    # About rate x seconds (plus a window's worth at the start), split between the two workers.
    assert 0.6 * rate * seconds <= out["full"] <= rate * (seconds + 1) + rate + 40, out
    limited = out["sent"] - out["full"]
    assert 0.3 * limited / slip <= out["truncated"] <= limited / slip + 2, out
    # /metrics counts them, from both workers (reported every second).
    match = re.search(r"http on 127\.0\.0\.1:(\d+)", server.wait_log(r"http on 127\.0\.0\.1:\d+"))
    assert match
    url = f"http://127.0.0.1:{match.group(1)}/metrics"
    deadline = time.monotonic() + 5
    while True:
        text = httpx.get(url, timeout=5).text
        slipped = _metric(text, "gslb_dns_rrl_slipped")
        if slipped >= out["truncated"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert slipped >= out["truncated"]
    assert _metric(text, "gslb_dns_rrl_limited") >= slip * slipped


def test_the_compiled_loop_hands_every_packet_to_python_when_limiting(clock: Clock, snapshot: Snapshot) -> None:
    compiled = pytest.importorskip("gslb.dns._fastudp", reason="the compiled UDP loop is not built")
    answerer = Answerer(snapshot, HealthView())
    wire = _wire("static.example.com.")
    assert answerer.handle(wire, "192.0.2.77", True) is not None  # cached, over TCP: not counted
    assert answerer._fast(wire, "192.0.2.77", False) is not None
    assert compiled.answer(answerer, wire, "192.0.2.77") is None
    without = Answerer(build(Sources(EXAMPLE_ZONES)), HealthView())
    without.handle(wire, "192.0.2.77")
    assert compiled.answer(without, wire, "192.0.2.77") is not None


# -- any bytes in, with cookies and rate limiting on ------------------------------------------------


@pytest.fixture(scope="module")
def strict(snapshot: Snapshot) -> Answerer:
    return Answerer(snapshot, HealthView())  # rate 3, slip 2: most replies below are limited or slipped


def _cookie_seeds() -> list[bytes]:
    out = []
    for name in ("www.example.com.", "static.example.com.", "nope.example.com.", "example.org."):
        for cookie in (b"clientck", b"clientck" + b"\x01\x00\x00\x00" + bytes(12), bytes(5)):
            out.append(_wire(name, cookie))
    out.append(
        struct.pack("!HHHHHH", 9, 0x0100, 0, 0, 0, 1)
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c"
        + b"\x00\x0a\x00\x08clientck"
    )  # no question: asks for a server cookie
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(_cookie_seeds()),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 30),
    st.sampled_from(["192.0.2.1", "2001:db8::1", "10.9.8.7"]),
)
def test_mutated_cookie_queries_under_limits(
    strict: Answerer, seed: bytes, flips: list[tuple[int, int]], cut: int, source: str
) -> None:
    wire = bytearray(seed)
    for position, value in flips:
        wire[position % len(wire)] = value
    if cut:
        wire = wire[: max(0, len(wire) - cut)]
    for tcp in (False, True):
        reply = strict.handle(bytes(wire), source, tcp)
        if reply is not None:
            assert reply[:2] == wire[:2] and reply[2] & 0x80
            dns.message.from_wire(reply)  # well formed, slipped and BADCOOKIE replies included
    assert strict.counters.servfail == 0  # no unexpected exception on any path


def test_under_the_rate_both_paths_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_fastpath import SOURCES, _query  # the equivalence corpus

    monkeypatch.setattr(cookie_module, "clock", lambda: 1_700_000_000)
    config = tmp_path / "gslb.toml"
    config.write_text((EXAMPLE_ZONES / "gslb.toml").read_text() + "\n[cookies]\n\n[rrl]\nrate = 1000000\n")
    snapshot = build(Sources(EXAMPLE_ZONES, config=config))
    rng = random.Random(2026)
    warm = Answerer(snapshot, HealthView())
    hits = 0
    for _ in range(3000):
        wire, source, tcp = _query(rng), rng.choice(SOURCES), rng.random() < 0.2
        first = warm.handle(wire, source, tcp)
        fast = warm._fast(wire, source, tcp)
        if fast is not None:
            hits += 1
            assert fast == first == Answerer(snapshot, HealthView())._general(wire, source, tcp)[0]
    assert hits > 1500 and warm.counters.rrl_limited == 0
