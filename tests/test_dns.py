"""The authoritative server against real clients: dnspython and dig over UDP and TCP."""

from __future__ import annotations

import socket
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import EXAMPLE_ZONES, Server, need, same_rrsets


def test_static_answer_is_authoritative_and_copies_rd(example_server: Server) -> None:
    for rd in (True, False):
        query = dns.message.make_query("static.example.com.", "A")
        if not rd:
            query.flags &= ~dns.flags.RD
        reply = example_server.send(query)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA
        assert not reply.flags & dns.flags.RA
        assert bool(reply.flags & dns.flags.RD) == rd
        assert same_rrsets(reply.answer, "static.example.com. 3600 IN A 127.0.0.10")
        assert reply.authority == [] and reply.additional == []


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("static.example.com.", "AAAA", "static.example.com. 3600 IN AAAA 2001:db8::10"),
        ("example.com.", "MX", "example.com. 3600 IN MX 10 mail.example.com."),
        ("example.com.", "NS", "example.com. 3600 IN NS ns1.example.com.\nexample.com. 3600 IN NS ns2.example.com."),
        ("example.com.", "CAA", 'example.com. 3600 IN CAA 0 issue "letsencrypt.org"'),
        (
            "txt.example.com.",
            "TXT",
            'txt.example.com. 3600 IN TXT "one string" "two; with a semicolon" "a \\"quoted\\" word"',
        ),
        ("_sip._udp.example.com.", "SRV", "_sip._udp.example.com. 3600 IN SRV 10 60 5060 mail.example.com."),
        ("unknown.example.com.", "TYPE65534", "unknown.example.com. 3600 IN TYPE65534 \\# 4 0a000001"),
        (
            "alias.example.com.",
            "A",
            "alias.example.com. 3600 IN CNAME static.example.com.\nstatic.example.com. 3600 IN A 127.0.0.10",
        ),
        ("alias.example.com.", "CNAME", "alias.example.com. 3600 IN CNAME static.example.com."),
        ("anything.wild.example.com.", "A", "anything.wild.example.com. 3600 IN A 127.0.0.11"),
        ("b.deep.example.com.", "A", "b.deep.example.com. 3600 IN A 127.0.0.12"),
    ],
)
def test_answers_in_zone_syntax(example_server: Server, name: str, rdtype: str, expected: str) -> None:
    for tcp in (False, True):
        reply = example_server.query(name, rdtype, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA
        assert same_rrsets(reply.answer, expected), reply.to_text()


NEGATIVE_SOA = "example.com. 300 IN SOA ns1.example.com. hostmaster.example.com. 2026112501 7200 1800 1209600 300"


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("nope.example.com.", "A", dns.rcode.NXDOMAIN),
        ("a.b.nope.example.com.", "AAAA", dns.rcode.NXDOMAIN),
        ("static.example.com.", "MX", dns.rcode.NOERROR),  # NODATA
        ("deep.example.com.", "A", dns.rcode.NOERROR),  # an empty non-terminal is NODATA (RFC 4592)
        ("wild.example.com.", "A", dns.rcode.NOERROR),  # the wildcard's parent is an empty non-terminal
        ("sub.example.com.", "DS", dns.rcode.NOERROR),  # DS at a cut: the parent answers (RFC 4035)
        ("www.example.com.", "MX", dns.rcode.NOERROR),  # a service name exists for other types
    ],
)
def test_negative_answers_carry_soa_with_negative_ttl(
    example_server: Server, name: str, rdtype: str, rcode: int
) -> None:
    reply = example_server.query(name, rdtype)
    assert reply.rcode() == rcode
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    # RFC 2308 §5: TTL = min(SOA TTL 3600, MINIMUM 300)
    assert same_rrsets(reply.authority, NEGATIVE_SOA), reply.to_text()


def test_delegation_is_a_referral_with_glue(example_server: Server) -> None:
    for name in ("sub.example.com.", "host.sub.example.com."):
        reply = example_server.query(name, "A")
        assert reply.rcode() == dns.rcode.NOERROR
        assert not reply.flags & dns.flags.AA
        assert reply.answer == []
        assert same_rrsets(reply.authority, "sub.example.com. 3600 IN NS ns.sub.example.com.")
        assert same_rrsets(reply.additional, "ns.sub.example.com. 3600 IN A 127.0.0.53")


def test_outside_our_zones_is_refused_without_aa(example_server: Server) -> None:
    for name in ("example.org.", "com.", "."):
        reply = example_server.query(name, "A")
        assert reply.rcode() == dns.rcode.REFUSED
        assert not reply.flags & dns.flags.AA
        assert not reply.flags & dns.flags.RA


