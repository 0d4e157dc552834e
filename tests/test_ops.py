"""Operating gslb: /metrics, the status page in Chromium, explain and admin actions, logs."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gslb.config.load import load
from gslb.control import add_counts, counts
from gslb.dns.state import LATENCY_BOUNDS, Counters
from gslb.geo.places import Location
from gslb.health.view import HealthView, Status
from gslb.steering.policy import choose
from tests.conftest import EXAMPLE_ZONES, ROOT, Server, need

TOKEN = "test-token-1f2e3d"
GERMANY = "85.214.0.0/24"  # DE in the embedded database: nearest is eu (Frankfurt)
CHROMIUM = "/usr/bin/chromium"


# -- helpers -------------------------------------------------------------------------------


def http_port(server: Server) -> int:
    match = re.search(r"http on 127\.0\.0\.1:(\d+)", server.wait_log(r"http on 127\.0\.0\.1:\d+"))
    assert match
    return int(match.group(1))


def client(server: Server, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{http_port(server)}", headers=headers, trust_env=False, timeout=10)


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    with client(server) as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def replies_counted(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    return sum(v for (name, _), v in metrics.items() if name == "gslb_dns_queries_total")


def scrape_when_counted(
    server: Server, replies: int, timeout: float = 5
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics once every worker has reported `replies` replies in all (workers report each second).

    Fails at once on more than were sent: counters only grow.
    """
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(server)
        counted = replies_counted(metrics)
        assert counted <= replies, f"{counted} replies counted, {replies} sent"
        if counted == replies:
            return metrics
        assert time.monotonic() < deadline, f"only {counted} of {replies} replies counted in {timeout} s"
        time.sleep(0.05)


def ecs_query(name: str, subnet: str, rdtype: str = "A") -> dns.message.Message:
    address, prefix = subnet.split("/")
    return dns.message.make_query(name, rdtype, use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))])


def answer(server: Server, subnet: str = GERMANY, rdtype: str = "A") -> list[str]:
    reply = server.send(ecs_query("www.example.com.", subnet, rdtype))
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def answers_become(server: Server, expected: list[str], tries: int = 200) -> None:
    """Query until the answer is `expected` (workers hear of a change within milliseconds)."""
    for _ in range(tries):
        if answer(server) == expected:
            break
    for _ in range(4):  # and it stays so, whichever worker answers
        assert answer(server) == expected


def gslb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "GSLB_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "gslb", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**environment, **(env or {})},
    )


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def ops_server(start_server: type[Server], tmp_path: Path, token_file: Path) -> Server:
    # The default mode: a supervisor serving HTTP, workers answering DNS.
    return start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
    )


# -- metrics -------------------------------------------------------------------------------


@pytest.fixture
def big_zones(tmp_path: Path) -> Path:
    """The example zones plus a TXT set too big for 512 bytes of UDP."""
    directory = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, directory)
    strings = " ".join(f'"{"x" * 200}"' for _ in range(4))
    with (directory / "example.com.zone").open("a") as zone:
        zone.write(f"big IN TXT {strings}\n")
    return directory


