"""Any bytes in: a reply with the same ID, or nothing; never an exception, never a dead server."""

from __future__ import annotations

import random
import socket
import struct

import dns.edns
import dns.message
import dns.opcode
import dns.rcode
import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.dns.answer import Answerer
from gslb.health.view import HealthView
from gslb.snapshot import Snapshot, Sources, build
from tests.conftest import EXAMPLE_ZONES, Server


@pytest.fixture(scope="module")
def answerer() -> Answerer:
    snapshot: Snapshot = build(Sources(EXAMPLE_ZONES))
    return Answerer(snapshot, HealthView())


def _seed_queries() -> list[bytes]:
    out = []
    for name, rdtype in [
        ("www.example.com.", "A"),
        ("static.example.com.", "AAAA"),
        ("nope.example.com.", "MX"),
        ("alias.example.com.", "A"),
        ("x.wild.example.com.", "TXT"),
        ("example.org.", "A"),
    ]:
        for edns in (-1, 0):
            query = dns.message.make_query(name, rdtype, use_edns=edns)
            out.append(query.to_wire())
    ecs = dns.edns.ECSOption("2.2.3.0", 24)
    out.append(dns.message.make_query("www.example.com.", "A", use_edns=0, options=[ecs]).to_wire())
    return out


SEEDS = _seed_queries()


def _check(answerer: Answerer, wire: bytes) -> None:
    for tcp in (False, True):
        reply = answerer.handle(wire, "127.0.0.1", tcp)
        if reply is None:
            continue
        assert len(wire) >= 12 and not wire[2] & 0x80, "replied to something that must be dropped"
        assert reply[:2] == wire[:2]
        assert reply[2] & 0x80
        if not tcp:
            assert len(reply) <= 1232
        if (reply[2] >> 3) & 0xF != dns.opcode.UPDATE:  # dnspython reads UPDATE's sections its own way
            dns.message.from_wire(reply)  # what we send is itself well formed...
            if _ascii_question(reply):  # ...to a second decoder too (dnslib reads labels as UTF-8)
                dnslib.DNSRecord.parse(reply)


def _ascii_question(reply: bytes) -> bool:
    end = 12
    while reply[5] and reply[end]:
        end += reply[end] + 1
    return reply[12:end].isascii()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes(answerer: Answerer, wire: bytes) -> None:
    _check(answerer, wire)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 40),
)
def test_mutated_queries(answerer: Answerer, seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    wire = bytearray(seed)
    for position, value in flips:
        if wire:
            wire[position % len(wire)] = value
    if cut:
        wire = wire[: max(0, len(wire) - cut)]
    _check(answerer, bytes(wire))


def test_server_survives_a_stream_of_garbage(example_server: Server) -> None:
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(3000):
            if i % 2:
                wire = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
            else:
                wire = bytearray(rng.choice(SEEDS))
                for _ in range(rng.randrange(1, 5)):
                    wire[rng.randrange(len(wire))] = rng.randrange(256)
                wire = bytes(wire)
            sock.sendto(wire, ("127.0.0.1", example_server.port))
    # Garbage over TCP too: a bogus length prefix and a half message.
    with socket.create_connection(("127.0.0.1", example_server.port), timeout=3) as conn:
        conn.sendall(struct.pack("!H", 40) + b"\x00" * 13)
    reply = example_server.query("static.example.com.", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert not any("Traceback" in line for line in example_server.lines)