def test_any_is_answered_minimally(example_server: Server) -> None:
    reply = example_server.query("example.com.", "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    assert len(reply.answer) == 1  # RFC 8482: one RRset, not all of them


def test_question_case_is_returned_exactly(example_server: Server) -> None:
    query = dns.message.make_query("StAtIc.ExAmPlE.CoM.", "A")
    wire = query.to_wire()
    reply_wire = _udp_exchange(example_server.port, wire)
    assert reply_wire is not None
    assert reply_wire[12 : 12 + len(b"\x06StAtIc\x07ExAmPlE\x03CoM\x00")] == b"\x06StAtIc\x07ExAmPlE\x03CoM\x00"
    reply = dns.message.from_wire(reply_wire)
    assert same_rrsets(reply.answer, "static.example.com. 3600 IN A 127.0.0.10")


def test_labels_are_octet_strings(example_server: Server) -> None:
    # RFC 2181 §11: a dot or a NUL inside a label is valid; such a name is simply not ours.
    name = b"\x03a.b\x04\x00\xffxy\x07example\x03com\x00"
    wire = struct.pack("!6H", 0x4242, 0, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"
    reply = _udp_exchange(example_server.port, wire)
    assert reply is not None
    assert reply[:2] == b"\x42\x42"
    assert reply[3] & 0x0F == dns.rcode.NXDOMAIN
    assert reply[12 : len(wire)] == wire[12:]


def test_edns_is_echoed_and_unknown_options_ignored(example_server: Server) -> None:
    option = dns.edns.GenericOption(65001, b"hello")
    reply = example_server.query("static.example.com.", "A", use_edns=0, payload=4096, options=[option])
    assert reply.edns == 0
    assert reply.payload == 1232
    assert not reply.options  # unknown options are not echoed (RFC 6891 §6.1.2)
    # Unknown EDNS flag bits are ignored, DO is copied.
    query = dns.message.make_query("static.example.com.", "A", use_edns=0, ednsflags=0x4000 | dns.flags.DO)
    reply = example_server.send(query)
    assert reply.ednsflags & 0x7FFF == 0
    assert reply.ednsflags & dns.flags.DO


def test_edns_version_1_gets_badvers(example_server: Server) -> None:
    reply = example_server.query("static.example.com.", "A", use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert reply.answer == []


def test_other_opcodes_get_notimp(example_server: Server) -> None:
    for opcode in (dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE, 3, 15):
        query = dns.message.make_query("static.example.com.", "SOA")
        query.set_opcode(opcode)
        wire = query.to_wire()
        reply = _udp_exchange(example_server.port, wire)
        assert reply is not None
        flags = struct.unpack("!H", reply[2:4])[0]
        assert flags & 0x8000
        assert (flags >> 11) & 0xF == opcode
        assert flags & 0x0F == dns.rcode.NOTIMP
        assert not flags & 0x0400  # no AA
        assert flags & 0x0100 == wire[2] << 8 & 0x0100  # RD as sent


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x12\x34",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",  # 11 bytes: short header
        # QR set: a response sent to us
        struct.pack("!6H", 0x1234, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",
    ],
)
def test_garbage_is_dropped(example_server: Server, wire: bytes) -> None:
    assert _udp_exchange(example_server.port, wire, timeout=0.3) is None
    assert example_server.query("static.example.com.").rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack("!6H", 0x1234, 0x0100, 0, 0, 0, 0),  # no question
        struct.pack("!6H", 0x1234, 0x0100, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 2,  # two questions
        struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example",  # cut short
        struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer loop
        struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01" + b"junk",  # trailing
        struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 2)
        + b"\x00\x00\x01\x00\x01"
        + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,  # two OPT records
        # ECS with a non-zero scope in a query (RFC 7871 §7.1.1)
        struct.pack("!6H", 0x1234, 0x0100, 1, 0, 0, 1)
        + b"\x06static\x07example\x03com\x00\x00\x01\x00\x01"
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0b\x00\x08\x00\x07\x00\x01\x18\x10\x01\x02\x03",
    ],
)
def test_malformed_queries_get_formerr(example_server: Server, wire: bytes) -> None:
    reply = _udp_exchange(example_server.port, wire)
    assert reply is not None
    assert reply[:2] == b"\x12\x34"
    assert reply[2] & 0x80
    assert reply[3] & 0x0F == dns.rcode.FORMERR