@pytest.mark.parametrize("workers", [2, 0])
def test_metrics_move_exactly_with_queries(
    start_server: type[Server], tmp_path: Path, big_zones: Path, workers: int
) -> None:
    need("dig")
    server = start_server(
        "--zones",
        str(big_zones),
        "--no-probes",
        "--workers",
        str(workers),
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
    )
    before = scrape(server)
    assert replies_counted(before) == 0
    for _ in range(7):  # UDP A from Germany, the same network: cached after the first
        assert server.send(ecs_query("www.example.com.", GERMANY)).rcode() == dns.rcode.NOERROR
    for _ in range(3):  # TCP AAAA from Japan
        server.send(ecs_query("www.example.com.", "210.130.0.0/24", "AAAA"), tcp=True)
    for _ in range(4):  # dig: static data over UDP
        assert "127.0.0.10" in server.dig("static.example.com", "A", "+short")
    for _ in range(2):  # outside every zone
        assert server.query("example.org.").rcode() == dns.rcode.REFUSED
    formerr = dns.message.make_query("www.example.com.", "A").to_wire()
    formerr = formerr[:5] + b"\x02" + formerr[6:]  # QDCOUNT 2 but one question: malformed
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.sendto(formerr, ("127.0.0.1", server.port))
    reply = dns.message.from_wire(sock.recv(512))
    sock.close()
    assert reply.rcode() == dns.rcode.FORMERR
    big = server.query("big.example.com.", "TXT", use_edns=False)
    assert big.flags & dns.flags.TC
    total = 7 + 3 + 4 + 2 + 1 + 1
    after = scrape_when_counted(server, total)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gslb_dns_queries_total", transport="udp", qtype="A", rcode="NOERROR") == 7 + 4
    assert delta("gslb_dns_queries_total", transport="tcp", qtype="AAAA", rcode="NOERROR") == 3
    assert delta("gslb_dns_queries_total", transport="udp", qtype="A", rcode="REFUSED") == 2
    assert delta("gslb_dns_queries_total", transport="udp", qtype="TXT", rcode="NOERROR") == 1
    assert delta("gslb_dns_answers_total", service="www.example.com.", datacenter="eu") == 7
    assert delta("gslb_dns_answers_total", service="www.example.com.", datacenter="ap") == 3
    assert delta("gslb_dns_refused_total") == 2
    assert delta("gslb_dns_formerr_total") == 1
    assert delta("gslb_dns_truncated_total") == 1
    assert delta("gslb_dns_path_total", path="fast") + delta("gslb_dns_path_total", path="general") == total
    # Repeats hit the cache: each process's own, so each misses the first of a kind once.
    processes = max(workers, 1)
    assert delta("gslb_dns_path_total", path="fast") >= 6 + 2 + 1 - 3 * (processes - 1)
    assert 0 < value(after, "gslb_dns_cache_hit_ratio") < 1
    # One query in 64 is timed (by each process of its own); the histogram is whole
    # (+Inf bucket == count) and its buckets were merged, not appended, across workers.
    assert value(after, "gslb_dns_query_duration_seconds_bucket", le="+Inf") == value(
        after, "gslb_dns_query_duration_seconds_count"
    )
    assert not any(
        name == "gslb_dns_query_duration_seconds_bucket"
        and dict(labels)["le"] == "+Inf"
        and v != value(after, "gslb_dns_query_duration_seconds_count")
        for (name, labels), v in after.items()
    )
    for _ in range(64 * 4):
        server.send(ecs_query("www.example.com.", GERMANY))
    timed = scrape_when_counted(server, total + 64 * 4)
    timed_count = value(timed, "gslb_dns_query_duration_seconds_count")
    # Each of n processes times every 64th of its own queries: floor(T/64) - (n-1) .. floor(T/64).
    assert (total + 256) // 64 - (processes - 1) <= timed_count <= (total + 256) // 64
    assert value(timed, "gslb_dns_query_duration_seconds_bucket", le="+Inf") == timed_count
    assert value(timed, "gslb_dns_query_duration_seconds_sum") > 0
    assert value(timed, "gslb_datacenter_up", datacenter="eu") == 1
    assert value(timed, "gslb_service_ttl_seconds", service="www.example.com.") == 30
    assert value(timed, "gslb_reloads_total", result="ok") == 0
    assert value(timed, "gslb_workers") == processes


def test_counters_survive_a_reload_in_worker_mode(start_server: type[Server], tmp_path: Path) -> None:
    """A reload retires a generation of workers: its counts stay in the totals, once."""
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--no-watch",
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
    )
    for _ in range(70):  # more than 64 each: the latency histograms of both generations merge
        server.send(ecs_query("www.example.com.", GERMANY))
    scrape_when_counted(server, 70)
    mark = server.mark()
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log(r"reloaded \(SIGHUP\)", start=mark)
    for _ in range(130):
        server.send(ecs_query("www.example.com.", GERMANY))
    metrics = scrape_when_counted(server, 200)
    assert value(metrics, "gslb_dns_queries_total", transport="udp", qtype="A", rcode="NOERROR") == 200
    assert value(metrics, "gslb_dns_answers_total", service="www.example.com.", datacenter="eu") == 200
    timed = value(metrics, "gslb_dns_query_duration_seconds_count")
    assert value(metrics, "gslb_dns_query_duration_seconds_bucket", le="+Inf") == timed >= 1
    assert value(metrics, "gslb_reloads_total", result="ok") == 1


