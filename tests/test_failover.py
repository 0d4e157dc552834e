"""End to end through a real second tier: nginx per data center; probes fail over and back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.message
import pytest

from tests.conftest import EXAMPLE_ZONES, Server, need
from tests.secondtier import Balancer

EUROPE = dns.edns.ECSOption("85.214.0.0", 24)  # a German resolver network (embedded geodb)


@pytest.fixture
def balancers(tmp_path: Path) -> Iterator[dict[str, Balancer]]:
    need("nginx")
    started = {name: Balancer(name, tmp_path / "nginx") for name in ("us", "eu", "ap")}
    try:
        for balancer in started.values():
            balancer.start()
        yield started
    finally:
        for balancer in started.values():
            balancer.close()


def _answer(server: Server) -> tuple[str, int]:
    query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[EUROPE])
    reply = server.send(query, timeout=1)
    rrset = reply.answer[0]
    return rrset[0].address, rrset.ttl


def _until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check` holds, asking every 20 ms (each ask is one DNS query)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.nginx
@pytest.mark.timeout(120)
def test_failover_and_recovery_through_nginx(start_server: type[Server], balancers: dict[str, Balancer],
                                             tmp_path: Path) -> None:
    server = start_server("--zones", str(EXAMPLE_ZONES), "--state-file", str(tmp_path / "state.json"))
    eu = balancers["eu"]

    # 1. Europe is sent to Frankfurt, and the VIP's nginx hands the request to a backend.
    assert _answer(server) == ("127.0.2.1", 30)
    body = urllib.request.urlopen("http://127.0.2.1:8080/", timeout=5).read().decode()
    assert body.startswith("backend eu-")

    # 2. eu's balancer stops: Europe moves to Ashburn (nearer Frankfurt than Tokyo), short TTL.
    mark = server.mark()
    stopped = time.monotonic()
    eu.stop()
    # The verdict is the event; the answers (from both worker processes) follow it at once.
    server.wait_log(r"eu \(127\.0\.2\.1:8080 http\) DOWN: refused", start=mark)
    follow = _until(lambda: all(_answer(server) == ("127.0.1.1", 10) for _ in range(8)), timeout=1)
    failover = time.monotonic() - stopped
    assert follow < 0.1, f"answers followed the verdict only after {follow:.3f} s"

    # 4. It comes back: after `rise` good probes, Europe returns to Frankfurt.
    eu.start()
    recovery = _until(lambda: _answer(server)[0] == "127.0.2.1", timeout=15)
    assert _answer(server) == ("127.0.2.1", 30)
    print(f"\nrefused: outage to new answer {failover:.2f} s, recovery to old answer {recovery:.2f} s")
    assert failover < 3.5 and recovery < 5.5

    # 3. A balancer that accepts and never answers: down through the probe timeout.
    eu.start_hanging()
    hang_failover = _until(lambda: _answer(server)[0] == "127.0.1.1", timeout=10)
    server.wait_log(r"eu \(127\.0\.2\.1:8080 http\) DOWN: timeout")
    eu.stop_hanging()
    eu.start()
    hang_recovery = _until(lambda: _answer(server)[0] == "127.0.2.1", timeout=15)
    print(f"hanging: outage to new answer {hang_failover:.2f} s, recovery to old answer {hang_recovery:.2f} s")
    assert hang_failover < 4.0 and hang_recovery < 5.5

    # 5. Every balancer down: fail open (the example's all_down = "open") with the short TTL.
    mark = server.mark()
    for balancer in balancers.values():
        balancer.stop()
    for name in ("us", "eu", "ap"):
        server.wait_log(rf"{name} \(127\.0\.\d\.1:8080 http\) DOWN", start=mark)
    assert _answer(server) == ("127.0.2.1", 10)  # nearest as if all were up
    # api.example.com falls back to its maintenance address instead.
    assert [rr.address for rr in server.query("api.example.com.").answer[0]] == ["127.0.9.1"]


@pytest.mark.nginx
@pytest.mark.timeout(60)
def test_restart_keeps_the_last_verdicts(start_server: type[Server], balancers: dict[str, Balancer],
                                         tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    server = start_server("--zones", str(EXAMPLE_ZONES), "--state-file", str(state))
    balancers["eu"].stop()
    _until(lambda: _answer(server)[0] == "127.0.1.1", timeout=10)
    assert server.stop() == 0
    # `gslb explain` reads the saved verdicts too.
    explained = subprocess.run(
        [sys.executable, "-m", "gslb", "explain", "--zones", str(EXAMPLE_ZONES), "--state-file", str(state),
         "--subnet", "85.214.0.0/24", "--json", "www.example.com"], capture_output=True, text=True, timeout=30)
    result = json.loads(explained.stdout)
    assert result["answer"] == ["127.0.1.1"] and result["ttl"] == 10
    assert {c["name"]: c["up"] for c in result["candidates"]} == {"eu": False, "us": True, "ap": True}
    # Started again while eu is still dark: the saved verdict holds from the first query on.
    again = start_server("--zones", str(EXAMPLE_ZONES), "--state-file", str(state))
    assert _answer(again) == ("127.0.1.1", 10)
    again.wait_log(r"restored 3 health verdicts")