def test_udp_truncates_and_tcp_gives_the_whole_answer(start_server: type[Server], tmp_path) -> None:  # type: ignore[no-untyped-def]
    zone = tmp_path / "big.test.zone"
    records = "\n".join(f'big TXT "{i:03d} {"x" * 60}"' for i in range(40))
    zone.write_text(f"$TTL 60\n@ SOA ns hostmaster 1 2 3 4 5\n@ NS ns\nns A 127.0.0.1\n{records}\n")
    server = start_server("--zones", str(tmp_path), "--no-probes", "--state-file", str(tmp_path / "s.json"))
    plain = server.query("big.big.test.", "TXT")
    assert plain.flags & dns.flags.TC
    assert plain.answer == []
    edns = server.query("big.big.test.", "TXT", use_edns=0, payload=4096)
    assert edns.flags & dns.flags.TC  # 40 * ~70 bytes > our 1232 cap
    assert edns.edns == 0
    full = server.query("big.big.test.", "TXT", tcp=True)
    assert not full.flags & dns.flags.TC
    assert len(full.answer[0]) == 40


def test_tcp_several_queries_on_one_connection(example_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", example_server.port), timeout=3) as sock:
        ids = [11, 22, 33]
        batch = b""
        for qid in ids:  # pipelined: all three sent before reading (RFC 7766 §6.2.1.1)
            query = dns.message.make_query("static.example.com.", "A")
            query.id = qid
            wire = query.to_wire()
            batch += struct.pack("!H", len(wire)) + wire
        sock.sendall(batch)
        got = []
        for _ in ids:
            length = struct.unpack("!H", _recv_exactly(sock, 2))[0]
            got.append(dns.message.from_wire(_recv_exactly(sock, length)).id)
        assert got == ids


def test_dig_shows_the_behaviours(example_server: Server) -> None:
    need("dig")
    out = example_server.dig("StAtIc.example.com", "A", "+norec")
    assert "status: NOERROR" in out
    assert "flags: qr aa;" in out  # no rd (we sent +norec), no ra
    assert ";StAtIc.example.com.\t\tIN\tA" in out
    out = example_server.dig("static.example.com", "A", "+tcp")
    assert "127.0.0.10" in out and "flags: qr aa rd;" in out
    out = example_server.dig("static.example.com", "+edns=1", "+noednsnegotiation")
    assert "status: BADVERS" in out
    out = example_server.dig("static.example.com", "+opcode=status")
    assert "status: NOTIMP" in out and "opcode: STATUS" in out
    out = example_server.dig("static.example.com", "+bufsize=1232")
    assert "udp: 1232" in out
    out = example_server.dig("nope.example.com")
    assert "status: NXDOMAIN" in out and "SOA" in out
    out = example_server.dig("example.org")
    assert "status: REFUSED" in out


def _udp_exchange(port: int, wire: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_tcp_idle_timeout_and_connection_cap(start_server: type[Server], tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "0",
        "--tcp-idle-timeout",
        "0.5",
        "--tcp-max-connections",
        "3",
        "--state-file",
        str(tmp_path / "s.json"),
    )
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    started = time.monotonic()
    assert idle.recv(1) == b""  # the server closes the idle connection (RFC 7766 §6.2.3)
    assert 0.4 < time.monotonic() - started < 3
    idle.close()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    # Each of the three is being served (a query answered), so all three slots are taken.
    for conn in held:
        wire = dns.message.make_query("static.example.com.", "A").to_wire()
        conn.sendall(struct.pack("!H", len(wire)) + wire)
        length = struct.unpack("!H", _recv_exactly(conn, 2))[0]
        assert dns.message.from_wire(_recv_exactly(conn, length)).rcode() == dns.rcode.NOERROR
    extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert extra.recv(1) == b""  # over the cap: closed at once
    for conn in [*held, extra]:
        conn.close()
    # A slot frees up once a connection ends.
    reply = server.query("static.example.com.", "A", tcp=True)
    assert reply.rcode() == dns.rcode.NOERROR


def test_serves_ipv6_and_several_listen_addresses(start_server: type[Server], tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "--zones", str(EXAMPLE_ZONES), "--no-probes", "--listen", "[::1]:0", "--state-file", str(tmp_path / "s.json")
    )
    line = server.wait_log(r"listening on \[::1\]:\d+")
    port = int(line.split("]:")[1].split()[0])
    query = dns.message.make_query("static.example.com.", "AAAA")
    for reply in (dns.query.udp(query, "::1", port=port, timeout=3), dns.query.tcp(query, "::1", port=port, timeout=3)):
        assert same_rrsets(reply.answer, "static.example.com. 3600 IN AAAA 2001:db8::10")
    # The IPv4 address keeps answering beside it.
    assert server.query("static.example.com.").rcode() == dns.rcode.NOERROR