def _udp_burst(port: int, wires: list[bytes]) -> int:
    """Send a burst of queries before reading any reply, so every worker takes some; replies read."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        for wire in wires:
            sock.sendto(wire, ("127.0.0.1", port))
        for _ in wires:
            sock.recv(4096)
    return len(wires)


def _tcp_queries(port: int, wires: list[bytes]) -> int:
    """Several queries on one connection, sent at once (RFC 7766 pipelining); every reply read."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
        stream = sock.makefile("rb")
        for _ in wires:
            length = int.from_bytes(stream.read(2), "big")
            assert len(stream.read(length)) == length
    return len(wires)


def test_counters_of_every_worker_add_up_exactly(start_server: type[Server], tmp_path: Path) -> None:
    """Every reply each worker sends is counted once: in /metrics and in the status page's total."""
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--query-log",
        "1",
    )
    workers = {int(m.group(1)) for line in server.lines if (m := re.search(r"worker \d+ started \(pid (\d+)\)", line))}
    assert len(workers) == 2
    names = ["www.example.com.", "static.example.com.", "nope.example.com.", "example.org."]
    udp = tcp = 0
    for burst in range(20):
        wires = [ecs_query(names[(burst + i) % 4], f"85.{burst}.{i}.0/24").to_wire() for i in range(10)]
        udp += _udp_burst(server.port, wires)
    for connection in range(8):
        wires = [dns.message.make_query(names[(connection + i) % 4], "AAAA").to_wire() for i in range(5)]
        tcp += _tcp_queries(server.port, wires)
    metrics = scrape_when_counted(server, udp + tcp)
    by_transport = {
        t: sum(
            v
            for (name, labels), v in metrics.items()
            if name == "gslb_dns_queries_total" and dict(labels)["transport"] == t
        )
        for t in ("udp", "tcp")
    }
    assert by_transport == {"udp": udp, "tcp": tcp}
    assert (
        value(metrics, "gslb_dns_path_total", path="fast") + value(metrics, "gslb_dns_path_total", path="general")
        == udp + tcp
    )
    # The query log says which worker answered what: each did its share, and every share counted.
    deadline = time.monotonic() + 5
    while (
        logged := Counter(json.loads(line)["pid"] for line in list(server.lines) if '"gslb.query"' in line)
    ).total() < udp + tcp:
        assert time.monotonic() < deadline, f"{logged.total()} of {udp + tcp} queries logged"
        time.sleep(0.02)  # the log reader thread catches up with the workers' stderr
    assert logged.total() == udp + tcp
    assert set(logged) == workers, f"not every worker answered: {logged}"
    with client(server) as http:
        assert http.get("/api/status").json()["queries"]["total"] == udp + tcp


class _Target(http.server.BaseHTTPRequestHandler):
    """A health endpoint whose status the test sets; counts the probes it gets."""

    status = 200
    probes = 0
    cond = threading.Condition()

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.cond:
            type(self).probes += 1
            self.cond.notify_all()

    def log_message(self, *args: Any) -> None:
        pass


def _wait_probes(count: int) -> None:
    with _Target.cond:
        assert _Target.cond.wait_for(lambda: _Target.probes >= count, timeout=10)


@pytest.fixture
def probe_target() -> Iterator[int]:
    _Target.status, _Target.probes = 200, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probe_metrics_and_state_gauges(start_server: type[Server], tmp_path: Path, probe_target: int) -> None:
    zones = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, zones)
    config = (zones / "gslb.toml").read_text()
    config = (
        config.replace("port = 8080", f"port = {probe_target}")
        .replace("interval = 1.0", "interval = 0.1")
        .replace("timeout = 0.8", "timeout = 0.08")
    )
    # eu is probed at 127.0.0.1 (the target); us and ap keep probing nothing there.
    config = config.replace(
        'vips = ["127.0.2.1", "2001:db8:2::1"]', 'vips = ["127.0.2.1", "2001:db8:2::1"]\nprobe = "127.0.0.1"'
    )
    (zones / "gslb.toml").write_text(config)
    server = start_server(
        "--zones",
        str(zones),
        "--workers",
        "2",
        "--no-watch",
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
    )
    # Probes of one target run one after another: once the third has arrived, two are recorded.
    _wait_probes(3)
    metrics = scrape(server)
    assert value(metrics, "gslb_probes_total", datacenter="eu", result="ok") >= 2
    assert value(metrics, "gslb_probe_duration_seconds_count", datacenter="eu") >= 2
    assert value(metrics, "gslb_probe_duration_seconds_bucket", datacenter="eu", le="+Inf") >= 2
    assert value(metrics, "gslb_datacenter_up", datacenter="eu") == 1
    mark = server.mark()
    _Target.status = 503
    server.wait_log(r"eu \(127\.0\.0\.1:\d+ http\) DOWN: status 503", start=mark)
    metrics = scrape(server)
    assert value(metrics, "gslb_datacenter_up", datacenter="eu") == 0
    assert value(metrics, "gslb_probes_total", datacenter="eu", result="status 503") >= 2
    assert 0 <= value(metrics, "gslb_datacenter_state_age_seconds", datacenter="eu") < 5
    assert value(metrics, "gslb_service_ttl_seconds", service="www.example.com.") == 10
    with client(server) as http:
        eu = next(d for d in http.get("/api/status").json()["datacenters"] if d["name"] == "eu")
    assert (eu["up"], eu["reason"], eu["last_result"]) == (False, "status 503", "status 503")
    assert eu["last_latency_ms"] is not None and eu["probes"] >= 4


