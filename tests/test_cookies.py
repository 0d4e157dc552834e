"""DNS Cookies (RFC 7873, RFC 9018): SipHash-2-4, the published vectors, the query path, dig and dnspython."""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from gslb.config.load import loads
from gslb.config.model import ConfigError
from gslb.dns import cookies as cookie_module
from gslb.dns.answer import Answerer
from gslb.dns.cookies import Cookies, siphash24
from gslb.health.view import HealthView
from gslb.snapshot import Snapshot, Sources, build
from tests.conftest import EXAMPLE_ZONES, Server, need

# SipHash-2-4 reference vectors (the SipHash paper's key 00..0f, message 00..(i-1)), output bytes.
SIPHASH_VECTORS = [
    "310e0edd47db6f72",
    "fd67dc93c539f874",
    "5a4fa9d909806c0d",
    "2d7efbd796666785",
    "b7877127e09427cf",
    "8da699cd64557618",
    "cee3fe586e46c9cb",
    "37d1018bf50002ab",
    "6224939a79f5f593",
    "b0e4a90bdf82009e",
    "f3b9dd94c5bb5d7a",
    "a7ad6b22462fb3f4",
    "fbe50e86bc8f1e75",
    "903d84c02756ea14",
    "eef27a8e90ca23f7",
    "e545be4961ca29a1",
]
SECRET_1 = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")  # RFC 9018 Appendix A
SECRET_OLD = bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715")
SECRET_NEW = bytes.fromhex("445536bcd2513298075a5d379663c962")
NOW = 1_700_000_000


@pytest.mark.parametrize("length", range(len(SIPHASH_VECTORS)))
def test_siphash24_reference_vectors(length: int) -> None:
    assert siphash24(bytes(range(16)), bytes(range(length))).hex() == SIPHASH_VECTORS[length]


def test_siphash24_the_papers_example_and_a_wrong_key() -> None:
    # The paper's Appendix A: a 15-byte message, the output read as a little-endian integer.
    assert int.from_bytes(siphash24(bytes(range(16)), bytes(range(15))), "little") == 0xA129CA6149BE45E5
    with pytest.raises(ValueError):
        siphash24(bytes(15), b"")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    now = [NOW]
    monkeypatch.setattr(cookie_module, "clock", lambda: now[0])
    yield now


