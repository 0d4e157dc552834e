"""DNSSEC: keys made with `gslb keys`, every kind of answer validated by delv and by a real unbound,
signatures made again in the background, and the white-lie NSEC ranges checked against the zone."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gslb.dns import denial, keys
from gslb.dns.answer import Answerer
from gslb.dns.zones import wire_of
from gslb.health.view import HealthView, Status
from gslb.snapshot import Snapshot, Sources, build, resign
from tests.conftest import EXAMPLE_ZONES, Server, need
from tests.probe_targets import Behaviour, HttpTarget
from tests.secondtier import DATACENTERS, PORT, free_addresses
from tests.test_fuzz import SEEDS
from tests.test_ops import scrape
from tests.test_ops import value as sample

ZONE = dns.name.from_text("example.com.")
# delv cannot send ECS: it is placed by its source address, which these overrides put on the map.
EUROPE_SOURCE, AMERICA_SOURCE = "127.77.0.1", "127.78.0.1"
OVERRIDES = """
[[geo.override]]
network = "127.77.0.0/16"
country = "DE"
continent = "EU"
latitude = 50.11
longitude = 8.68

[[geo.override]]
network = "127.78.0.0/16"
country = "US"
continent = "NA"
latitude = 39.04
longitude = -77.49
"""
EUROPE = dns.edns.ECSOption("85.214.0.0", 24)  # a German network (embedded geo database)
AMERICA = dns.edns.ECSOption("8.8.8.0", 24)  # an American one


def _gslb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gslb", *args], capture_output=True, text=True, timeout=60)


def _signed_copy(directory: Path) -> Path:
    """A copy of the example zones with a key made by `gslb keys generate`."""
    shutil.copytree(EXAMPLE_ZONES, directory)
    made = _gslb("keys", "generate", "example.com", "--zones", str(directory))
    assert made.returncode == 0, made.stderr
    return directory


def _dnskey(directory: Path) -> str:
    """The zone's DNSKEY record data (flags, protocol, algorithm, key) from its .key file."""
    (public,) = (directory / "keys").glob("*.key")
    return public.read_text().split(None, 4)[4].strip()


@dataclass
class Site:
    server: Server
    zones: Path
    anchor: Path  # delv's trust anchor file
    dnskey: str
    vips: dict[str, str]  # data center -> its IPv4 VIP, where a probe target listens
    targets: dict[str, HttpTarget]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A signed copy of the example served in the default mode (workers, probes, HTTP), its data
    centers' VIPs moved to loopback addresses where probe targets answer."""
    need("delv")
    base = tmp_path_factory.mktemp("dnssec")
    zones = _signed_copy(base / "zones")
    addresses, port = free_addresses(len(DATACENTERS))
    vips = dict(zip(DATACENTERS, addresses, strict=True))
    config = (zones / "gslb.toml").read_text().replace(f"port = {PORT}", f"port = {port}")
    for name, vip in vips.items():
        config = config.replace(f'"{DATACENTERS[name]}"', f'"{vip}"')
    (zones / "gslb.toml").write_text(config + OVERRIDES)
    targets = {name: HttpTarget(vip, port) for name, vip in vips.items()}
    dnskey = _dnskey(zones)
    flags, protocol, algorithm, key = dnskey.split(None, 3)
    anchor = base / "anchor.conf"
    anchor.write_text(f'trust-anchors {{\n  example.com. static-key {flags} {protocol} {algorithm} "{key}";\n}};\n')
    server = Server(["--zones", str(zones), "--state-file", str(base / "state.json"), "--http", "127.0.0.1:0"])
    try:
        yield Site(server, zones, anchor, dnskey, vips, targets)
    finally:
        server.stop()
        for target in targets.values():
            target.close()