# -- admin actions --------------------------------------------------------------------------


def test_admin_actions_need_the_token(start_server: type[Server], tmp_path: Path, ops_server: Server) -> None:
    # No token configured: refused outright, with how to configure one.
    tokenless = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(tmp_path / "other.json"),
        "--http",
        "127.0.0.1:0",
    )
    with client(tokenless, TOKEN) as http:
        for path in ("/api/drain", "/api/undrain", "/api/reload"):
            response = http.post(path, json={"target": "eu"})
            assert response.status_code == 403
            assert "--token-file" in response.json()["error"]
    assert answer(tokenless) == ["127.0.2.1"]

    with client(ops_server) as http:
        assert http.get("/api/status").status_code == 200  # reading needs no token
        assert http.post("/api/drain", json={"target": "eu"}).status_code == 401
        wrong = http.post("/api/drain", json={"target": "eu"}, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        basic = http.post("/api/reload", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        assert http.get("/api/drain").status_code == 405
    assert answer(ops_server) == ["127.0.2.1"]  # nothing was drained
    assert all(TOKEN not in line for line in ops_server.lines)

    with client(ops_server, TOKEN) as http:
        assert http.post("/api/drain", json={"target": "mars"}).status_code == 404
        assert http.post("/api/drain", content=b"not json").status_code == 400
        response = http.post("/api/drain", json={"target": "eu"})
        assert response.status_code == 200
        assert response.json() == {"drained": "eu", "kind": "datacenter", "already": False}
        assert http.post("/api/drain", json={"target": "eu"}).json()["already"] is True
    answers_become(ops_server, ["127.0.1.1"])
    assert all(TOKEN not in line for line in ops_server.lines)


def test_drain_with_the_cli_survives_a_restart(start_server: type[Server], tmp_path: Path, token_file: Path) -> None:
    state = tmp_path / "state.json"
    args = (
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(state),
        "--http",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
    )
    server = start_server(*args)
    address = f"127.0.0.1:{http_port(server)}"
    assert answer(server) == ["127.0.2.1"]

    refused = gslb("drain", "eu", "--http", address)
    assert refused.returncode == 1 and "401" in refused.stderr
    done = gslb("drain", "eu", "--http", address, env={"GSLB_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "eu: drained"
    server.wait_log(r"eu \(.*\) DRAINED")
    answers_become(server, ["127.0.1.1"])
    with client(server) as http:
        why = http.get("/api/explain", params={"name": "www.example.com", "subnet": GERMANY})
    assert why.json()["answer"] == ["127.0.1.1"]
    assert "eu down: drained" in why.json()["why"]
    status = gslb("status", "--http", address)
    assert status.returncode == 0
    eu_line = next(line for line in status.stdout.splitlines() if line.startswith("eu "))
    assert "drained" in eu_line
    assert server.stop() == 0

    again = start_server(*args)
    assert answer(again) == ["127.0.1.1"]
    with client(again) as http:
        eu = next(d for d in http.get("/api/status").json()["datacenters"] if d["name"] == "eu")
    assert eu["drained"] and not eu["up"]
    assert value(scrape(again), "gslb_datacenter_drained", datacenter="eu") == 1
    address = f"127.0.0.1:{http_port(again)}"
    undone = gslb("undrain", "eu", "--http", address, "--token-file", str(token_file))
    assert undone.returncode == 0, undone.stderr
    again.wait_log(r"eu \(.*\) UNDRAINED")
    answers_become(again, ["127.0.2.1"])
    assert json.loads(state.read_text())["drained"] == {}


def test_draining_one_vip(ops_server: Server) -> None:
    with client(ops_server, TOKEN) as http:
        response = http.post("/api/drain", json={"target": "127.0.2.1"})
        assert response.json()["kind"] == "vip"
        # eu has no other IPv4 VIP: down for A; its IPv6 VIP still answers AAAA.
        answers_become(ops_server, ["127.0.1.1"])
        assert answer(ops_server, "2003::/32", "AAAA") == ["2001:db8:2::1"]
        why = http.get("/api/explain", params={"name": "www.example.com", "subnet": GERMANY})
        assert "eu down: every IPv4 VIP drained" in why.json()["why"]
        eu = next(d for d in http.get("/api/status").json()["datacenters"] if d["name"] == "eu")
        assert eu["up"] and not eu["drained"]
        assert eu["vips"] == [{"address": "127.0.2.1", "drained": True}, {"address": "2001:db8:2::1", "drained": False}]
        assert value(scrape(ops_server), "gslb_vip_drained", datacenter="eu", vip="127.0.2.1") == 1
        assert http.post("/api/undrain", json={"target": "127.0.2.1"}).json()["was_drained"]
        answers_become(ops_server, ["127.0.2.1"])
        assert not http.post("/api/undrain", json={"target": "eu"}).json()["was_drained"]


def test_reload_over_the_api(start_server: type[Server], tmp_path: Path, token_file: Path) -> None:
    zones = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, zones)
    server = start_server(
        "--zones",
        str(zones),
        "--no-probes",
        "--workers",
        "2",
        "--no-watch",
        "--state-file",
        str(tmp_path / "state.json"),
        "--http",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
    )
    address = f"127.0.0.1:{http_port(server)}"
    done = gslb("reload", "--http", address, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert "reloaded: 1 zones, 4 services" in done.stdout
    config = zones / "gslb.toml"
    config.write_text(config.read_text().replace('policy = "nearest"', 'policy = "closest"'))
    failed = gslb("reload", "--http", address, "--token-file", str(token_file))
    assert failed.returncode == 1
    assert f"{config}:" in failed.stderr and "closest" in failed.stderr
    metrics = scrape(server)
    assert value(metrics, "gslb_reloads_total", result="ok") == 1
    assert value(metrics, "gslb_reloads_total", result="failed") == 1
    with client(server) as http:
        status = http.get("/api/status").json()
    assert status["reloads"]["failed"] == 1 and status["reloads"]["last_error"]


# -- explain and the HTTP server itself ----------------------------------------------------


def test_explain_over_http(ops_server: Server) -> None:
    with client(ops_server) as http:
        result = http.get("/api/explain", params={"name": "www.example.com", "subnet": GERMANY, "qtype": "aaaa"}).json()
        assert result["answer"] == ["2001:db8:2::1"]
        assert result["location"]["country"] == "DE"
        assert result["why"].startswith("nearest healthy: eu")
        static = http.get("/api/explain", params={"name": "static.example.com"}).json()
        assert static["kind"] == "static"
        for params in (
            {},
            {"name": "www.example.com", "subnet": "not-a-net"},
            {"name": "www.example.com", "client": "1.2.3.4", "subnet": GERMANY},
            {"name": "www.example.com", "qtype": "NOPE"},
        ):
            response = http.get("/api/explain", params=params)
            assert response.status_code == 400, params
            assert response.json()["error"]


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_limits(ops_server: Server) -> None:
    port = http_port(ops_server)
    assert _raw(port, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw(port, b"GET / HTTP/2.0\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    huge = b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * 20_000 + b"\r\n\r\n"
    assert _raw(port, huge).startswith(b"HTTP/1.1 431 ")
    big_body = b"POST /api/drain HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"
    assert _raw(port, big_body).startswith(b"HTTP/1.1 413 ")
    chunked = b"POST /api/drain HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert _raw(port, chunked).startswith(b"HTTP/1.1 411 ")
    assert _raw(port, b"GET /nowhere HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    head = _raw(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 3\r\n" in head
    page = _raw(port, b"GET / HTTP/1.0\r\n\r\n")
    assert b"Content-Security-Policy: default-src 'self'" in page
    assert b'<path data-cc="DE"' in page
    # Still answering after all that.
    assert _raw(port, b"GET /healthz HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\nok\n")


def test_http_off_and_port_taken(start_server: type[Server], tmp_path: Path) -> None:
    off = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(tmp_path / "a.json"),
        "--http",
        "off",
    )
    assert not any("http on" in line for line in off.lines)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The endpoint cannot listen: logged, and DNS goes on regardless.
        server = start_server(
            "--zones",
            str(EXAMPLE_ZONES),
            "--no-probes",
            "--workers",
            "2",
            "--state-file",
            str(tmp_path / "b.json"),
            "--http",
            f"127.0.0.1:{port}",
        )
        server.wait_log(rf"http: cannot listen on 127\.0\.0\.1:{port}")
        assert answer(server) == ["127.0.2.1"]
    unreachable = gslb("status", "--http", f"127.0.0.1:{port}")  # nothing listens there now
    assert unreachable.returncode == 1 and "cannot reach gslb" in unreachable.stderr


# -- logs ------------------------------------------------------------------------------------


def test_json_logs_and_the_query_log_in_workers(start_server: type[Server], tmp_path: Path) -> None:
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "2",
        "--state-file",
        str(tmp_path / "state.json"),
        "--log-format",
        "json",
        "--query-log",
        "1",
        "--http",
        "off",
    )
    records = [json.loads(line) for line in server.lines]
    assert {"ts", "level", "logger", "msg", "pid"} <= set(records[0])
    workers = {int(m.group(1)) for r in records if (m := re.search(r"worker \d+ started \(pid (\d+)\)", r["msg"]))}
    assert len(workers) == 2
    assert answer(server) == ["127.0.2.1"]
    line = server.wait_log(r'"logger": "gslb.query"')
    record = json.loads(line)
    assert record["level"] == "info"
    assert record["qname"] == "www.example.com." and record["qtype"] == "A"
    assert record["ecs"] == GERMANY and record["client"] == "127.0.0.1"
    assert record["answer"] == ["127.0.2.1"] and record["datacenter"] == "eu"
    assert record["rcode"] == "NOERROR" and record["transport"] == "udp"
    assert record["reason"].startswith("nearest healthy: eu")
    assert record["pid"] in workers  # logged by the worker that answered
    mark = server.mark()
    assert server.query("example.org.").rcode() == dns.rcode.REFUSED
    refused = json.loads(server.wait_log(r'"logger": "gslb.query"', start=mark))
    assert refused["rcode"] == "REFUSED" and refused["reason"].startswith("refused")


def test_query_log_off_by_default_and_text_format(ops_server: Server) -> None:
    assert answer(ops_server) == ["127.0.2.1"]
    mark = ops_server.mark()
    with client(ops_server, TOKEN) as http:
        http.post("/api/drain", json={"target": "ap"})
    ops_server.wait_log(r"^\S+ \S+ WARNING gslb\.health: ap \(.*\) DRAINED", start=mark)
    assert not any("gslb.query" in line for line in ops_server.lines)


# -- the status page, in a real browser --------------------------------------------------


def chromium(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (virtual time: no real waiting), optionally a PNG."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install chromium")
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        "--virtual-time-budget=5000",
        "--dump-dom",
    ]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _country_dc(dom: str, code: str) -> str:
    match = re.search(rf'<path data-cc="{code}" d="[^"]*" data-dc="([^"]*)"', dom)
    assert match, f"no {code} on the map"
    return match.group(1)


@pytest.mark.chromium
def test_status_page_shows_a_drain_on_the_map(ops_server: Server, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{http_port(ops_server)}/"
    dom = chromium(url, tmp_path / "profile")
    assert 'data-dc="eu" data-state="up"' in dom
    assert [_country_dc(dom, c) for c in ("DE", "FR", "PL", "US", "BR", "JP", "AU")] == [
        "eu",
        "eu",
        "eu",
        "us",
        "us",
        "ap",
        "ap",
    ]

    with client(ops_server, TOKEN) as http:
        assert http.post("/api/drain", json={"target": "eu"}).status_code == 200
    for _ in range(20):  # some traffic for the rates
        answer(ops_server)
    screenshot = tmp_path / "status.png"
    dom = chromium(f"{url}?explain=www.example.com&subnet={GERMANY}", tmp_path / "profile", screenshot)
    print(f"status page screenshot: {screenshot}")
    assert screenshot.stat().st_size > 20_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # eu is shown drained, in its card and on the map, and Europe is sent elsewhere.
    assert 'data-dc="eu" data-state="drained"' in dom
    assert 'data-dc-marker="eu" data-state="drained"' in dom
    assert 'data-dc-marker="us" data-state="up"' in dom
    assert [_country_dc(dom, c) for c in ("DE", "FR", "PL", "US", "JP")] == ["us", "us", "us", "us", "ap"]
    assert not re.search(r'data-dc="eu"[^>]*><title>', dom)  # no country sent to eu
    assert re.search(r'<span data-legend="eu">.*?eu \(drained\)</span>', dom)
    assert 'class="badge drained">DRAINED<' in dom
    assert "10 s (degraded)" in dom
    assert '<div id="conn" class="conn">live</div>' in dom
    # The explain box answered the question in the link.
    assert re.search(r'<p class="why">nearest healthy: us \(\d+ km\); eu down: drained</p>', dom)


# -- pure parts: drained VIPs in the policy ---------------------------------------------------


CONFIG = load(EXAMPLE_ZONES / "gslb.toml")
BERLIN = Location("DE", "EU", None, 52.52, 13.40, source="database")


def _drained(*names: str) -> HealthView:
    return HealthView(1, {n: Status(False, "drained", 0.0, drained=True) for n in names})


@pytest.mark.parametrize(
    ("service", "drained", "family", "addresses", "datacenters"),
    [
        ("www.example.com.", (), 4, ("127.0.2.1",), ("eu",)),
        ("www.example.com.", ("127.0.2.1",), 4, ("127.0.1.1",), ("us",)),
        ("www.example.com.", ("127.0.2.1",), 6, ("2001:db8:2::1",), ("eu",)),
        ("www.example.com.", ("eu",), 6, ("2001:db8:1::1",), ("us",)),
        ("api.example.com.", ("127.0.2.1",), 4, ("127.0.1.1",), ("us",)),
        # Every member drained: all_down = "fallback" answers the fallback.
        ("api.example.com.", ("127.0.2.1", "127.0.1.1"), 4, ("127.0.9.1",), ()),
        # all_down = "open": answer as if up, drained VIPs included rather than nothing.
        ("www.example.com.", ("127.0.1.1", "127.0.2.1", "127.0.3.1"), 4, ("127.0.2.1",), ("eu",)),
        ("img.example.com.", ("127.0.3.1", "127.0.1.1"), 4, ("127.0.2.1",), ("eu",)),
    ],
)
def test_policy_leaves_drained_vips_out(
    service: str, drained: tuple[str, ...], family: int, addresses: tuple[str, ...], datacenters: tuple[str, ...]
) -> None:
    view = _drained(*drained)
    assert view.drains == bool(drained)
    decision = choose(CONFIG.services[service], CONFIG.datacenters, BERLIN, view, family)
    assert decision.addresses == addresses
    assert decision.datacenters == datacenters


# -- pure parts: merging the workers' counters ------------------------------------------------


def test_worker_counts_add_key_by_key_and_bucket_by_bucket() -> None:
    workers = [Counters(), Counters()]
    for seconds, worker in ((1e-6, 0), (3e-5, 0), (3e-5, 1), (1.0, 1)):
        workers[worker].observe(seconds)
        workers[worker].by_key[(False, 1, 0)] = workers[worker].by_key.get((False, 1, 0), 0) + 1
    workers[1].by_answer[("www.example.com.", "eu")] = 5
    workers[0].ticks, workers[1].ticks = 10, 32
    total = counts(Counters())
    for worker in workers:
        add_counts(total, counts(worker))
    merged = Counters(**total)
    assert len(merged.latency_buckets) == len(LATENCY_BOUNDS) + 1
    assert merged.latency_buckets[0] == 1 and merged.latency_buckets[-1] == 1
    assert sum(merged.latency_buckets) == merged.latency_count == 4
    assert merged.by_key == {(False, 1, 0): 4}
    assert merged.by_answer == {("www.example.com.", "eu"): 5}
    assert merged.ticks == 42


def test_worker_counts_copy_safely_while_a_udp_thread_counts() -> None:
    """A worker reports while its UDP threads add keys; the copy must never raise."""
    counters = Counters()
    stop = threading.Event()

    def count_new_kinds() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            counters.by_key[(False, i % 50_000, 0)] = 1
            if i % 50_000 == 0:
                counters.by_key.clear()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    thread = threading.Thread(target=count_new_kinds, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            counts(counters)
    finally:
        stop.set()
        thread.join(timeout=5)
        sys.setswitchinterval(interval)