@pytest.mark.parametrize(
    ("secrets", "client", "at", "query", "reply", "valid"),
    [
        # A.1: a client cookie alone gets a fresh server cookie.
        (
            (SECRET_1,),
            "198.51.100.100",
            1559731985,
            "2464c4abcf10c957",
            "2464c4abcf10c957010000005cf79f111f8130c3eee29480",
            False,
        ),
        # A.2: 40 minutes later the cookie is valid, but past half an hour: renewed.
        (
            (SECRET_1,),
            "198.51.100.100",
            1559734385,
            "2464c4abcf10c957010000005cf79f111f8130c3eee29480",
            "2464c4abcf10c957010000005cf7a871d4a564a1442aca77",
            True,
        ),
        # A.3: another implementation's cookie (reserved bytes set), 1 h 52 min old: past the hour, renewed.
        (
            (SECRET_1,),
            "203.0.113.203",
            1559734700,
            "fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5",
            "fc93fc62807ddb86010000005cf7a9acf73a7810aca2381e",
            False,
        ),
        # ... within its hour it is valid: the reserved bytes are hashed as sent. Renewed, as it is not ours to echo.
        (
            (SECRET_1,),
            "203.0.113.203",
            0x5CF78F71 + 60,
            "fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5",
            "fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5",
            True,
        ),
        # A.4: an IPv6 client after a rollover: made with the old secret, accepted, renewed with the new.
        (
            (SECRET_NEW, SECRET_OLD),
            "2001:db8:220:1:59de:d0f4:8769:82b8",
            1559741961,
            "22681ab97d52c298010000005cf7c57926556bd0934c72f8",
            "22681ab97d52c298010000005cf7c609a6bb79d16625507a",
            True,
        ),
        # ... and without the old secret the same cookie is not ours: a fresh one, not valid.
        (
            (SECRET_NEW,),
            "2001:db8:220:1:59de:d0f4:8769:82b8",
            1559741961,
            "22681ab97d52c298010000005cf7c57926556bd0934c72f8",
            "22681ab97d52c298010000005cf7c609a6bb79d16625507a",
            False,
        ),
    ],
)
def test_rfc9018_appendix_a(
    clock: list[int], secrets: tuple[bytes, ...], client: str, at: int, query: str, reply: str, valid: bool
) -> None:
    clock[0] = at
    option, got_valid = Cookies(secrets).answer(client, bytes.fromhex(query))
    assert option == struct.pack("!HH", 10, len(reply) // 2) + bytes.fromhex(reply)
    assert got_valid is valid


def _server_cookie(cookies: Cookies, client: bytes, address: str, at: int) -> bytes:
    return client + cookies.make(client, ipaddress.ip_address(address).packed, at)


@pytest.mark.parametrize(
    ("age", "valid", "echoed"),
    [
        (0, True, True),
        (1799, True, True),
        (1800, True, False),
        (3600, True, False),
        (3601, False, False),
        (-300, True, True),
        (-301, False, False),
    ],
)
def test_a_server_cookie_is_valid_for_an_hour_and_echoed_for_half(
    clock: list[int], age: int, valid: bool, echoed: bool
) -> None:
    cookies = Cookies((SECRET_1,))
    sent = _server_cookie(cookies, b"clientck", "192.0.2.1", NOW - age)
    option, got = cookies.answer("192.0.2.1", sent)
    assert got is valid
    assert (option[4:] == sent) is echoed
    if not echoed:  # a fresh one, stamped now
        assert option[4:] == _server_cookie(cookies, b"clientck", "192.0.2.1", NOW)


def test_the_timestamp_is_serial_arithmetic_across_the_wrap(clock: list[int]) -> None:
    cookies = Cookies((SECRET_1,))
    clock[0] = (1 << 32) + 1000  # 2106: the 32-bit timestamp has wrapped
    sent = _server_cookie(cookies, b"clientck", "192.0.2.1", (1 << 32) - 600)  # ten minutes before the wrap
    assert cookies.answer("192.0.2.1", sent) == (struct.pack("!HH", 10, 24) + sent, True)


def test_remembered_answers_change_when_the_cookie_ages(clock: list[int]) -> None:
    cookies = Cookies((SECRET_1,))
    sent = _server_cookie(cookies, b"clientck", "192.0.2.1", NOW)
    assert cookies.answer("192.0.2.1", sent)[0][4:] == sent
    clock[0] = NOW + 1800  # the cached echo must not outlive half an hour
    assert cookies.answer("192.0.2.1", sent)[0][4:] != sent
    clock[0] = NOW + 3601
    assert cookies.answer("192.0.2.1", sent)[1] is False
    # The same cookie from another address is not valid: the address is in the hash.
    clock[0] = NOW
    assert cookies.answer("192.0.2.2", sent)[1] is False


# -- the query path ---------------------------------------------------------------------------


def _config(tmp_path: Path, extra: str) -> Path:
    text = (EXAMPLE_ZONES / "gslb.toml").read_text() + "\n" + extra
    path = tmp_path / "gslb.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "cookie.key"
    path.write_text("# current, then the one before the rotation\n" + SECRET_NEW.hex() + "\n" + SECRET_OLD.hex() + "\n")
    return path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory, secret_file: Path) -> Snapshot:
    config = _config(tmp_path_factory.mktemp("cfg"), f'[cookies]\nsecret_file = "{secret_file}"\n')
    return build(Sources(EXAMPLE_ZONES, config=config))


def _query(name: str, rdtype: str = "A", cookie: bytes | None = None, **kw: object) -> bytes:
    options = [] if cookie is None else [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, cookie)]
    return dns.message.make_query(name, rdtype, use_edns=0, options=options, **kw).to_wire()  # type: ignore[arg-type]