def _delv(site: Site, name: str, rdtype: str = "A", source: str | None = None) -> str:
    args = ["delv", "@127.0.0.1", "-p", str(site.server.port), "-a", str(site.anchor), "+root=example.com"]
    args += ["-b", source] if source else []
    done = subprocess.run([*args, name, rdtype], capture_output=True, text=True, timeout=20)
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    ("name", "rdtype", "source", "expected"),
    [
        ("static.example.com.", "A", None, r"; fully validated\n.*IN\s+A\s+127\.0\.0\.10"),
        ("example.com.", "SOA", None, r"; fully validated\n.*IN\s+SOA\s+ns1\.example\.com\."),
        ("alias.example.com.", "A", None, r"; fully validated\n.*CNAME\s+static\.example\.com\.(.|\n)*127\.0\.0\.10"),
        ("web.example.com.", "AAAA", None, r"; fully validated\n.*CNAME\s+www\.example\.com\.(.|\n)*2001:db8:1::1"),
        ("anything.wild.example.com.", "A", None, r"; fully validated\n.*IN\s+A\s+127\.0\.0\.11"),
        ("nope.example.com.", "A", None, r"; negative response, fully validated\n.*NXDOMAIN"),
        ("a.b.nope.example.com.", "TXT", None, r"; negative response, fully validated\n.*NXDOMAIN"),
        ("static.example.com.", "MX", None, r"; negative response, fully validated\n.*NXRRSET"),
        ("deep.example.com.", "A", None, r"; negative response, fully validated\n.*NXRRSET"),  # empty non-terminal
        ("x.wild.example.com.", "MX", None, r"; negative response, fully validated\n.*NXRRSET"),
        ("www.example.com.", "TXT", None, r"; negative response, fully validated\n.*NXRRSET"),
        ("sub.example.com.", "DS", None, r"; negative response, fully validated\n.*NXRRSET"),  # insecure delegation
        ("www.example.com.", "A", EUROPE_SOURCE, "eu"),
        ("www.example.com.", "A", AMERICA_SOURCE, "us"),
        ("app.example.com.", "AAAA", EUROPE_SOURCE, r"; fully validated\n.*2001:db8:2::1"),
        ("img.example.com.", "A", None, r"; fully validated\n"),  # two of three, drawn per query
    ],
)
def test_delv_fully_validates(site: Site, name: str, rdtype: str, source: str | None, expected: str) -> None:
    out = _delv(site, name, rdtype, source)
    if expected in site.vips:  # a service answer: the data center's VIP, validated
        expected = r"; fully validated\n.*IN\s+A\s+" + re.escape(site.vips[expected])
    assert re.search(expected, out), out


def _query(port: int, name: str, rdtype: str = "A", *, do: bool = True, **make: object) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, want_dnssec=do, **make)  # type: ignore[arg-type]
    return dns.query.udp(message, "127.0.0.1", port=port, timeout=5)


def test_rrsigs_only_when_the_query_sets_do(site: Site, example_server: Server) -> None:
    port = site.server.port
    signed = _query(port, "static.example.com.")
    assert signed.ednsflags & dns.flags.DO  # echoed (RFC 3225)
    assert [r.rdtype for r in signed.answer] == [dns.rdatatype.A, dns.rdatatype.RRSIG]
    plain = _query(port, "static.example.com.", do=False, use_edns=0)
    assert not plain.ednsflags & dns.flags.DO
    assert [r.rdtype for r in plain.answer] == [dns.rdatatype.A]
    # dig as well: without +dnssec no RRSIG and no NSEC anywhere, NXDOMAIN included
    for name in ("static.example.com", "nope.example.com", "www.example.com"):
        assert "RRSIG" in site.server.dig("+dnssec", name, "A")
        out = site.server.dig(name, "A")
        assert "RRSIG" not in out and "NSEC" not in out, out
    # A zone without keys is not signed, DO or not.
    assert "RRSIG" not in example_server.dig("+dnssec", "static.example.com", "A")


