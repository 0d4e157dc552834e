"""End to end through a real second tier: nginx per data center; probes fail over and back."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.message
import pytest

from tests.conftest import EXAMPLE_ZONES, Server, need
from tests.secondtier import DATACENTERS, PORT, Backend, Balancer, SecondTierError, free_addresses, running

EUROPE = dns.edns.ECSOption("85.214.0.0", 24)  # a German resolver network (embedded geodb)


@pytest.fixture
def balancers(tmp_path: Path) -> Iterator[dict[str, Balancer]]:
    """nginx for us, eu and ap on loopback addresses and a port chosen for this run."""
    need("nginx")
    with running(tmp_path / "nginx") as started:
        yield started


@pytest.fixture
def zones(tmp_path: Path, balancers: dict[str, Balancer]) -> Path:
    """The example zones, its VIPs and health port moved to where this run's balancers are."""
    directory = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, directory)
    config = (directory / "gslb.toml").read_text()
    assert f"port = {PORT}" in config
    config = config.replace(f"port = {PORT}", f"port = {balancers['us'].port}")
    for name, balancer in balancers.items():
        assert f'"{DATACENTERS[name]}"' in config
        config = config.replace(f'"{DATACENTERS[name]}"', f'"{balancer.vip}"')
    (directory / "gslb.toml").write_text(config)
    return directory


def _probe(balancer: Balancer) -> str:
    """The log's name for a balancer's probe: `eu (127.x.2.1:port http)`."""
    return re.escape(f"{balancer.name} ({balancer.vip}:{balancer.port} http)")


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
def test_failover_and_recovery_through_nginx(
    start_server: type[Server], balancers: dict[str, Balancer], zones: Path, tmp_path: Path
) -> None:
    server = start_server("--zones", str(zones), "--state-file", str(tmp_path / "state.json"))
    eu, us = balancers["eu"], balancers["us"]

    # 1. Europe is sent to Frankfurt, and the VIP's nginx hands the request to a backend.
    assert _answer(server) == (eu.vip, 30)
    assert eu.fetch().startswith("backend eu-")  # this run's backends, through this run's nginx

    # 2. eu's balancer stops: Europe moves to Ashburn (nearer Frankfurt than Tokyo), short TTL.
    mark = server.mark()
    stopped = time.monotonic()
    eu.stop()
    # The verdict is the event; the answers (from both worker processes) follow it at once.
    server.wait_log(rf"{_probe(eu)} DOWN: refused", start=mark)
    follow = _until(lambda: all(_answer(server) == (us.vip, 10) for _ in range(8)), timeout=1)
    failover = time.monotonic() - stopped
    # Milliseconds when the machine is quiet; the bound is loose so that a loaded machine's
    # scheduling does not fail it, and still far below a probe interval (1 s) or the TTL.
    assert follow < 0.5, f"answers followed the verdict only after {follow:.3f} s"

    # 4. It comes back: after `rise` good probes, Europe returns to Frankfurt.
    eu.start()
    recovery = _until(lambda: _answer(server)[0] == eu.vip, timeout=15)
    assert _answer(server) == (eu.vip, 30)
    print(f"\nrefused: outage to new answer {failover:.2f} s, recovery to old answer {recovery:.2f} s")
    assert failover < 3.5 and recovery < 5.5

    # 3. A balancer that accepts and never answers: down through the probe timeout.
    eu.start_hanging()
    hang_failover = _until(lambda: _answer(server)[0] == us.vip, timeout=10)
    server.wait_log(rf"{_probe(eu)} DOWN: timeout")
    eu.stop_hanging()
    eu.start()
    hang_recovery = _until(lambda: _answer(server)[0] == eu.vip, timeout=15)
    print(f"hanging: outage to new answer {hang_failover:.2f} s, recovery to old answer {hang_recovery:.2f} s")
    assert hang_failover < 4.0 and hang_recovery < 5.5

    # 5. Every balancer down: fail open (the example's all_down = "open") with the short TTL.
    mark = server.mark()
    for balancer in balancers.values():
        balancer.stop()
    for balancer in balancers.values():
        server.wait_log(rf"{_probe(balancer)} DOWN", start=mark)

    # api.example.com falls back to its maintenance address instead, in every worker as soon
    # as the last verdict reaches it (logged a moment before it is sent to the workers).
    def api() -> list[str]:
        return [rr.address for rr in server.query("api.example.com.").answer[0]]

    _until(lambda: all(api() == ["127.0.9.1"] for _ in range(8)), timeout=1)
    assert all(_answer(server) == (eu.vip, 10) for _ in range(8))  # nearest as if all were up


@pytest.mark.nginx
@pytest.mark.timeout(60)
def test_restart_keeps_the_last_verdicts(
    start_server: type[Server], balancers: dict[str, Balancer], zones: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    us = balancers["us"]
    server = start_server("--zones", str(zones), "--state-file", str(state))
    balancers["eu"].stop()
    _until(lambda: _answer(server)[0] == us.vip, timeout=10)
    assert server.stop() == 0
    # `gslb explain` reads the saved verdicts too.
    explained = subprocess.run(
        [
            sys.executable,
            "-m",
            "gslb",
            "explain",
            "--zones",
            str(zones),
            "--state-file",
            str(state),
            "--subnet",
            "85.214.0.0/24",
            "--json",
            "www.example.com",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    result = json.loads(explained.stdout)
    assert result["answer"] == [us.vip] and result["ttl"] == 10
    assert {c["name"]: c["up"] for c in result["candidates"]} == {"eu": False, "us": True, "ap": True}
    # Started again while eu is still dark: the saved verdict holds from the first query on.
    again = start_server("--zones", str(zones), "--state-file", str(state))
    assert _answer(again) == (us.vip, 10)
    again.wait_log(r"restored 3 health verdicts")


@pytest.mark.nginx
def test_second_tier_knows_its_own_nginx(tmp_path: Path) -> None:
    """Another process on the address, or an nginx that cannot start, is an error at once."""
    need("nginx")
    (vip,), port = free_addresses(1)
    balancer = Balancer("eu", tmp_path / "nginx", vip=vip, port=port)
    try:
        # A port bound but not listening: nginx cannot bind it, exits, and its log says why.
        with socket.socket() as squatter:
            squatter.bind((vip, port))
            started = time.monotonic()
            with pytest.raises(SecondTierError, match=r"exited with status 1: .*Address already in use"):
                balancer.start()
            assert time.monotonic() - started < 5
        # A foreign listener: refused before nginx starts.
        foreign = Backend("someone else's server\n", vip, port)
        try:
            with pytest.raises(SecondTierError, match="taken by another process"):
                balancer.start()
            with pytest.raises(SecondTierError, match="not this run's second tier"):
                balancer.fetch()
        finally:
            foreign.close()
        # Free again: ours starts, serves the token, and stops without waiting on the port.
        balancer.start()
        assert re.fullmatch(rf"backend eu-[12] {balancer.token}\n", balancer.fetch())
        started = time.monotonic()
        balancer.stop()
        assert time.monotonic() - started < 2
    finally:
        balancer.close()