def _cookie_of(reply: bytes) -> bytes | None:
    found = [o for o in dns.message.from_wire(reply).options if o.otype == dns.edns.OptionType.COOKIE]
    assert len(found) <= 1
    if not found:
        return None
    data = found[0].to_wire()  # the option's data: the client cookie and the server cookie
    return struct.pack("!HH", 10, len(data)) + data


def test_the_fast_path_answers_a_cookie_byte_identical_to_the_general_path(
    clock: list[int], snapshot: Snapshot
) -> None:
    answerer = Answerer(snapshot, HealthView())
    made = _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW)
    young = _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW - 10)
    cases = [  # what the client sends, what it gets back: a young valid cookie of the current secret is echoed
        (b"clientck", made),
        (young, young),
        (_server_cookie(Cookies((SECRET_OLD,)), b"clientck", "127.0.0.1", NOW - 10), made),  # valid, renewed
        (b"clientck" + bytes(16), made),
        (b"clientck" + bytes(8), made),
        (b"clientck" + bytes(32), made),
    ]
    for name in ("static.example.com.", "www.example.com.", "missing.example.com.", "example.org."):
        for sent, expected in cases:
            wire = _query(name, cookie=sent)
            first = answerer.handle(wire, "127.0.0.1")
            fast = answerer._fast(wire, "127.0.0.1", False)
            assert fast is not None, (name, sent.hex())
            assert fast == first == Answerer(snapshot, HealthView())._general(wire, "127.0.0.1", False)[0]
            assert _cookie_of(fast) == struct.pack("!HH", 10, 24) + expected, (name, sent.hex())


def test_an_invalid_server_cookie_is_answered_as_if_only_the_client_cookie_came(
    clock: list[int], snapshot: Snapshot
) -> None:
    # RFC 7873 §5.2.4: neither BADCOOKIE nor a drop; a normal answer and a fresh server cookie.
    answerer = Answerer(snapshot, HealthView())
    reply = answerer.handle(
        _query("static.example.com.", cookie=b"clientck" + b"\x01\x00\x00\x00" + bytes(12)), "192.0.2.7"
    )
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.rcode() == dns.rcode.NOERROR and message.answer
    assert _cookie_of(reply) == struct.pack("!HH", 10, 24) + _server_cookie(
        Cookies((SECRET_NEW,)), b"clientck", "192.0.2.7", NOW
    )


@pytest.mark.parametrize("length", [0, 1, 7, 9, 15, 41, 60])
def test_a_cookie_option_of_a_bad_length_is_formerr(clock: list[int], snapshot: Snapshot, length: int) -> None:
    answerer = Answerer(snapshot, HealthView())
    wire = _query("static.example.com.", cookie=bytes(length))
    assert answerer._fast(wire, "127.0.0.1", False) is None
    reply = answerer.handle(wire, "127.0.0.1")
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.rcode() == dns.rcode.FORMERR and not message.answer
    assert _cookie_of(reply) is None


def test_two_cookie_options_are_formerr(clock: list[int], snapshot: Snapshot) -> None:
    answerer = Answerer(snapshot, HealthView())
    options = [dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"clientck")] * 2
    wire = dns.message.make_query("static.example.com.", "A", use_edns=0, options=options).to_wire()
    assert answerer._fast(wire, "127.0.0.1", False) is None
    reply = answerer.handle(wire, "127.0.0.1")
    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def _empty_query(cookie: bytes) -> bytes:
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00" + struct.pack("!HHH", len(cookie) + 4, 10, len(cookie)) + cookie
    return struct.pack("!HHHHHH", 0x4242, 0x0100, 0, 0, 0, 1) + opt