def test_a_signed_answer_too_large_for_udp_comes_whole_over_tcp(site: Site) -> None:
    port = site.server.port
    small = _query(port, "nothing-here.example.com.", use_edns=0, payload=512)
    assert small.flags & dns.flags.TC and not small.answer and not small.authority
    whole = dns.query.tcp(
        dns.message.make_query("nothing-here.example.com.", "A", want_dnssec=True), "127.0.0.1", port=port, timeout=5
    )
    assert whole.rcode() == dns.rcode.NXDOMAIN
    assert {r.rdtype for r in whole.authority} == {dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
    plain = _query(port, "nothing-here.example.com.", do=False, use_edns=0, payload=512)  # unsigned: fits
    assert not plain.flags & dns.flags.TC and plain.rcode() == dns.rcode.NXDOMAIN


def test_check_reports_the_signed_zone(site: Site) -> None:
    checked = _gslb("check", "--zones", str(site.zones))
    assert checked.returncode == 0, checked.stderr
    (public,) = (site.zones / "keys").glob("*.key")
    tag = int(public.stem.rsplit("+", 1)[1])
    assert f"dnssec: example.com. signed, key tag {tag} (algorithm 13)" in checked.stdout
    assert re.search(r"dnssec: \d+ signatures made ahead in [\d.]+ s, 60 of them service answers", checked.stdout)
    unsigned = _gslb("check", "--zones", str(EXAMPLE_ZONES))
    assert unsigned.returncode == 0 and "dnssec" not in unsigned.stdout


def test_metrics_say_when_the_signatures_served_expire(site: Site) -> None:
    rrsig = _query(site.server.port, "static.example.com.").answer[1][0]
    metrics = scrape(site.server)
    zone = {"zone": "example.com."}
    assert sample(metrics, "gslb_dnssec_signature_expiration_seconds", **zone) == rrsig.expiration
    assert rrsig.inception < sample(metrics, "gslb_dnssec_resign_due_seconds", **zone) < rrsig.expiration
    key = {"tag": str(rrsig.key_tag), "algorithm": str(int(rrsig.algorithm))}
    assert sample(metrics, "gslb_dnssec_key_info", **zone, **key) == 1
    assert [labels for name, labels in metrics if name == "gslb_dnssec_key_info"] == [
        frozenset({**zone, **key}.items())
    ]
    checked = _gslb("check", "--zones", str(site.zones))
    ahead = re.search(r"dnssec: (\d+) signatures made ahead", checked.stdout)
    assert ahead, checked.stdout
    assert sample(metrics, "gslb_dnssec_signatures_ahead") == int(ahead.group(1))


# -- a real validating resolver ---------------------------------------------------------------


class Unbound:
    """unbound on a loopback port, with a trust anchor for example.com and a stub zone at gslb."""

    def __init__(self, directory: Path, gslb_port: int, dnskey: str):
        directory.mkdir()
        self.port = _free_port()
        config = directory / "unbound.conf"
        config.write_text(
            f"""server:
  interface: 127.0.0.1
  port: {self.port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{directory}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  trust-anchor: "example.com. DNSKEY {dnskey}"
  # ECS from the client's query forwarded to gslb, answers cached per subnet (RFC 7871)
  module-config: "subnetcache validator iterator"
  send-client-subnet: 127.0.0.1
  client-subnet-always-forward: yes
  qname-minimisation: no
  prefetch: no
  # RFC 8198: NSEC ranges in its cache deny names it never asked; white lies must deny none that exist
  aggressive-nsec: yes
remote-control:
  control-enable: no
stub-zone:
  name: "example.com"
  stub-addr: 127.0.0.1@{gslb_port}
# Everything else to gslb too (REFUSED there): nothing leaves the loopback.
stub-zone:
  name: "."
  stub-addr: 127.0.0.1@{gslb_port}
"""
        )
        self.proc = subprocess.Popen(
            ["unbound", "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        started = threading.Event()
        self.log: list[str] = []

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if "start of service" in line:
                    started.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        assert started.wait(15), "unbound did not start:\n" + "".join(self.log)

    def ask(self, name: str, rdtype: str = "A", *options: dns.edns.Option) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, want_dnssec=True, options=list(options))
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 (unbound binds both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no free port")


@pytest.fixture(scope="module")
def unbound(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    need("unbound")
    resolver = Unbound(tmp_path_factory.mktemp("unbound") / "good", site.server.port, site.dnskey)
    yield resolver
    resolver.stop()


@pytest.mark.parametrize(
    ("name", "rdtype", "options", "rcode", "answer"),
    [
        ("static.example.com.", "A", (), "NOERROR", "127.0.0.10"),
        ("example.com.", "SOA", (), "NOERROR", "ns1.example.com."),
        ("alias.example.com.", "A", (), "NOERROR", "127.0.0.10"),
        ("some.wild.example.com.", "A", (), "NOERROR", "127.0.0.11"),
        ("missing.example.com.", "A", (), "NXDOMAIN", None),
        ("static.example.com.", "TXT", (), "NOERROR", None),
        ("www.example.com.", "A", (EUROPE,), "NOERROR", "eu"),
        ("www.example.com.", "A", (AMERICA,), "NOERROR", "us"),
    ],
)
def test_unbound_validates_every_kind_of_answer(
    site: Site,
    unbound: Unbound,
    name: str,
    rdtype: str,
    options: tuple[dns.edns.Option, ...],
    rcode: str,
    answer: str | None,
) -> None:
    reply = unbound.ask(name, rdtype, *options)
    assert dns.rcode.to_text(reply.rcode()) == rcode, reply.to_text()
    assert reply.flags & dns.flags.AD, reply.to_text()  # validated (RFC 4035 §3.2.3)
    texts = [rdata.to_text() for rrset in reply.answer if rrset.rdtype != dns.rdatatype.RRSIG for rdata in rrset]
    if answer is None:
        assert not texts
    else:
        assert any(text.split()[0] == site.vips.get(answer, answer) for text in texts), reply.to_text()


def test_unbound_denies_from_its_cache_nothing_that_exists(unbound: Unbound) -> None:
    """Missing names beside existing ones in canonical order (RFC 4034 §6.1), then those that exist."""
    for missing, existing in [
        ("maik.example.com.", "mail.example.com."),
        ("mailz.example.com.", "mail.example.com."),
        ("nr.example.com.", "ns1.example.com."),
        ("ns10.example.com.", "ns2.example.com."),
        ("a.deep.example.com.", "b.deep.example.com."),
        ("stat.example.com.", "static.example.com."),
    ]:
        assert unbound.ask(missing).rcode() == dns.rcode.NXDOMAIN
        reply = unbound.ask(existing)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD, reply.to_text()
        assert any(r.rdtype == dns.rdatatype.A for r in reply.answer), reply.to_text()


def test_unbound_with_a_wrong_anchor_says_servfail(site: Site, tmp_path: Path) -> None:
    """The same resolver with another key as its anchor: the zone's signatures do not verify."""
    need("unbound")
    other = keys.generate(tmp_path, ZONE)
    wrong = Unbound(tmp_path / "wrong", site.server.port, other.dnskey.to_text())
    try:
        reply = wrong.ask("static.example.com.")
        assert reply.rcode() == dns.rcode.SERVFAIL, reply.to_text()
        assert not reply.answer
    finally:
        wrong.stop()


# -- keys, pre-signing, re-signing (in process) -----------------------------------------------


def test_keys_generate_and_ds(tmp_path: Path) -> None:
    zones = _signed_copy(tmp_path / "zones")
    made = _gslb("keys", "generate", "example.com", "--algorithm", "ed25519", "--zones", str(zones))
    assert made.returncode == 0, made.stderr
    found = keys.load(zones)[ZONE]
    assert sorted(key.algorithm for key in found) == [13, 15]
    for key in found:
        assert key.dnskey.flags == 257
        assert os.stat(key.path).st_mode & 0o777 == 0o600
    ds = _gslb("keys", "ds", "example.com", "--zones", str(zones))
    assert ds.returncode == 0, ds.stderr
    lines = [line.split(None, 4) for line in ds.stdout.splitlines()]
    assert all(line[:4] == ["example.com.", "3600", "IN", "DS"] for line in lines)
    records = dns.rrset.from_text_list(ZONE, 3600, "IN", "DS", [line[4] for line in lines])
    assert set(records) == {dns.dnssec.make_ds(ZONE, key.dnskey, "SHA256") for key in found}
    none = _gslb("keys", "ds", "other.example", "--zones", str(zones))
    assert none.returncode == 1 and "no keys for other.example." in none.stderr


def test_a_private_key_others_can_read_is_an_error(tmp_path: Path) -> None:
    zones = _signed_copy(tmp_path / "zones")
    (private,) = (zones / "keys").glob("*.pem")
    private.chmod(0o644)
    checked = _gslb("check", "--zones", str(zones))
    assert checked.returncode == 1
    assert f"{private}: readable by others: chmod 600 it" in checked.stderr


@pytest.mark.parametrize(
    ("public", "error"),
    [
        ("", "expected `ZONE TTL IN DNSKEY ...`"),
        ("example.com. 3600 IN TXT hello there", "expected `ZONE TTL IN DNSKEY ...`"),
        ("example.com. 3600 IN DNSKEY 257 3 13 not-base64!", ":1: "),
        ("example.com. 3600 IN DNSKEY 257 3 8 AwEAAQ==", ":1: "),  # RSA: not this key's algorithm
        ("example.com. 3600 IN DNSKEY 256 3 13 " + "A" * 88, "does not match the private key"),
    ],
)
def test_a_bad_key_file_is_a_clear_error(tmp_path: Path, public: str, error: str) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    key = keys.generate(zones, ZONE)
    key.path.with_suffix(".key").write_text(public)
    with pytest.raises(keys.KeyFileError) as raised:
        keys.load(zones)
    assert str(raised.value).startswith(str(key.path.with_suffix(".key"))) and error in str(raised.value)
    key.path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(keys.KeyFileError, match="cannot read the key"):
        keys.load(zones)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    zones = tmp_path_factory.mktemp("signed") / "zones"
    shutil.copytree(EXAMPLE_ZONES, zones)
    keys.generate(zones, ZONE)
    return build(Sources(zones))


def _validated(reply: bytes, dnskey: dns.rrset.RRset) -> dns.message.Message:
    """The reply, every RRSIG in it verified with the zone's key (dnspython's validator)."""
    message = dns.message.from_wire(reply)
    for section in (message.answer, message.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                covered = next(r for r in section if r.name == rrset.name and r.rdtype == rrset.covers)
                for rrsig in rrset:  # each key's signature, not just one of them
                    dns.dnssec.validate_rrsig(covered, rrsig, {ZONE: dnskey})
    return message


def test_delegations_and_two_keys(tmp_path: Path) -> None:
    """DS at a delegation signed, its NS and glue not; with two keys (ECDSA and Ed25519, a roll
    or an algorithm change under way) every RRset carries a signature by each."""
    zones = _signed_copy(tmp_path / "zones")
    keys.generate(zones, ZONE, "ed25519")
    zone_file = zones / "example.com.zone"
    zone_file.write_text(zone_file.read_text() + "sub IN DS 12345 13 2 " + "ab" * 32 + "\n")
    answerer = Answerer(build(Sources(zones)), HealthView())
    dnskey = _dnskey_rrset(answerer)
    assert len(dnskey) == 2

    def ask(name: str, rdtype: str) -> dns.message.Message:
        wire = dns.message.make_query(name, rdtype, want_dnssec=True).to_wire()
        return _validated(answerer.handle(wire, None) or b"", dnskey)

    referral = ask("host.sub.example.com.", "A")
    assert not referral.flags & dns.flags.AA and not referral.answer
    signed = {(str(r.name), r.rdtype, r.covers) for r in referral.authority}
    assert signed == {
        ("sub.example.com.", dns.rdatatype.NS, dns.rdatatype.NONE),
        ("sub.example.com.", dns.rdatatype.DS, dns.rdatatype.NONE),
        ("sub.example.com.", dns.rdatatype.RRSIG, dns.rdatatype.DS),
    }
    assert [r.rdtype for r in referral.additional if r.rdtype != dns.rdatatype.OPT] == [dns.rdatatype.A]  # glue
    ds = ask("sub.example.com.", "DS")
    assert ds.flags & dns.flags.AA and [r.rdtype for r in ds.answer] == [dns.rdatatype.DS, dns.rdatatype.RRSIG]
    for name, rdtype in (("static.example.com.", "A"), ("missing.example.com.", "A"), ("www.example.com.", "AAAA")):
        message = ask(name, rdtype)
        assert all(len(r) == 2 for r in (*message.answer, *message.authority) if r.rdtype == dns.rdatatype.RRSIG)


def test_failover_moves_to_a_signature_made_ahead(snapshot: Snapshot) -> None:
    answerer = Answerer(snapshot, HealthView())
    wire = dns.message.make_query("www.example.com.", "A", want_dnssec=True, options=[EUROPE]).to_wire()
    dnskey_rrset = _dnskey_rrset(answerer)
    assert snapshot.signing is not None
    signer = snapshot.signing.signers[b"\x07example\x03com\x00"]
    before = len(signer.online)
    for down in (set(), {"eu"}, {"eu", "us"}, {"eu", "us", "ap"}):
        answerer.set_health(_health(down))
        message = _validated(answerer.handle(wire, None) or b"", dnskey_rrset)
        assert [r.rdtype for r in message.answer] == [dns.rdatatype.A, dns.rdatatype.RRSIG]
    assert len(signer.online) == before, "a failover signed something: it should have been made ahead"


def _dnskey_rrset(answerer: Answerer) -> dns.rrset.RRset:
    wire = dns.message.make_query("example.com.", "DNSKEY", want_dnssec=True).to_wire()
    message = dns.message.from_wire(answerer.handle(wire, None) or b"")
    return next(r for r in message.answer if r.rdtype == dns.rdatatype.DNSKEY)


def _health(down: set[str]) -> HealthView:
    return HealthView(len(down) + 1, {name: Status(False, "timeout", time.time()) for name in down})


def test_more_address_sets_than_max_presigned_are_signed_on_first_use(tmp_path: Path) -> None:
    zones = _signed_copy(tmp_path / "zones")
    config = zones / "gslb.toml"
    config.write_text(config.read_text() + "\n[dnssec]\nmax_presigned = 4\n")
    built = build(Sources(zones))
    assert built.signing is not None
    assert set(built.signing.first_use) == {
        "www.example.com.",
        "app.example.com.",
        "api.example.com.",
        "img.example.com.",
    }
    checked = _gslb("check", "--zones", str(zones))
    assert "www.example.com. has more address sets than max_presigned (4)" in checked.stdout
    answerer = Answerer(built, HealthView())
    dnskey = _dnskey_rrset(answerer)
    for name in ("www.example.com.", "img.example.com."):
        wire = dns.message.make_query(name, "AAAA", want_dnssec=True, options=[AMERICA]).to_wire()
        message = _validated(answerer.handle(wire, None) or b"", dnskey)
        assert dns.rdatatype.RRSIG in {r.rdtype for r in message.answer}


def test_resign_makes_new_signatures_from_the_same_keys(snapshot: Snapshot) -> None:
    assert snapshot.signing is not None
    later = resign(snapshot, now=time.time() + 8 * 86400)
    assert later.signing is not None and later.zones is snapshot.zones
    assert later.signing.inception > snapshot.signing.inception + 7 * 86400
    answerer = Answerer(snapshot, HealthView())
    wire = dns.message.make_query("static.example.com.", "A", want_dnssec=True).to_wire()
    old = dns.message.from_wire(answerer.handle(wire, None) or b"").answer[1][0]
    answerer.set_snapshot(later)
    new = dns.message.from_wire(answerer.handle(wire, None) or b"").answer[1][0]
    assert new.expiration > old.expiration and new.key_tag == old.key_tag


def test_a_server_signs_again_before_expiry_without_a_reload(start_server: type[Server], tmp_path: Path) -> None:
    """Signatures that fall due in seconds (validity 3 h, refresh 600 s, inception 10195 s back)."""
    zones = _signed_copy(tmp_path / "zones")
    config = zones / "gslb.toml"
    config.write_text(config.read_text() + "\n[dnssec]\nvalidity = 10800\nrefresh = 600\ninception_offset = 10195\n")
    server = start_server("--zones", str(zones), "--no-probes", "--state-file", str(tmp_path / "state.json"))
    first = _query(server.port, "static.example.com.").answer[1][0]
    mark = server.mark()
    server.wait_log(r"DNSSEC: serving the new signatures", timeout=30, start=mark)
    again = _query(server.port, "static.example.com.").answer[1][0]
    assert again.inception > first.inception
    assert not any("reloaded" in line for line in server.lines[mark:])


def test_a_zone_is_signed_exactly_while_it_has_keys(start_server: type[Server], tmp_path: Path) -> None:
    """A key made beside a running server signs the zone at the reload it sees; its removal unsigns it."""
    zones = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, zones)
    server = start_server("--zones", str(zones), "--no-probes", "--state-file", str(tmp_path / "state.json"))
    assert len(_query(server.port, "static.example.com.").answer) == 1
    mark = server.mark()
    assert _gslb("keys", "generate", "example.com", "--zones", str(zones)).returncode == 0
    for _ in range(3):  # keys/ itself may be seen first, a reload before the files are in it
        server.wait_log(r"reloaded \(files changed\)", timeout=30, start=mark)
        mark = server.mark()
        answer = _query(server.port, "static.example.com.").answer
        if len(answer) == 2:
            break
    assert [r.rdtype for r in answer] == [dns.rdatatype.A, dns.rdatatype.RRSIG]
    mark = server.mark()
    for path in (zones / "keys").iterdir():
        path.unlink()
    server.wait_log(r"reloaded \(files changed\)", timeout=30, start=mark)
    assert len(_query(server.port, "static.example.com.").answer) == 1


def _with_do(wire: bytes) -> bytes:
    message = dns.message.from_wire(wire)
    message.use_edns(0, dns.flags.DO, 1232, options=message.options)
    return message.to_wire()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from([_with_do(seed) for seed in SEEDS]),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
)
def test_mutated_signed_queries(snapshot: Snapshot, seed: bytes, flips: list[tuple[int, int]]) -> None:
    """Any bytes in, signed: a well-formed reply with the same ID, or nothing; never an exception.

    (dnspython decodes them: dnslib, test_fuzz's second decoder, takes labels for UTF-8, and the
    white lies' names hold 0xFF octets, as any label may, RFC 2181 §11.)"""
    mutated = bytearray(seed)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    wire = bytes(mutated)
    answerer = Answerer(snapshot, HealthView())
    for tcp in (False, True):
        reply = answerer.handle(wire, "127.0.0.1", tcp)
        if reply is not None:
            assert reply[:2] == wire[:2] and reply[2] & 0x80
            assert tcp or len(reply) <= 1232
            dns.message.from_wire(reply)


# -- white lies: ranges that hold only the name denied ----------------------------------------


def test_white_lies_cover_the_name_and_nothing_that_exists(snapshot: Snapshot) -> None:
    zone = snapshot.zones.zones[ZONE]
    existing = [dns.name.Name(denial.labels(wire)) for wire in zone.existing]
    rng = random.Random(4470)
    names = ["nope.example.com.", "a.b.nope.example.com.", "x.wild.example.com.", "zz.deep.example.com."]
    names += [r"\000.example.com.", "a.example.com.", "[.example.com.", "\\255.example.com.", "*.example.com."]
    for _ in range(300):
        label = bytes(rng.choice(b"abz09-_[\x00\xff*") for _ in range(rng.randrange(1, 64)))
        names.append(dns.name.Name((label, *ZONE.labels)).to_text())
    for text in names:
        name = dns.name.from_text(text)
        if wire_of(name) in zone.existing:
            continue
        owner, nsec = denial.cover(zone, name, {})
        after = nsec[0].next
        assert owner < name < after, (owner, name, after)
        assert not [e for e in existing if owner < e < after], (owner, after)


# -- last: a failover the validators see ------------------------------------------------------


@pytest.mark.timeout(90)
def test_after_a_failover_the_new_answer_validates(site: Site, unbound: Unbound) -> None:
    site.targets["eu"].behave(Behaviour.STATUS_503)
    try:
        deadline = time.monotonic() + 30
        while True:  # each try is one DNS query; eu is down after `fall` failed probes
            reply = _query(site.server.port, "www.example.com.", options=[EUROPE])
            if reply.answer and reply.answer[0][0].address == site.vips["us"]:
                break
            assert time.monotonic() < deadline, "eu never failed over"
            time.sleep(0.1)
        out = _delv(site, "www.example.com.", "A", EUROPE_SOURCE)
        assert re.search(r"; fully validated\n.*IN\s+A\s+" + re.escape(site.vips["us"]), out), out
        # api.example.com: failover eu -> us, not asked of this resolver before (its cache holds nothing)
        reply = unbound.ask("api.example.com.", "A", EUROPE)
        assert reply.flags & dns.flags.AD, reply.to_text()
        assert [r.to_text() for r in reply.answer[0]] == [site.vips["us"]], reply.to_text()
    finally:
        site.targets["eu"].behave(Behaviour.OK)
