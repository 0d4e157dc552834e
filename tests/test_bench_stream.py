"""The benchmark's never-repeating query stream (tests/bench/stream.py) has the properties it claims.

The benchmark itself is not part of the suite (tests/bench is in norecursedirs); this checks
its generator on 20,000 queries against the real GeoLite2-City database, in a few seconds.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from pathlib import Path

import dns.edns
import dns.message
import dns.rdatatype
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))

import stream

from gslb.geo.places import SPECIAL_NETWORKS

N = 20_000


@pytest.fixture(scope="module")
def queries() -> list[stream.Query]:
    try:
        mmdb = stream.geolite2_city()
    except SystemExit as exc:
        pytest.skip(str(exc))
    return list(stream.generate(N, seed=7, mmdb=mmdb))


def test_no_network_repeats_and_all_are_public(queries: list[stream.Query]) -> None:
    nets = [q.network for q in queries]
    assert len(set(nets)) == N
    for net in nets:
        assert net.prefixlen == (24 if net.version == 4 else 48)
        assert not any(net.overlaps(s) for s in SPECIAL_NETWORKS if s.version == net.version), net
    v6 = sum(1 for n in nets if n.version == 6) / N
    assert 0.13 < v6 < 0.17


def test_ipv6_networks_are_ones_the_database_places(queries: list[stream.Query]) -> None:
    import maxminddb

    with maxminddb.open_database(str(stream.geolite2_city())) as reader:
        v6 = [q.network for q in queries if q.network.version == 6][:300]
        assert all(reader.get(str(n.network_address)) is not None for n in v6)
        assert ipaddress.IPv6Network("2000::/3").supernet_of(v6[0])


def test_mix_and_cookie_share(queries: list[stream.Query]) -> None:
    kinds = Counter(q.kind for q in queries)
    for kind, share in {"www-A": 0.6, "www-AAAA": 0.1, "SOA": 0.1, "NS": 0.1, "NX": 0.1}.items():
        assert abs(kinds[kind] / N - share) < 0.015, (kind, kinds[kind])
    cookies = [q.cookie for q in queries if q.cookie is not None]
    assert abs(len(cookies) / N - 1 / 3) < 0.015
    assert all(len(c) == 8 for c in cookies)
    # Each resolver keeps its client cookie: a pool of them, each sent many times.
    assert stream.RESOLVERS * 0.9 < len(set(cookies)) <= stream.RESOLVERS


def test_wire_format_parses_and_matches(queries: list[stream.Query]) -> None:
    want_type = {"www-A": "A", "www-AAAA": "AAAA", "SOA": "SOA", "NS": "NS", "NX": "A"}
    nx_names = set()
    for q in queries[:3000]:
        m = dns.message.from_wire(q.wire)
        assert m.id == 0 and m.flags == 0 and m.edns == 0 and m.payload == stream.UDP_SIZE
        (question,) = m.question
        assert dns.rdatatype.to_text(question.rdtype) == want_type[q.kind]
        name = question.name.to_text()
        if q.kind.startswith("www"):
            assert name == "www.example.com."
        elif q.kind == "NX":
            assert name.endswith(".example.com.") and name.count(".") == 3
            nx_names.add(name)
        else:
            assert name == "example.com."
        ecs = [o for o in m.options if isinstance(o, dns.edns.ECSOption)]
        assert len(ecs) == 1
        assert ipaddress.ip_network(f"{ecs[0].address}/{ecs[0].srclen}") == q.network
        assert ecs[0].scopelen == 0
        cookie = [o for o in m.options if o.otype == dns.edns.OptionType.COOKIE]
        if q.cookie is None:
            assert not cookie
        else:
            assert len(cookie) == 1 and cookie[0].client == q.cookie and cookie[0].server == b""
    assert len(nx_names) > 250


def test_files_split_one_stream(tmp_path: Path) -> None:
    mmdb = stream.geolite2_city()
    a, b = stream.cached(tmp_path, [500, 200], seed=3, mmdb=mmdb)
    first, second = list(stream.read(a)), list(stream.read(b))
    assert len(first) == 500 and len(second) == 200
    whole = [q.wire for q in stream.generate(700, seed=3, mmdb=mmdb)]
    assert first + second == whole
    assert stream.cached(tmp_path, [500, 200], seed=3, mmdb=mmdb) == [a, b]  # reused, not rewritten


def test_blast_sends_the_file_and_matches_every_answer(tmp_path: Path) -> None:
    """blast.c, the benchmark's batched sender: every query of one pass answered and counted."""
    import shutil
    import socket
    import subprocess
    import threading

    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "blast"
    subprocess.run([cc, "-O2", "-o", str(exe), str(Path(stream.__file__).with_name("blast.c"))], check=True)
    (qfile,) = stream.cached(tmp_path, [300], seed=5, mmdb=stream.geolite2_city())
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    ids: set[bytes] = set()
    stop = threading.Event()

    def answer() -> None:  # echo each query back as an answer: QR set, RCODE 3 for every tenth
        n = 0
        while not stop.is_set():
            try:
                data, addr = srv.recvfrom(4096)
            except TimeoutError:
                continue
            ids.add(data[:2])
            n += 1
            srv.sendto(data[:2] + bytes([data[2] | 0x80, 3 if n % 10 == 0 else 0]) + data[4:], addr)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        r = subprocess.run(
            [str(exe), "-s", "127.0.0.1", "-p", str(srv.getsockname()[1]), "-f", str(qfile), "-n", "1", "-l", "10"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    finally:
        stop.set()
        t.join(timeout=5)
        srv.close()
    out = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert (out["sent"], out["completed"], out["lost"]) == ("300", "300", "0")
    assert out["rcodes"].split() == ["NOERROR:270", "NXDOMAIN:30"]
    assert len(ids) == 300  # a fresh ID for every query
    assert 0 < float(out["p50_ms"]) <= float(out["p99_ms"]) <= float(out["max_ms"]) + 0.001