def test_a_query_without_a_question_gets_our_cookie(clock: list[int], snapshot: Snapshot) -> None:
    # RFC 7873 §5.4: QDCOUNT 0 and a COOKIE: NOERROR and a server cookie; a bad server cookie: BADCOOKIE.
    answerer = Answerer(snapshot, HealthView())
    made = _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW)
    for sent, rcode in (
        (b"clientck", dns.rcode.NOERROR),
        (made, dns.rcode.NOERROR),
        (b"clientck" + bytes(16), dns.rcode.BADCOOKIE),
    ):
        reply = answerer.handle(_empty_query(sent), "127.0.0.1")
        assert reply is not None
        message = dns.message.from_wire(reply)
        assert message.id == 0x4242 and not message.question and message.rcode() == rcode
        assert message.flags & dns.flags.RD and not message.flags & dns.flags.AA
        assert _cookie_of(reply) == struct.pack("!HH", 10, 24) + made
    # Without a COOKIE it stays FORMERR, header only, as before.
    reply = answerer.handle(struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0), "127.0.0.1")
    assert reply == struct.pack("!HHHHHH", 7, 0x8101, 0, 0, 0, 0)


def test_large_answers_need_a_valid_server_cookie(clock: list[int], tmp_path: Path, secret_file: Path) -> None:
    config = _config(
        tmp_path,
        f'[cookies]\nsecret_file = "{secret_file}"\nlarge_answers_need_cookie = true\nlarge_answer_size = 100\n',
    )
    answerer = Answerer(build(Sources(EXAMPLE_ZONES, config=config)), HealthView())
    # TXT at txt.example.com (105 bytes, 133 with a cookie) is larger than the configured 100; static A is not.
    for cookie in (None, b"clientck"):
        wire = _query("txt.example.com.", "TXT", cookie=cookie, payload=1232)
        reply = answerer.handle(wire, "127.0.0.1")
        assert reply is not None
        message = dns.message.from_wire(reply)
        assert message.flags & dns.flags.TC and not message.answer
        if cookie is not None:  # the client learns our cookie from the truncated reply
            assert _cookie_of(reply) is not None
        full = answerer.handle(wire, "127.0.0.1", tcp=True)
        assert full is not None and len(full) > 100 and dns.message.from_wire(full).answer
        small = answerer.handle(_query("static.example.com.", cookie=cookie), "127.0.0.1")
        assert small is not None and not dns.message.from_wire(small).flags & dns.flags.TC
    valid = _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW)
    wire = _query("txt.example.com.", "TXT", cookie=valid, payload=1232)
    reply = answerer.handle(wire, "127.0.0.1")
    assert reply is not None and not dns.message.from_wire(reply).flags & dns.flags.TC
    assert answerer._fast(wire, "127.0.0.1", False) == reply


def test_without_cookies_the_option_is_ignored(clock: list[int], tmp_path: Path) -> None:
    answerer = Answerer(
        build(Sources(EXAMPLE_ZONES, config=_config(tmp_path, "[cookies]\nenabled = false\n"))), HealthView()
    )
    reply = answerer.handle(_query("static.example.com.", cookie=b"clientck"), "127.0.0.1")
    assert reply is not None and _cookie_of(reply) is None
    assert answerer.state.cookies is None


def test_cookies_are_on_by_default_with_the_process_secret(clock: list[int]) -> None:
    answerer = Answerer(build(Sources(EXAMPLE_ZONES)), HealthView())  # the example's gslb.toml: no [cookies]
    assert answerer.state.cookies is not None and answerer.state.cookies.secrets == (cookie_module.PROCESS_SECRET,)
    reply = answerer.handle(_query("static.example.com.", cookie=b"clientck"), "127.0.0.1")
    assert reply is not None and _cookie_of(reply) == struct.pack("!HH", 10, 24) + _server_cookie(
        Cookies((cookie_module.PROCESS_SECRET,)), b"clientck", "127.0.0.1", NOW
    )


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("abc\n", "line 1: expected 32 hex digits"),
        ("\n# nothing\n", "no secret in the file"),
        ((SECRET_1.hex() + "\n") * 4, "4 secrets; at most 3"),
        (SECRET_1.hex() + "\n" + SECRET_1.hex()[:-1] + "\n", "line 2: expected 32 hex digits"),
    ],
)
def test_a_bad_secret_file_is_reported_at_its_key(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "cookie.key").write_text(content)
    text = '[geo]\nno_ecs = "resolver"\n\n[cookies]\nsecret_file = "cookie.key"\n'
    with pytest.raises(ConfigError) as info:
        loads(text, tmp_path / "gslb.toml")
    assert str(info.value).startswith(f"{tmp_path / 'gslb.toml'}:5: cookies.secret_file: ")
    assert message in str(info.value)


