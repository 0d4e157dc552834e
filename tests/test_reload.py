"""Reload on SIGHUP and on file change: a whole new snapshot, or the old one with the errors logged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.conftest import EXAMPLE_ZONES, ROOT, Server, need, same_rrsets

ZONE = """$ORIGIN reload.test.
$TTL 60
@   SOA ns hostmaster ( 1 7200 1800 1209600 30 )
    NS  ns
ns  A   127.0.0.1
a   A   127.0.0.{last}
"""


def _write(path: Path, text: str) -> None:
    # Write beside and rename, as editors and deploy tools do, so a reload never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def zone_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "zones"
    directory.mkdir()
    _write(directory / "reload.test.zone", ZONE.format(last=1))
    return directory


def test_sighup_reloads_and_a_broken_file_keeps_the_old_data(start_server: type[Server], zone_dir: Path) -> None:
    server = start_server(
        "--zones", str(zone_dir), "--no-probes", "--no-watch", "--state-file", str(zone_dir.parent / "s.json")
    )
    assert same_rrsets(server.query("a.reload.test.").answer, "a.reload.test. 60 IN A 127.0.0.1")

    _write(zone_dir / "reload.test.zone", ZONE.format(last=2))
    mark = server.mark()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"reloaded \(SIGHUP\)", start=mark)
    assert same_rrsets(server.query("a.reload.test.").answer, "a.reload.test. 60 IN A 127.0.0.2")

    broken = ZONE.format(last=3).replace("a   A   127.0.0.3", "a   A   127.0.0.300")
    _write(zone_dir / "reload.test.zone", broken)
    mark = server.mark()
    server.proc.send_signal(signal.SIGHUP)
    line = server.wait_log(r"reload \(SIGHUP\) failed", start=mark)
    assert f"{zone_dir / 'reload.test.zone'}:6:" in line
    server.wait_log("still serving", start=mark)
    # The old answers keep coming, over UDP and TCP.
    for tcp in (False, True):
        reply = server.query("a.reload.test.", tcp=tcp)
        assert same_rrsets(reply.answer, "a.reload.test. 60 IN A 127.0.0.2")


def test_a_changed_file_is_picked_up_without_a_signal(start_server: type[Server], zone_dir: Path) -> None:
    server = start_server("--zones", str(zone_dir), "--no-probes", "--state-file", str(zone_dir.parent / "s.json"))
    mark = server.mark()
    _write(zone_dir / "reload.test.zone", ZONE.format(last=9))
    server.wait_log(r"reloaded \(files changed\)", start=mark)
    assert same_rrsets(server.query("a.reload.test.").answer, "a.reload.test. 60 IN A 127.0.0.9")
    # A new zone file appears: served after the next reload.
    mark = server.mark()
    _write(zone_dir / "other.test.zone", ZONE.replace("reload.test.", "other.test.").format(last=5))
    server.wait_log(r"reloaded \(files changed\)", start=mark)
    assert server.query("a.other.test.").rcode() == dns.rcode.NOERROR


def _pair(port: int, first: str, second: str) -> tuple[str, str]:
    """Both names asked in one TCP segment: one process answers both, with no reload between."""
    wires = [dns.message.make_query(name, "A").to_wire() for name in (first, second)]
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
        stream = sock.makefile("rb")
        replies = [dns.message.from_wire(stream.read(int.from_bytes(stream.read(2), "big"))) for _ in wires]
    return replies[0].answer[0][0].address, replies[1].answer[0][0].address


@pytest.mark.parametrize("workers", ["2", "0"])
def test_queries_during_reloads_never_see_half_a_snapshot(
    start_server: type[Server], zone_dir: Path, workers: str
) -> None:
    """Two zones change together; every pair of answers must come from one version or the other.

    While each reload runs, both zones are asked in turn (the order alternating), as a pair in
    one TCP segment and one after the other over UDP; a pair from two versions is half a snapshot.
    """
    other = ZONE.replace("reload.test.", "other.test.")
    _write(zone_dir / "other.test.zone", other.format(last=1))
    server = start_server(
        "--zones",
        str(zone_dir),
        "--no-probes",
        "--no-watch",
        "--workers",
        workers,
        "--state-file",
        str(zone_dir.parent / "s.json"),
    )
    names = ("a.reload.test.", "a.other.test.")
    for version in range(2, 6):
        _write(zone_dir / "reload.test.zone", ZONE.format(last=version))
        _write(zone_dir / "other.test.zone", other.format(last=version))
        mark = server.mark()
        server.proc.send_signal(signal.SIGHUP)
        seen: set[str] = set()
        pairs = 0
        done = False
        while not done:
            first, second = names if pairs % 2 == 0 else names[::-1]
            answers = _pair(server.port, first, second)
            assert answers[0] == answers[1], f"half a snapshot: {first} {answers[0]}, {second} {answers[1]}"
            seen.update(answers)
            seen.update(server.query(name).answer[0][0].address for name in (first, second))
            pairs += 1
            try:
                server.wait_log(r"reloaded \(SIGHUP\)", timeout=0.001, start=mark)
                done = True
            except AssertionError:
                pass
        assert seen <= {f"127.0.0.{version - 1}", f"127.0.0.{version}"}
        for name in names:
            for tcp in (False, True):
                assert server.query(name, tcp=tcp).answer[0][0].address == f"127.0.0.{version}"
        assert _pair(server.port, *names) == (f"127.0.0.{version}",) * 2


def _gslb(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gslb", *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def test_check_passes_on_the_example() -> None:
    result = _gslb("check", "--zones", str(EXAMPLE_ZONES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 zone")
    _summary, table, *services = result.stdout.strip().splitlines()
    assert table.startswith("geo table: ") and " IPv4 and " in table
    # One line per service: its policy, how many rankings, over how many ranges.
    assert sorted(line.split()[0] for line in services) == [
        "api.example.com.",
        "app.example.com.",
        "img.example.com.",
        "www.example.com.",
    ]
    assert any("(nearest): " in line and " rankings over " in line for line in services)


def test_example_zone_passes_named_checkzone() -> None:
    need("named-checkzone")
    result = subprocess.run(
        ["named-checkzone", "example.com", str(EXAMPLE_ZONES / "example.com.zone")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "bad.test.zone").write_text(
        "$TTL 60\n"
        "@ SOA ns hostmaster 1 2 3 4 5\n"
        "@ NS ns\n"
        "ns A 127.0.0.1\n"
        "x A 999.1.2.3\n"  # 5: bad address
        "y AAAA not-an-address\n"  # 6: bad address
        "c CNAME ns\n"
        'c TXT "beside a CNAME"\n'  # 7: CNAME and other data
        "out.example.org. A 127.0.0.1\n"  # 9: outside the zone
    )
    (zones / "nosoa.test.zone").write_text("$TTL 60\n@ NS ns\nns A 127.0.0.1\n")
    result = _gslb("check", "--zones", str(zones))
    assert result.returncode == 1
    errors = result.stderr
    bad = zones / "bad.test.zone"
    assert f"{bad}:5:" in errors
    assert f"{bad}:6:" in errors
    assert "5 problems found" in errors  # two bad addresses, CNAME and other data, out of zone, no SOA
    assert f"{zones / 'nosoa.test.zone'}:1: no SOA" in errors
    assert f"{bad}:7: c.bad.test. has a CNAME and other data (TXT)" in errors
    assert f"{bad}:9: outside the zone bad.test.: out.example.org. A 127.0.0.1" in errors


def test_include_and_relative_names(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "hosts.inc").write_text("h1 A 127.0.0.21\nh2.inc.test. A 127.0.0.22\n")
    (zones / "inc.test.zone").write_text(
        "$ORIGIN inc.test.\n$TTL 60\n@ IN SOA ns hostmaster (\n 1 ; serial\n 2 3 4 5 )\n"
        "  IN NS ns\nns A 127.0.0.1\n$INCLUDE hosts.inc\n$GENERATE 1-3 gen$ A 127.0.1.$\n"
    )
    result = _gslb("check", "--zones", str(zones), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(8 records)" in result.stdout


def test_check_reports_config_and_zone_problems_together(tmp_path: Path) -> None:
    zones = tmp_path / "zones"
    zones.mkdir()
    zone = (EXAMPLE_ZONES / "example.com.zone").read_text() + "www IN A 127.0.0.99\n"
    (zones / "example.com.zone").write_text(zone)
    config = (EXAMPLE_ZONES / "gslb.toml").read_text()
    config = config.replace('policy = "nearest"', 'policy = "closest"', 1)
    config += '\n[services."www.example.org."]\ndatacenters = ["us"]\n'
    (zones / "gslb.toml").write_text(config)
    result = _gslb("check", "--zones", str(zones))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    toml = zones / "gslb.toml"
    assert any(line.startswith(f"{toml}:") and "policy: 'closest' is not one of" in line for line in lines)
    # A config that does not load cannot be placed in the zones; fixed, both clashes show.
    (zones / "gslb.toml").write_text(config.replace('policy = "closest"', 'policy = "nearest"'))
    result = _gslb("check", "--zones", str(zones))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    www_line = next(i for i, text in enumerate(config.splitlines(), 1) if 'services."www.example.org."' in text)
    assert f'{toml}:{www_line}: services."www.example.org.": not inside any served zone' in lines
    assert any("also has static A records at www.example.com." in line for line in lines)