def test_cookie_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    text = (
        '[cookies]\nsecret_file = "missing.key"\nlarge_answer_size = 10\nlarge_answers_need_cookie = "yes"\n'
        "secret = 1\n"
    )
    with pytest.raises(ConfigError) as info:
        loads(text, tmp_path / "gslb.toml")
    lines = str(info.value).splitlines()
    where = tmp_path / "gslb.toml"
    assert lines[0].startswith(f"{where}:2: cookies.secret_file: no such file")
    assert lines[1] == f"{where}:3: cookies.large_answer_size: must be between 64 and 65535, got 10"
    assert lines[2] == f"{where}:4: cookies.large_answers_need_cookie: expected true or false, got a string"
    assert lines[3].startswith(f"{where}:5: cookies.secret: unknown key; did you mean 'secret_file'?")


def test_cookie_config_is_read(tmp_path: Path) -> None:
    (tmp_path / "k").write_text(SECRET_1.hex().upper() + "  # made with openssl rand -hex 16\n")
    config = loads('[cookies]\nsecret_file = "k"\n', tmp_path / "gslb.toml")
    assert config.cookies is not None and config.cookies.secrets == (SECRET_1,)
    assert config.cookies.large_answer_size == 0
    assert SECRET_1.hex() not in repr(config)  # never in a log line
    assert loads("[cookies]\nenabled = false\n").cookies is None
    assert loads("[cookies]\n").cookies is not None  # a random secret per process
    assert loads("").cookies == loads("[cookies]\n").cookies  # the default: on, with that secret
    assert loads("").cookies.secrets is None  # type: ignore[union-attr]


# -- a real server, dig and dnspython ----------------------------------------------------------


@pytest.fixture
def cookie_servers(start_server: type[Server], tmp_path: Path, secret_file: Path) -> tuple[Server, Server]:
    config = _config(tmp_path, f'[cookies]\nsecret_file = "{secret_file}"\n')
    state = tmp_path / "state.json"
    common = ("--zones", str(EXAMPLE_ZONES), "--config", str(config), "--no-probes")
    # Two instances behind one name: the default worker mode and a single process.
    return (
        start_server(*common, "--state-file", str(state), "--workers", "2"),
        start_server(*common, "--state-file", str(tmp_path / "state2.json"), "--workers", "0"),
    )


def test_dig_gets_a_server_cookie_that_another_instance_accepts(cookie_servers: tuple[Server, Server]) -> None:
    need("dig")
    first, second = cookie_servers
    out = first.dig("static.example.com", "+cookie=0123456789abcdef", "+norec")
    assert "status: NOERROR" in out, out
    found = re.search(r"; COOKIE: ([0-9a-f]{48}) \(good\)", out)
    assert found, out
    full = found.group(1)
    assert full.startswith("0123456789abcdef01000000")
    # The second instance has the same secret: it accepts the cookie, and since it is young, echoes it.
    for server in (first, second):
        again = server.dig("static.example.com", f"+cookie={full}", "+norec")
        assert f"; COOKIE: {full} (good)" in again, again
        assert "ANSWER: 1" in again, again


def test_dnspython_sends_a_cookie_and_keeps_the_answer(cookie_servers: tuple[Server, Server]) -> None:
    first, second = cookie_servers
    query = dns.message.make_query(
        "www.example.com.", "A", use_edns=0, options=[dns.edns.CookieOption(b"\x11" * 8, b"")]
    )
    reply = first.send(query)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    cookie = next(o for o in reply.options if isinstance(o, dns.edns.CookieOption))
    assert cookie.client == b"\x11" * 8 and len(cookie.server) == 16 and cookie.server[0] == 1
    # Over TCP as well, and at the other instance: the server cookie comes back unchanged.
    again = dns.message.make_query(
        "www.example.com.", "A", use_edns=0, options=[dns.edns.CookieOption(b"\x11" * 8, cookie.server)]
    )
    for server, tcp in ((second, False), (second, True), (first, True)):
        reply = server.send(again, tcp=tcp)
        echoed = next(o for o in reply.options if isinstance(o, dns.edns.CookieOption))
        assert echoed.server == cookie.server and reply.answer


def test_the_compiled_loop_makes_and_remembers_cookies_as_python_does(
    clock: list[int], snapshot: Snapshot, tmp_path: Path
) -> None:
    compiled = pytest.importorskip("gslb.dns._fastudp", reason="the compiled UDP loop is not built")
    answerer = Answerer(snapshot, HealthView())
    cookies = answerer.state.cookies
    assert cookies is not None
    plain, with_cookie = _query("static.example.com."), _query("static.example.com.", cookie=b"clientck")
    answerer.handle(plain, "127.0.0.1")  # the general path caches the answer
    assert compiled.answer(answerer, plain, "127.0.0.1") == answerer._fast(plain, "127.0.0.1", False)
    cookies.cache.clear()
    # Not seen before: C makes the server cookie, remembers it as Python would, and Python answers the same.
    first = compiled.answer(answerer, with_cookie, "127.0.0.1")
    assert cookies.cache[("127.0.0.1", b"clientck")] == cookies._work_out("127.0.0.1", b"clientck", NOW)
    assert first is not None and first == answerer._fast(with_cookie, "127.0.0.1", False) == answerer.handle(
        with_cookie, "127.0.0.1"
    )
    made = _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW)
    assert _cookie_of(first) == struct.pack("!HH", 10, 24) + made
    other = compiled.answer(answerer, with_cookie, "::1")  # another client: its own cookie
    assert other is not None and _cookie_of(other) != _cookie_of(first)
    # Returned: valid and echoed; the old secret's is valid too and renewed; from another address it is not.
    for sent, address, expected, valid in (
        (made, "127.0.0.1", made, True),
        (_server_cookie(Cookies((SECRET_OLD,)), b"clientck", "127.0.0.1", NOW - 10), "127.0.0.1", made, True),
        (made, "127.0.0.2", _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.2", NOW), False),
    ):
        wire = _query("static.example.com.", cookie=sent)
        reply = compiled.answer(answerer, wire, address)
        assert reply is not None and _cookie_of(reply) == struct.pack("!HH", 10, 24) + expected
        assert cookies.cache[(address, sent)][1] is valid
        assert reply == answerer._fast(wire, address, False)
    clock[0] = NOW + cookie_module.REMEMBER  # no longer remembered: stamped anew
    renewed = compiled.answer(answerer, with_cookie, "127.0.0.1")
    assert renewed is not None and _cookie_of(renewed) == struct.pack("!HH", 10, 24) + _server_cookie(
        Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW + cookie_module.REMEMBER
    )
    assert compiled.answer(answerer, with_cookie, None) is None  # no address to hash: Python
    assert compiled.answer(answerer, _query("static.example.com.", cookie=bytes(9)), "127.0.0.1") is None  # FORMERR
    # Without cookies the option is ignored in C as in Python.
    off = Answerer(
        build(Sources(EXAMPLE_ZONES, config=_config(tmp_path, "[cookies]\nenabled = false\n"))), HealthView()
    )
    off.handle(with_cookie, "127.0.0.1")
    reply = compiled.answer(off, with_cookie, "127.0.0.1")
    assert reply is not None and reply == off._fast(with_cookie, "127.0.0.1", False) and _cookie_of(reply) is None


@pytest.mark.parametrize("length", range(len(SIPHASH_VECTORS)))
def test_the_compiled_siphash24_gives_the_reference_vectors(length: int) -> None:
    compiled = pytest.importorskip("gslb.dns._fastudp", reason="the compiled UDP loop is not built")
    assert compiled.siphash24(bytes(range(16)), bytes(range(length))).hex() == SIPHASH_VECTORS[length]
    for size in (20, 32, length * 3):
        message = bytes((length * 7 + i) & 0xFF for i in range(size))
        assert compiled.siphash24(SECRET_1, message) == siphash24(SECRET_1, message)
    with pytest.raises(TypeError):
        compiled.siphash24(bytes(15), b"")


def test_the_compiled_loop_leaves_large_answers_to_python(clock: list[int], tmp_path: Path, secret_file: Path) -> None:
    compiled = pytest.importorskip("gslb.dns._fastudp", reason="the compiled UDP loop is not built")
    config = _config(
        tmp_path,
        f'[cookies]\nsecret_file = "{secret_file}"\nlarge_answers_need_cookie = true\nlarge_answer_size = 100\n',
    )
    answerer = Answerer(build(Sources(EXAMPLE_ZONES, config=config)), HealthView())
    large, small = _query("txt.example.com.", "TXT", payload=1232), _query("static.example.com.")
    for wire in (large, small):
        answerer.handle(wire, "127.0.0.1", True)  # cached (over TCP: no TC)
    assert answerer._fast(large, "127.0.0.1", False) is None  # Python sends TC
    assert compiled.answer(answerer, large, "127.0.0.1") is None
    reply = compiled.answer(answerer, small, "127.0.0.1")
    assert reply is not None and reply == answerer._fast(small, "127.0.0.1", False)
    # With a cookie remembered: a valid one lets the large answer through in C, a client cookie alone does not.
    valid = _server_cookie(Cookies((SECRET_NEW,)), b"clientck", "127.0.0.1", NOW)
    for cookie, answered in ((b"clientck", False), (valid, True)):
        wire = _query("txt.example.com.", "TXT", cookie=cookie, payload=1232)
        python = answerer.handle(wire, "127.0.0.1")
        assert python is not None and bool(dns.message.from_wire(python).flags & dns.flags.TC) is not answered
        reply = compiled.answer(answerer, wire, "127.0.0.1")
        assert (reply == python == answerer._fast(wire, "127.0.0.1", False)) if answered else reply is None


def test_the_secret_file_is_an_input_and_a_random_secret_is_logged_once(
    start_server: type[Server], tmp_path: Path, secret_file: Path
) -> None:
    config = _config(tmp_path, f'[cookies]\nsecret_file = "{secret_file}"\n')
    assert secret_file in build(Sources(EXAMPLE_ZONES, config=config)).inputs.files  # a rotation reloads
    config.write_text((EXAMPLE_ZONES / "gslb.toml").read_text() + "\n[cookies]\n")
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
    )
    reply = server.query("static.example.com.", use_edns=0, options=[dns.edns.CookieOption(b"\x22" * 8, b"")])
    server_cookie = next(o for o in reply.options if isinstance(o, dns.edns.CookieOption)).server
    assert len(server_cookie) == 16
    for _ in range(20):  # whichever worker answers, it accepts (and echoes) the cookie another made
        again = server.query(
            "static.example.com.", use_edns=0, options=[dns.edns.CookieOption(b"\x22" * 8, server_cookie)]
        )
        assert next(o for o in again.options if isinstance(o, dns.edns.CookieOption)).server == server_cookie
    # Made in the supervisor before the workers fork: one secret for all of them, one warning.
    assert sum("using a random secret" in line for line in server.lines) == 1, server.lines


def test_the_readmes_cookies_and_rrl_samples_load(tmp_path: Path) -> None:
    readme = (EXAMPLE_ZONES.parent / "README.md").read_text()
    samples = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if b.startswith(("[cookies]", "[rrl]"))]
    assert len(samples) == 2
    (tmp_path / "cookie.key").write_text(SECRET_1.hex() + "\n")
    loaded = [loads(sample, tmp_path / "gslb.toml") for sample in samples]
    assert loaded[0].cookies is not None and loaded[0].cookies.secrets == (SECRET_1,)
    assert loaded[1].rrl is not None and loaded[1].rrl.rate == 20
